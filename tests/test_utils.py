"""Tests of ucdir_lite.utils: atomic writes (file modes, no leftovers)."""

from __future__ import annotations

import os
import stat

import pytest
import torch

import ucdir_lite.ablation as ab
from ucdir_lite import utils
from ucdir_lite._lock import LOCK_FILE, folder_lock
from ucdir_lite.utils import atomic_torch_save, atomic_write_json


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_honour_the_umask(tmp_path, umask):
    json_path = atomic_write_json({"a": 1}, tmp_path / "x.json")
    pt_path = atomic_torch_save({"w": torch.zeros(2)}, tmp_path / "x.pt")
    assert _mode(json_path) == _mode(pt_path) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.pt"]  # no .part left


def test_results_files_honour_the_umask(tmp_path, umask):
    rows = [{"pair": "a->b", "seed": s, "arm": arm,
             "metrics": {d: {"P@5": 1.0 + s, "mAP": 1.0} for d in ab.DIRECTIONS},
             "key": "k", "run_dir": "r", "reused": False, "wall_s": 0.0}
            for s in (0, 1) for arm in (ab.WARMUP, "IW")]
    results = {"preset": "smoke", "overrides": {}, "pairs": ["a->b"], "seeds": [0, 1],
               "arms": ["IW"], "threads": 1, "rows": rows, "timing": {"wall_s": 0.0}}
    out = ab.write_results(results, tmp_path / "out")
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"results.json", "timing.json", "rows.csv", "table.md",
                                       "ablation.png", "IW.json"}
    assert {p.name: _mode(p) for p in files} == {p.name: 0o666 & ~umask for p in files}


def test_folder_lock_is_reentrant_and_removes_a_folder_it_created_on_failure(tmp_path):
    folder = tmp_path / "run"
    with folder_lock(folder, what="run folder", hint="wait") as locked:
        with folder_lock(folder, what="run folder", hint="wait"):  # the same process: fine
            pass
        assert locked == folder and (folder / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    umask = os.umask(0)
    os.umask(umask)
    assert _mode(folder / LOCK_FILE) == 0o666 & ~umask
    with pytest.raises(KeyError):
        with folder_lock(tmp_path / "new", what="run folder", hint="wait"):
            raise KeyError("failed at once")
    assert not (tmp_path / "new").exists()
    (folder / "kept.txt").write_text("x")
    with pytest.raises(KeyError):
        with folder_lock(folder, what="run folder", hint="wait"):
            raise KeyError("an existing folder is left as it was")
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_FILE, "kept.txt"]


def test_a_failed_atomic_write_names_the_target_and_leaves_no_part(tmp_path, monkeypatch):
    def refused(src, dst):
        raise PermissionError(13, "Permission denied", str(src))

    monkeypatch.setattr(os, "replace", refused)
    target = tmp_path / "config.json"
    with pytest.raises(PermissionError) as info:
        atomic_write_json({"a": 1}, target)
    assert str(info.value) == f"[Errno 13] cannot write '{target}': Permission denied"
    assert ".part" not in str(info.value) and list(tmp_path.iterdir()) == []


def test_keep_freed_memory_takes_effect_on_glibc_and_changes_no_result():
    import platform

    x = torch.randn(64, 1024)
    before = (x @ x.T).sum()
    took = utils.keep_freed_memory()
    assert took == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    assert torch.equal((x @ x.T).sum(), before)
