"""Tests of ucdir_lite.chapter: the helpers behind each chapter's summary and runtime note."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ucdir_lite import chapter


def test_numbered_lists_every_statement() -> None:
    text = chapter.numbered(["one", "two"], title="Summary")
    assert text.splitlines() == ["**Summary**", "", "1. one", "2. two"]
    assert chapter.numbered(["one"]) == "1. one"
    with pytest.raises(ValueError, match="statements"):
        chapter.numbered([])


def test_step_sentence_follows_the_rule() -> None:
    one_seed = chapter.step_sentence([8.6], "CW minus IW")
    assert "1 seed" in one_seed and "no verdict" in one_seed
    assert "gain" not in one_seed and "no measurable effect" not in one_seed
    assert "**gain**" in chapter.step_sentence([1.0, 1.1, 0.9], "x")
    assert "**loss**" in chapter.step_sentence([-1.0, -1.1, -0.9], "x")
    assert "no measurable effect" in chapter.step_sentence([1.0, -0.5, 2.0], "x")
    with pytest.raises(ValueError, match="diffs"):
        chapter.step_sentence([], "x")


def _run(folder: Path, train_s: float, parent: Path | None = None) -> Path:
    folder.mkdir(parents=True)
    init_from = str(parent / "checkpoint.pt") if parent else None
    (folder / "cache.json").write_text(json.dumps({"train_s": train_s, "init_from": init_from}))
    return folder


def test_chain_train_seconds_counts_each_run_once(tmp_path: Path) -> None:
    warm = _run(tmp_path / "warm", 10.0)
    a = _run(tmp_path / "a", 3.0, warm)
    b = _run(tmp_path / "b", 4.0, warm)
    assert chapter.chain_train_seconds([a, b, None]) == pytest.approx(17.0)
    assert chapter.chain_train_seconds([tmp_path / "missing"]) is None
    assert chapter.chain_train_seconds([]) == 0.0


def test_runtime_note_says_what_was_measured(tmp_path: Path) -> None:
    run = _run(tmp_path / "run", 12.0)
    note = chapter.runtime_note(time.perf_counter(), [run])
    assert "executed in" in note and "12 s" in note and "Colab GPU: not measured" in note
    assert "training its runs" not in chapter.runtime_note(time.perf_counter())


def test_format_overrides() -> None:
    assert chapter.format_overrides({"se_weight": 0.0, "dd_variant": "ot"}) == (
        "se_weight=0.0, dd_variant='ot'")


def test_objective_and_preset_table_read_the_config() -> None:
    from ucdir_lite.config import get_preset

    cpu = get_preset("cpu")
    formula = chapter.objective(cpu)
    assert f"{cpu.cw_weight:g}\\,\\mathcal{{L}}_{{CW}}" in formula
    assert "DD" not in chapter.objective(cpu.replace(dd_weight=0.0))
    table = chapter.preset_table()
    row = next(line for line in table.splitlines() if line.startswith("| `num_clusters`"))
    assert f"| {cpu.num_clusters} |" in row and chapter.PRESET_REASONS["num_clusters"] in row
    paper = chapter.preset_table(("office-home", "domainnet"))
    assert "why" not in paper and "| `num_clusters` | 30 | 65 | 7 |" in paper
