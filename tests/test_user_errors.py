"""Every error a user can cause on the command line is one line naming the value and the fix,
with exit code 1, and leaves nothing behind (issue 12); a bug keeps its traceback."""

from __future__ import annotations

import pytest

from ucdir_lite.cli import main


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
