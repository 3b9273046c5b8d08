"""Every error a user can cause on the command line is one line naming the value and the fix,
with exit code 1, and leaves nothing behind (issue 12); a bug keeps its traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from PIL import Image

import ucdir_lite.ablation as ab
import ucdir_lite.runcache as runcache
from ucdir_lite import cli
from ucdir_lite._lock import FolderInUse
from ucdir_lite.checkpoint import FORMAT
from ucdir_lite.cli import main
from ucdir_lite.config import get_preset
from ucdir_lite.model import build_model


@pytest.fixture(autouse=True)
def data_env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("UCDIR_DATA", str(tmp_path_factory.getbasetemp() / "errors_data"))
    monkeypatch.setenv("UCDIR_RUNS", str(tmp_path_factory.getbasetemp() / "errors_runs"))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("ucdir-lite: error: ")
    return err


def test_negative_seed_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--preset", "smoke", "--seed", "-1", "--out", str(out),
                 "--no-progress"]) == 1
    assert "seed=-1 must be >= 0" in one_error_line(capsys)
    assert not out.exists()
    assert main(["ablate", "--preset", "smoke", "--seeds", "0", "-1", "--out",
                 str(tmp_path / "a"), "--cache-dir", str(tmp_path / "c"), "--no-progress"]) == 1
    assert "--seeds" in one_error_line(capsys)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


# ------------------------------------------------------------------------------- 1: one writer

HOLD = ("import sys, time\nfrom ucdir_lite._lock import folder_lock\n"
        "with folder_lock(sys.argv[1], what='folder', hint='wait'):\n"
        "    print('held', flush=True)\n    time.sleep(120)\n")


@contextmanager
def held_by_another_process(folder: Path) -> Iterator[subprocess.Popen]:
    """Another process holding the lock of ``folder``; killed (-9) at the end."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_second_writer_of_a_run_folder_gets_one_line_with_the_holders_pid(tmp_path, capsys):
    out = tmp_path / "R"
    argv = ["train", "--preset", "smoke", "--epochs", "1", "--out", str(out), "--no-progress"]
    with held_by_another_process(out) as holder:
        assert main(argv) == 1
        err = one_error_line(capsys)
        assert f"run folder '{out}' is in use by another process (PID {holder.pid})" in err
        assert "--out" in err
        assert [p.name for p in out.iterdir()] == [".lock"]  # nothing written
    # the holder was killed (-9): the lock file it left does not block
    assert main(argv) == 0
    assert json.loads((out / "config.json").read_text())["epochs"] == 1


def test_a_locked_run_cache_entry_is_refused_naming_its_holder(tmp_path, capsys):
    cache = tmp_path / "cache"
    base = get_preset("smoke", domains=("clipart", "sketch"), seed=0, threads=1)
    warm = ab.warmup_config(base)
    run_dir = runcache._run_dir(cache, warm, runcache.run_key(warm))
    with held_by_another_process(run_dir) as holder:
        with pytest.raises(FolderInUse, match=rf"run-cache entry .* \(PID {holder.pid}\)"):
            ab.train_cached(warm, cache, progress=False)
        assert main(["ablate", "--preset", "smoke", "--pairs", "clipart:sketch", "--seeds",
                     "0", "--arms", "IW", "--jobs", "1", "--set", "threads=1", "--cache-dir",
                     str(cache), "--out", str(tmp_path / "out"), "--no-progress"]) == 1
        assert f"(PID {holder.pid})" in one_error_line(capsys)
        assert [p.name for p in run_dir.iterdir()] == [".lock"]
    assert ab.train_cached(warm, cache, progress=False).config.seed == 0  # the lock is gone


# ------------------------------------------------------------------------------- 3: one line


def _fake_checkpoint(path: Path, drop: tuple[str, ...] = (), width: int = 8) -> Path:
    """A checkpoint with the right format tag whose config says width 8 and whose tensors
    are those of ``width``, without the keys in ``drop``."""
    cfg = get_preset("smoke")
    state = build_model(cfg.replace(width=width)).state_dict()
    ckpt = {"format": FORMAT, "epoch": 1, "config": cfg.to_dict(), "data": {},
            "encoder_q": state, "encoder_k": state, "banks": [], "optimizer": {},
            "scaler": {}, "history": []}
    torch.save({k: v for k, v in ckpt.items() if k not in drop}, path)
    return path


def test_a_checkpoint_with_missing_keys_is_one_line(tmp_path, capsys):
    ckpt = _fake_checkpoint(tmp_path / "c.pt", drop=("encoder_k", "history"))
    assert main(["evaluate", "--checkpoint", str(ckpt), "--no-progress"]) == 1
    err = one_error_line(capsys)
    assert f"checkpoint '{ckpt}' is incomplete (no encoder_k, history)" in err


