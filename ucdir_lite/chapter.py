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
           "format_overrides", "objective", "preset_table", "PRESET_REASONS"]


def numbered(statements: Sequence[str], title: str | None = None) -> str:
    """The statements as a Markdown numbered list, after a bold ``title`` if one is given
    (the chapters put theirs in a "Summary" heading instead)."""
    if not statements:
        raise ValueError("statements is empty: a summary states at least one thing")
    head = f"**{title}**\n\n" if title else ""
    return head + "\n".join(f"{i}. {s}" for i, s in enumerate(statements, 1))


def step_sentence(diffs: Sequence[float], what: str, unit: str = "points") -> str:
    """``what`` changed by the per-seed differences ``diffs``: their mean, how many seeds, and
    the verdict of ``ucdir_lite.ablation.paired_verdict``. One seed gets no verdict: the rule
    needs the spread of several seeds, and a single difference, however large, neither passes
    nor fails it."""
    from ucdir_lite.ablation import paired_verdict

    if not diffs:
        raise ValueError("diffs is empty: pass one paired difference per seed")
    mean = sum(diffs) / len(diffs)
    if len(diffs) == 1:
        return (f"{what}: {mean:+.1f} {unit} (1 seed: too few for the book's rule, which "
                "needs the spread of several, so this page gives no verdict)")
    return (f"{what}: {mean:+.1f} {unit} ({len(diffs)} seeds, mean); by the book's rule: "
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
            parent = Path(marker["init_from"]).parent
            if not parent.is_dir():  # a cache moved or imported (ucdir-lite runs import)
                parent = run_dir.parent / parent.name
            todo.append(parent)
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
        text += (f"; training its runs, the shared ones included, took {trained:.0f} s summed "
                 "over the runs (recorded in the run cache when they were trained; the "
                 "ablation trains two runs at a time, so its wall-clock time is shorter)")
    return text + ". On a Colab GPU: not measured."


def format_overrides(overrides: Mapping[str, Any]) -> str:
    """``{'se_weight': 0.0, 'dd_variant': 'ot'}`` -> ``se_weight=0.0, dd_variant='ot'``: a
    row's overrides, readable."""
    return ", ".join(f"{name}={value!r}" for name, value in overrides.items())


# ------------------------------------------------------------------------------- presets

PRESET_REASONS: dict[str, str] = {
    "arch": "a small CNN trains from scratch in minutes on two CPU cores",
    "optimizer": "Adam needs no learning-rate schedule for a short run from scratch",
    "epochs": "the whole ablation has to fit a build on two CPU cores",
    "warmup_epochs": "shorter warm-ups gave worse clusters to start from",
    "num_clusters": "over-clustering: smaller clusters are purer; slightly better in tuning",
    "iw_weight": "the official code keeps L_IW on after the warm-up",
    "cw_variant": "the paper's prototype form gained about nothing on this benchmark",
    "cw_weight": "the SupCon term, stronger than L_IW, scored higher in tuning",
    "se_variant": "the official form also aligns the domains (chapter 4)",
    "se_weight": "weight 2 collapsed the clusters; 0.5 did not",
    "tau_se": "the official form needs a low temperature to sharpen",
    "dd_variant": "the paper's form, the one chapter 5 teaches",
    "dd_weight": "stronger or earlier, L_DD cost 1-3 points of P@50 in tuning",
    "dd_start": "the matching needs settled clusters (see dd_weight)",
    "m": "0.999 moves too slowly for a few thousand images",
    "threads": "two runs train at once on two cores; the thread count is part of the run key",
}
"""Why the ``cpu`` preset departs from the paper's values (from its tuning on the embedded
benchmark, one seed; ``bench/README.md`` records it). Shown on the book's differences page."""

_PRESET_FIELDS = ("arch", "optimizer", "lr", "epochs", "warmup_epochs", "batch_size", "tau_iw",
                  "m", "num_clusters", "iw_weight", "cw_variant", "cw_weight", "cw_ramp_epochs",
                  "se_variant", "se_weight", "tau_se", "se_start", "dd_variant", "dd_weight",
                  "dd_start", "threads")


def _value(cfg: Any, name: str) -> str:
    value = getattr(cfg, name)
    if name in ("se_start", "dd_start") and value is None:
        return f"{cfg.warmup_epochs} (end of warm-up)"
    return f"{value:g}" if isinstance(value, float) else str(value)


def objective(cfg: Any) -> str:
    """The loss a config trains after the warm-up, as a LaTeX formula with its weights, e.g.
    ``\\mathcal{L} = 1\\,\\mathcal{L}_{IW} + 2\\,\\mathcal{L}_{CW} + ...``."""
    terms = []
    for term, weight in (("IW", cfg.iw_weight), ("CW", cfg.cw_weight), ("SE", cfg.se_weight),
                         ("DD", cfg.dd_weight)):
        if weight > 0:
            terms.append(f"{weight:g}\\,\\mathcal{{L}}_{{{term}}}")
    return "\\mathcal{L} = " + " + ".join(terms)


def preset_table(names: Sequence[str] = ("cpu",)) -> str:
    """A Markdown table: the defaults of ``TrainConfig()``, then each preset's
    value of the fields that shape the method, and why the ``cpu`` preset differs
    (``PRESET_REASONS``; that column only when ``"cpu"`` is among ``names``). Every value is
    read from the config objects."""
    from ucdir_lite.config import TrainConfig, get_preset

    base = TrainConfig()
    presets = [get_preset(name) for name in names]
    why = "cpu" in names
    lines = ["| field | `TrainConfig()` default | " + " | ".join(f"`{n}`" for n in names)
             + (" | why the `cpu` value |" if why else " |"),
             "|---|---|" + "---|" * len(names) + ("---|" if why else "")]
    for field in _PRESET_FIELDS:
        values = [_value(cfg, field) for cfg in presets]
        reason = f" {PRESET_REASONS.get(field, '')} |" if why else ""
        lines.append(f"| `{field}` | {_value(base, field)} | " + " | ".join(values)
                     + " |" + reason)
    return "\n".join(lines)
