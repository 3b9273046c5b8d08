"""Small helpers the book's pages use to state what their numbers show.

A chapter ends with a numbered summary whose statements are computed from the results on the
page (``numbered``, ``step_sentence``), and with the time the page took to build
(``runtime_note``). Differences between two rows are judged only by the rule of
``ucdir_lite.ablation`` (``RULE``, ``paired_verdict``): one seed is never enough for a gain.
None of this trains anything.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["numbered", "step_sentence", "chain_train_seconds", "runtime_note",
           "format_overrides"]


def numbered(title: str, statements: Sequence[str]) -> str:
    """A Markdown block ``**title**`` followed by the statements as a numbered list."""
    if not statements:
        raise ValueError("statements is empty: a summary states at least one thing")
    return f"**{title}**\n\n" + "\n".join(f"{i}. {s}" for i, s in enumerate(statements, 1))


def step_sentence(diffs: Sequence[float], what: str, unit: str = "points") -> str:
    """``what`` changed by the per-seed differences ``diffs``: their mean, how many seeds, and
    the verdict of ``ucdir_lite.ablation.paired_verdict`` (one seed: "no measurable effect",
    since the rule needs a spread)."""
    from ucdir_lite.ablation import paired_verdict

    if not diffs:
        raise ValueError("diffs is empty: pass one paired difference per seed")
    mean = sum(diffs) / len(diffs)
    seeds = "1 seed" if len(diffs) == 1 else f"{len(diffs)} seeds, mean"
    return (f"{what}: {mean:+.1f} {unit} ({seeds}); by the book's rule: "
            f"**{paired_verdict(list(diffs))}**")


def _marker(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "cache.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def chain_train_seconds(run_dirs: Iterable[str | os.PathLike | None]) -> float | None:
    """The training time, in seconds, recorded in the run cache for these runs and the runs
    they were forked from (the warm-up, the L_DD stem), each counted once; None when a run
    has no record (e.g. trained outside the cache)."""
    seen: set[Path] = set()
    total = 0.0
    todo = [Path(d) for d in run_dirs if d is not None]
    while todo:
        run_dir = todo.pop().resolve()
        if run_dir in seen:
            continue
        seen.add(run_dir)
        marker = _marker(run_dir)
        if marker is None or "train_s" not in marker:
            return None
        total += float(marker["train_s"])
        if marker.get("init_from"):
            todo.append(Path(marker["init_from"]).parent)
    return total


def runtime_note(start: float, run_dirs: Iterable[str | os.PathLike | None] = ()) -> str:
    """One Markdown paragraph: how long this page took to execute (since ``start``, a
    ``time.perf_counter()`` reading), on which kind of machine, how long its training runs took
    when they were trained (recorded in the run cache), and that no GPU time was measured."""
    import torch

    elapsed = time.perf_counter() - start
    cpu = f"{os.cpu_count()} CPU cores ({platform.machine()}), {torch.get_num_threads()} threads"
    text = (f"**Runtime.** This page executed in {elapsed:.0f} s on the machine that built it "
            f"({cpu})")
    trained = chain_train_seconds(run_dirs)
    if trained is not None and trained > 0:
        text += (f"; training its runs from an empty run cache took {trained:.0f} s "
                 "(recorded in the cache when they were trained)")
    return text + ". On a Colab GPU: not measured."


def format_overrides(overrides: Mapping[str, Any]) -> str:
    """``{'cw': True, 'se': False}`` -> ``cw=True, se=False``: a row's overrides, readable."""
    return ", ".join(f"{name}={value!r}" for name, value in overrides.items())
