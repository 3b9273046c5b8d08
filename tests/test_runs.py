"""Tests of ucdir_lite.runs and ``ucdir-lite runs``: the run cache as one archive."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from ucdir_lite import cli, runs
from ucdir_lite.prepare import UnsafeArchiveError


def _fake_run(cache: Path, name: str, finished: bool = True) -> Path:
    run = cache / name
    run.mkdir(parents=True)
    (run / "cache.json").write_text(json.dumps({"key": name, "finished": finished,
                                                "train_s": 1.0, "init_from": None}))
    (run / "metrics.json").write_text("{}")
    (run / "checkpoint.pt").write_bytes(b"\0" * 64)
    return run


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    cache = tmp_path / "runs"
    _fake_run(cache, "clipart-sketch-s0-e3-aaaa")
    _fake_run(cache, "clipart-sketch-s1-e3-bbbb")
    _fake_run(cache, "photo-sketch-s0-e3-cccc")
    _fake_run(cache, "clipart-sketch-s2-e3-dddd", finished=False)
    return cache


def test_export_then_import_round_trip(cache: Path, tmp_path: Path) -> None:
    archive = tmp_path / "out" / "runs.tar.gz"
    names = runs.export_runs(archive, cache_dir=cache)
    assert names == ["clipart-sketch-s0-e3-aaaa", "clipart-sketch-s1-e3-bbbb",
                     "photo-sketch-s0-e3-cccc"]  # the unfinished run stays out
    other = tmp_path / "other"
    found = runs.import_runs(archive, cache_dir=other)
    assert found == {"imported": names, "skipped": []}
    for name in names:
        assert (other / name / "checkpoint.pt").read_bytes() == b"\0" * 64
    assert [d.name for d in runs.finished_runs(other)] == names
    assert not [d for d in other.iterdir() if d.name.startswith(".")]  # no leftovers
    assert runs.import_runs(archive, cache_dir=other) == {"imported": [], "skipped": names}


def test_export_match_and_empty(cache: Path, tmp_path: Path) -> None:
    names = runs.export_runs(tmp_path / "a.tar", cache_dir=cache, match=["photo-*"])
    assert names == ["photo-sketch-s0-e3-cccc"]
    with pytest.raises(ValueError, match="no finished runs"):
        runs.export_runs(tmp_path / "b.tar", cache_dir=tmp_path / "empty")


def _tar_with(path: Path, name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE,
              link: str = "") -> Path:
    with tarfile.open(path, "w") as tar:
        good = tarfile.TarInfo("run-a/cache.json")
        body = json.dumps({"finished": True}).encode()
        good.size = len(body)
        tar.addfile(good, io.BytesIO(body))
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = link
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return path


@pytest.mark.parametrize("name, kind, link", [
    ("../evil", tarfile.REGTYPE, ""),
    ("/abs/evil", tarfile.REGTYPE, ""),
    ("run-a/../../evil", tarfile.REGTYPE, ""),
    ("run-a/sub/deep", tarfile.REGTYPE, ""),
    ("top-level-file", tarfile.REGTYPE, ""),
    ("run-a/link", tarfile.SYMTYPE, "/etc/passwd"),
    ("run-a/hard", tarfile.LNKTYPE, "run-a/cache.json"),
    ("run-a/fifo", tarfile.FIFOTYPE, ""),
])
def test_unsafe_members_are_refused(tmp_path: Path, name: str, kind: bytes, link: str) -> None:
    archive = _tar_with(tmp_path / "evil.tar", name, kind=kind, link=link)
    cache = tmp_path / "cache"
    with pytest.raises(UnsafeArchiveError):
        runs.import_runs(archive, cache_dir=cache)
    assert not (tmp_path / "evil").exists()
    assert not cache.exists() or not any(cache.iterdir())


def test_run_without_finished_marker_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("run-a/metrics.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(ValueError, match="finished"):
        runs.import_runs(archive, cache_dir=tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())


def test_not_a_tar_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.tar").write_text("not a tar")
    with pytest.raises(ValueError, match="not a tar"):
        runs.import_runs(tmp_path / "x.tar", cache_dir=tmp_path / "cache")
    with pytest.raises(FileNotFoundError):
        runs.import_runs(tmp_path / "missing.tar", cache_dir=tmp_path / "cache")


def test_cli_export_import_list(cache: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    archive = str(tmp_path / "runs.tar")
    assert cli.main(["runs", "export", archive, "--cache-dir", str(cache)]) == 0
    assert "3 run(s) written" in capsys.readouterr().out
    other = str(tmp_path / "other")
    assert cli.main(["runs", "import", archive, "--cache-dir", other]) == 0
    assert "3 run(s) imported, 0 already" in capsys.readouterr().out
    assert cli.main(["runs", "list", "--cache-dir", other, "--match", "photo-*"]) == 0
    assert capsys.readouterr().out.strip() == "photo-sketch-s0-e3-cccc"
    assert cli.main(["runs", "import", str(tmp_path / "nope.tar"), "--cache-dir", other]) == 1


@pytest.mark.slow
def test_smoke_cache_round_trip_is_reused(tmp_path: Path) -> None:
    """A real smoke run exported, imported into an empty cache, and reused without training."""
    from ucdir_lite.ablation import WARMUP, cached_run, train_arm
    from ucdir_lite.config import get_preset

    cfg = get_preset("smoke", threads=1)
    first = tmp_path / "first"
    train_arm(cfg, WARMUP, cache_dir=first, progress=False)
    archive = tmp_path / "runs.tar.gz"
    assert len(runs.export_runs(archive, cache_dir=first)) == 1
    second = tmp_path / "second"
    assert len(runs.import_runs(archive, cache_dir=second)["imported"]) == 1
    from ucdir_lite.ablation import warmup_config
    assert cached_run(warmup_config(cfg), cache_dir=second) is not None
