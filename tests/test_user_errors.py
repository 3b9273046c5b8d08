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

import ucdir_lite.ablation as ab
from ucdir_lite._lock import FolderInUse
from ucdir_lite.cli import main
from ucdir_lite.config import get_preset
from ucdir_lite.train import FORMAT, build_model


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
    run_dir = ab._run_dir(cache, warm, ab.run_key(warm))
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
