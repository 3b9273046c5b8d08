"""Tests of the ucdir-lite command line (ucdir_lite.cli, python -m ucdir_lite)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from ucdir_lite.cli import format_report, main


@pytest.fixture(autouse=True)
def data_env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("UCDIR_DATA", str(tmp_path_factory.getbasetemp() / "cli_data"))


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("ucdir-lite: error: ")
    return err


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], ["train", "evaluate", "data"]),
        (["train"], ["--preset", "--domains", "--data-root", "--out", "--resume", "--set"]),
        (["evaluate"], ["--checkpoint", "--data-root", "--domains", "--ks"]),
        (["data"], ["generate", "prepare"]),
        (["data", "generate"], ["--root", "--num-classes", "--images-per-class",
                                "--image-size", "--seed", "--contact-sheet"]),
        (["data", "prepare"], ["domainnet", "office-home", "--root", "--archive"]),
    ],
)
def test_help(argv, expected, capsys):
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in expected:
        assert word in out, word


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["evaluate"])  # --checkpoint is required
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["fly"])
    assert info.value.code == 2


def test_unknown_preset_is_one_line(tmp_path, capsys):
    assert main(["train", "--preset", "gpu", "--out", str(tmp_path / "r")]) == 1
    assert "unknown preset 'gpu'; choose one of smoke, cpu" in _one_error_line(capsys)
    assert not (tmp_path / "r").exists()


def test_bad_set_is_one_line(tmp_path, capsys):
    assert main(["train", "--preset", "smoke", "--set", "optimizer=rmsprop",
                 "--out", str(tmp_path / "r")]) == 1
    assert "optimizer='rmsprop'" in _one_error_line(capsys)
    assert main(["train", "--preset", "smoke", "--set", "nope=1"]) == 1
    assert "unknown config key 'nope'" in _one_error_line(capsys)


def test_missing_checkpoint_and_archive_are_one_line(tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none.pt")]) == 1
    assert "does not exist" in _one_error_line(capsys)
    assert main(["data", "prepare", "office-home", "--root", str(tmp_path / "oh")]) == 1
    assert "--archive" in _one_error_line(capsys)


def test_data_generate_with_contact_sheet(tmp_path, capsys):
    sheet = tmp_path / "sheet.png"
    argv = ["data", "generate", "--root", str(tmp_path / "g"), "--num-classes", "3",
            "--images-per-class", "2", "--domains", "clipart", "sketch", "--no-progress",
            "--contact-sheet", str(sheet)]
    assert main(argv) == 0
    assert (tmp_path / "g" / "manifest.json").is_file()
    assert len(list((tmp_path / "g" / "sketch").glob("*/*.png"))) == 6
    assert sheet.is_file() and sheet.stat().st_size > 0


def test_python_m_train_smoke_then_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    # train on this process's thread count, so that evaluating here repeats the computation
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run(
        [sys.executable, "-m", "ucdir_lite", "train", "--preset", "smoke", "--out", str(out),
         "--epochs", "2", "--no-progress", "--set", "log_every=1"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "A->B" in proc.stdout and str(out) in proc.stdout
    assert (out / "checkpoint.pt").is_file()
    assert json.loads((out / "config.json").read_text())["epochs"] == 2

    assert main(["evaluate", "--checkpoint", str(out), "--ks", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["A->B"]) == {"P@3", "mAP"}
    # the same images, weights, batches and thread count as the run's own final evaluation, on
    # the same machine: bit-identical (JSON round-trips a float exactly)
    saved = json.loads((out / "metrics.json").read_text())
    assert {d: m["mAP"] for d, m in report.items()} == {d: m["mAP"] for d, m in saved.items()}

    # a second run into the same folder needs --resume; with it, the finished run is reused
    assert main(["train", "--preset", "smoke", "--epochs", "2", "--out", str(out),
                 "--no-progress"]) == 1
    assert "--resume" in _one_error_line(capsys)
    assert main(["train", "--preset", "smoke", "--epochs", "2", "--out", str(out),
                 "--no-progress", "--resume"]) == 0


def test_format_report():
    text = format_report({"A->B": {"P@50": 12.345, "mAP": 1.0}, "B->A": {"P@50": 3.0}})
    lines = text.splitlines()
    assert lines[0].split() == ["direction", "P@50", "mAP"]
    assert lines[1].split() == ["A->B", "12.35", "1.00"]
    assert lines[2].split() == ["B->A", "3.00"]


def test_help_does_not_import_torch():
    """The parser (every subcommand's help, ablate included) is built without torch."""
    code = ("import sys\nfrom ucdir_lite.cli import build_parser\nbuild_parser()\n"
            "print(sorted(m for m in ('torch', 'ucdir_lite.train') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_training_diverged_is_one_line_but_bugs_keep_traceback(monkeypatch, capsys):
    from ucdir_lite import cli
    from ucdir_lite.train import TrainingDiverged

    def diverge(args):
        raise TrainingDiverged("'cw' became nan at epoch 1")

    def bug(args):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(cli, "cmd_ablate", diverge)
    assert main(["ablate", "--out", "unused"]) == 1
    assert "'cw' became nan" in _one_error_line(capsys)
    monkeypatch.setattr(cli, "cmd_ablate", bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(["ablate", "--out", "unused"])


def test_format_comparison_lines_up_one_metric_of_several_reports():
    from ucdir_lite.cli import format_comparison

    values = (1, 2.25, 3, 4)
    report = {d: {"P@5": v} for d, v in zip(("A->B", "B->A", "A->A", "B->B"), values, strict=True)}
    text = format_comparison({"IW": report, "Full": report}, "P@5", ("clipart", "sketch"))
    header, iw, full = text.splitlines()
    assert header.split() == ["P@5", "clipart→sketch", "sketch→clipart", "clipart→clipart",
                              "sketch→sketch"]
    assert iw.split() == ["IW", "1.0", "2.2", "3.0", "4.0"] and len(iw) == len(header)
    assert full.startswith("Full ")