def test_a_checkpoint_of_another_architecture_is_one_line(tmp_path, capsys):
    ckpt = _fake_checkpoint(tmp_path / "c.pt", width=16)
    assert main(["evaluate", "--checkpoint", str(ckpt), "--no-progress"]) == 1
    err = one_error_line(capsys)
    assert f"checkpoint '{ckpt}' does not fit the model its config describes" in err
    assert "size mismatch for backbone" in err
    run = tmp_path / "run"
    run.mkdir()
    _fake_checkpoint(run / "checkpoint.pt", width=16)
    assert main(["train", "--preset", "smoke", "--out", str(run), "--resume",
                 "--no-progress"]) == 1
    assert "does not fit the model its config describes" in one_error_line(capsys)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_device_mps_without_mps_is_one_line(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--preset", "smoke", "--device", "mps", "--out", str(out),
                 "--no-progress"]) == 1
    assert "device='mps' but MPS (Apple GPU) is not available here; use --device cpu" in (
        one_error_line(capsys))
    assert not out.exists()
    ckpt = _fake_checkpoint(tmp_path / "c.pt")
    assert main(["evaluate", "--checkpoint", str(ckpt), "--device", "mps"]) == 1
    assert "MPS (Apple GPU) is not available" in one_error_line(capsys)


# ------------------------------------------------------------------------------- 7: hints


@pytest.mark.parametrize("argv, hint", [
    (["train", "--out", "r"], "continue the run: the same command with --resume"),
    (["ablate"], "run the same command again: finished runs are reused from the cache"),
    (["data", "prepare", "office-home", "--root", "r"], "run the same command again"),
])
def test_ctrl_c_hints_name_what_each_command_can_do(argv, hint, monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    for name in ("cmd_train", "cmd_ablate", "cmd_data_prepare"):
        monkeypatch.setattr(cli, name, interrupted)
    assert main(argv) == 130
    err = one_error_line(capsys)
    assert hint in err
    if argv[0] != "train":
        assert "--resume" not in err


def test_corrupt_image_hint_points_somewhere(tmp_path, capsys):
    root = tmp_path / "data"
    for domain in ("a", "b"):
        for cls in ("x", "y"):
            (root / domain / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(root / domain / cls / "1.png")
    (root / "a" / "x" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    assert main(["train", "--preset", "smoke", "--data-root", str(root), "--domains", "a", "b",
                 "--out", str(tmp_path / "r"), "--no-progress"]) == 1
    err = one_error_line(capsys)
    assert "2.png" in err and "delete or replace the file" in err
    assert "pass skip_bad_images=True" not in err


def test_hints_name_the_cli_flags(tmp_path, capsys):
    assert main(["train", "--preset", "smoke", "--out", str(tmp_path / "r"), "--resume",
                 "--init-from", str(tmp_path / "x"), "--no-progress"]) == 1
    err = one_error_line(capsys)
    assert "--resume" in err and "--init-from" in err and "init_from=..." not in err
    assert main(["ablate", "--preset", "smoke", "--set", "seed=3", "--out",
                 str(tmp_path / "a")]) == 1
    assert "--seeds" in one_error_line(capsys)
    assert main(["ablate", "--preset", "smoke", "--set", "domains=clipart,sketch", "--out",
                 str(tmp_path / "a")]) == 1
    assert "--pairs" in one_error_line(capsys)
    assert main(["ablate", "--preset", "smoke", "--jobs", "0", "--out",
                 str(tmp_path / "a")]) == 1
    assert "--jobs" in one_error_line(capsys)
    assert main(["train", "--preset", "smoke", "--device", "cuda:0", "--out",
                 str(tmp_path / "r")]) == 1 or torch.cuda.is_available()
    if not torch.cuda.is_available():
        assert "use --device cpu" in one_error_line(capsys)


def test_a_folder_where_a_file_is_expected_says_so(tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    assert main(["evaluate", "--checkpoint", str(folder)]) == 1
    err = one_error_line(capsys)
    assert f"'{folder}' is a folder without a checkpoint.pt" in err
    assert main(["train", "--preset", "smoke", "--set", f"weights={folder}", "--out",
                 str(tmp_path / "r"), "--no-progress"]) == 1
    assert f"weights file '{folder}' is a folder, not a checkpoint file" in (
        one_error_line(capsys))
    assert main(["data", "prepare", "office-home", "--root", str(tmp_path / "oh"),
                 "--archive", str(folder), "--no-progress"]) == 1
    assert "is a folder, not the zip file" in one_error_line(capsys)


class Payload:
    """Any object that is not a tensor: loading it would run its class's code."""


def test_a_refused_pickle_never_advises_weights_only_false(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "payload": Payload()}, evil)
    assert main(["evaluate", "--checkpoint", str(evil)]) == 1
    err = one_error_line(capsys)
    assert "refused" in err and "weights_only=False" not in err and "weights_only" not in err
    assert main(["train", "--preset", "smoke", "--set", f"weights={evil}", "--out",
                 str(tmp_path / "r"), "--no-progress"]) == 1
    err = one_error_line(capsys)
    assert "weights_only=False" not in err
