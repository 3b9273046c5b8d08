"""When does alignment matter? The domain-gap experiment (book chapter 7).

The knob: ``TrainConfig.domain_gap`` turns every glyph of the sketch domain by that many
degrees (``glyphs.with_gap``), which moves the sketch features away from the clip art ones
while each domain keeps its own structure. The sweep trains the ablation's arms (IW, CW,
CW+SE, Full, Full (official DoD)) on clip art → sketch at each gap level and seed, through
``ablation.run_ablation`` and its run cache (each level's arms share that level's warm-up and
L_DD stem), and measures after the warm-up and after every arm:

- retrieval: P@K across domains (A→B, B→A) and in each domain (A→A, B→B);
- the geometry the alignment terms act on (``diagnostics.diagnose``, labels used only to
  measure): class-mean cross-domain cosine, class-mean distance-of-distance under the true
  matching and under random ones, cluster purity, OT-matched clusters of the same class.

Each step (CW+SE − CW, Full − CW+SE, Full (official DoD) − CW+SE) is a paired per-seed
difference with the verdict of ``ablation.paired_verdict``.

Reference: C. Hu and G. H. Lee, "Feature Representation Learning for Unsupervised
Cross-domain Image Retrieval", ECCV 2022, §3.4 and its ablation (the gap matters most where
the domains differ most).
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ucdir_lite.ablation import (
    ARMS,
    DEFAULT_SEEDS,
    WARMUP,
    _parse_pair,
    direction_label,
    load_results,
    paired_verdict,
    run_ablation,
)
from ucdir_lite.checkpoint import load_run
from ucdir_lite.config import TrainConfig, get_preset
from ucdir_lite.data import DomainData, build_data
from ucdir_lite.diagnostics import class_means, diagnose
from ucdir_lite.evaluation import extract_features
from ucdir_lite.glyphs import GAP_DOMAIN
from ucdir_lite.utils import atomic_write_json, atomic_write_text

GAP_LEVELS: tuple[float, ...] = (0.0, 45.0, 90.0)
"""The sweep's gap levels: degrees by which the sketch glyphs are turned."""
GAP_PAIR: tuple[str, str] = ("clipart", "sketch")
"""The pair of the sweep: the one whose domains the warm-up already aligns at gap 0."""
STEPS: tuple[tuple[str, str], ...] = (
    ("CW+SE", "CW"), ("Full", "CW+SE"), ("Full (official DoD)", "CW+SE"))
"""The steps the sweep reports: (arm, the arm it adds one term to)."""
DIAGNOSTICS = ("cross_cos", "dod_true", "dod_random", "purity_A", "purity_B", "matched_same")
_DIAG_FILE = "diagnostics.json"
_DIAG_VERSION = 1  # bump when diagnose() changes what it measures


def run_features(run_dir: str | os.PathLike,
                 data: Callable[[], list[DomainData]] | None = None,
                 ) -> tuple[TrainConfig, list[DomainData], list[tuple[Tensor, Tensor]]]:
    """A finished run's config, its two domains' data, and its key encoder's ``(features,
    labels)`` of every image of each domain (eval mode, no augmentation). ``data``: returns
    the run's data, for runs that share it (the runs of one sweep level); None builds it from
    the run's config."""
    encoder, cfg = load_run(run_dir)
    sets = build_data(cfg) if data is None else data()
    return cfg, sets, [extract_features(encoder, d.eval_data) for d in sets]


def run_diagnostics(run_dir: str | os.PathLike, num_clusters: int, seed: int,
                    data: Callable[[], list[DomainData]] | None = None) -> dict[str, float]:
    """``diagnostics.diagnose`` of a finished run's key encoder on every image of its two
    domains (k-means with ``num_clusters``, seeded with ``seed``; ``data`` as in
    ``run_features``). Stored in the run folder beside its metrics, so that asking again
    costs a file read."""
    path = Path(run_dir) / _DIAG_FILE
    tag = {"version": _DIAG_VERSION, "num_clusters": num_clusters, "seed": seed}
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("tag") == tag:
            return stored["values"]
    cfg, _, feats = run_features(run_dir, data)
    values = diagnose(*feats[0], *feats[1], num_clusters=num_clusters, seed=seed,
                      epsilon=cfg.ot_epsilon)
    atomic_write_json({"tag": tag, "values": values}, path)
    return values


def run_gap_sweep(
    levels: Iterable[float] = GAP_LEVELS,
    seeds: Iterable[int] = DEFAULT_SEEDS,
    preset: str = "gap",
    pair: str | Sequence[str] = GAP_PAIR,
    arms: Iterable[str] | None = None,
    jobs: int | None = None,
    out: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or reuse) every arm at every gap level and seed; diagnose every run.

    Args:
        levels: values of ``domain_gap`` (degrees; 0 = the benchmark as it is).
        seeds, preset, arms, jobs, cache_dir, progress: as ``ablation.run_ablation``.
        pair: the two domains, ``"A:B"`` or ``(A, B)``; the gap turns the sketch domain, so
            one of them is sketch.
        out: a folder for ``results.json``, ``table.md`` (P@K, steps, diagnostics),
            ``steps.png`` (``plot_steps``) and ``timing.json`` (None: write nothing).

    Returns:
        ``{"preset", "pair", "levels", "seeds", "arms", "rows", "timing"}``: one row per
        (level, seed, arm), the warm-up included, each with its retrieval ``metrics`` and
        ``diagnostics``.
    """
    levels, seeds = [float(v) for v in levels], [int(s) for s in seeds]
    if not levels:
        raise ValueError("give at least one gap level, e.g. --levels 0 45 90")
    pair = _parse_pair(pair)
    if GAP_DOMAIN not in pair:
        raise ValueError(f"pair {pair}: the gap turns the {GAP_DOMAIN!r} domain, so the pair "
                         f"must include it, e.g. clipart:{GAP_DOMAIN}")
    num_clusters = get_preset(preset).num_clusters
    rows, wall, trained = [], 0.0, 0
    start = time.perf_counter()
    for level in levels:
        overrides = {"domain_gap": level}
        res = run_ablation([pair], seeds, preset=preset, out=None, arms=arms, jobs=jobs,
                           overrides=overrides, cache_dir=cache_dir, progress=progress)
        wall += res["timing"]["wall_s"]
        trained += res["timing"]["runs_trained"]
        # every run of a level reads the same images (seeds and arms change no data field):
        # built once, and only if some run's diagnostics are not stored yet
        data = functools.cache(functools.partial(
            build_data, get_preset(preset, **overrides, domains=pair)))
        for row in res["rows"]:
            diag = run_diagnostics(row["run_dir"], num_clusters, row["seed"], data)
            rows.append({"level": level, "seed": row["seed"], "arm": row["arm"],
                         "metrics": row["metrics"], "diagnostics": diag,
                         "run_dir": row["run_dir"]})
    results = {
        "preset": preset, "pair": list(pair), "levels": levels, "seeds": seeds,
        "arms": list(ARMS) if arms is None else list(arms), "rows": rows,
        "timing": {"wall_s": round(time.perf_counter() - start, 1),
                   "training_wall_s": round(wall, 1), "runs_trained": trained},
    }
    if out is not None:
        out = Path(out).expanduser()
        stable = {k: v for k, v in results.items() if k != "timing"}
        atomic_write_json(stable, out / "results.json")
        atomic_write_json(results["timing"], out / "timing.json")
        atomic_write_text(gap_table(results) + "\n" + step_table(results) + "\n"
                          + diagnostics_table(results), out / "table.md")
        from ucdir_lite.plots import save_png

        save_png(plot_steps(results), out / "steps.png")
    return results


def values(results: dict[str, Any], level: float, arm: str, get) -> list[Any]:
    """``get(row)`` for the rows of ``level`` and ``arm``, in seed order, e.g.
    ``values(results, 90, "Full", precision("A->B", 50))``."""
    by_seed = {r["seed"]: get(r) for r in results["rows"]
               if r["level"] == level and r["arm"] == arm}
    return [by_seed[s] for s in results["seeds"]]


def first_k(results: dict[str, Any], k: int | None = None) -> int:
    """``k``, or the first K of the runs' P@K (the preset's first ``ks``)."""
    if k is not None:
        return k
    names = results["rows"][0]["metrics"]["A->B"]
    return min(int(n[2:]) for n in names if n.startswith("P@"))


def precision(direction: str, k: int):
    """A row getter: P@k in ``direction`` ("A->B", "B->A", "A->A" or "B->B")."""
    return lambda row: row["metrics"][direction][f"P@{k}"]


def diagnostic(name: str):
    """A row getter: one of ``DIAGNOSTICS``."""
    return lambda row: row["diagnostics"][name]


def steps(results: dict[str, Any], k: int | None = None,
          directions: Sequence[str] = ("A->B", "B->A", "A->A", "B->B")) -> list[dict[str, Any]]:
    """One dict per (level, step, direction): the per-seed differences of P@k (default: the
    first K), their mean and sd, and the verdict of ``ablation.paired_verdict``."""
    k = first_k(results, k)
    out = []
    for level in results["levels"]:
        for arm, ref in STEPS:
            if arm not in results["arms"] or ref not in results["arms"]:
                continue
            for d in directions:
                diffs = [a - b for a, b in zip(values(results, level, arm, precision(d, k)),
                                               values(results, level, ref, precision(d, k)),
                                               strict=True)]
                sd = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
                out.append({"level": level, "step": f"{arm} − {ref}", "direction": d,
                            "diffs": diffs, "mean": statistics.fmean(diffs), "sd": sd,
                            "verdict": paired_verdict(diffs)})
    return out


def _cell(values: Sequence[float], fmt: str = ".1f") -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.fmean(values):{fmt}} ± {sd:{fmt}}"


def _label(results: dict[str, Any], direction: str) -> str:
    return direction_label(direction, results["pair"])


def gap_table(results: dict[str, Any], k: int | None = None,
              arms: Sequence[str] | None = None) -> str:
    """Markdown: P@k (mean ± sd over seeds) of every arm (default: the warm-up and every
    arm) at every level, all four directions."""
    k = first_k(results, k)
    arms = (WARMUP, *results["arms"]) if arms is None else arms
    directions = ("A->B", "B->A", "A->A", "B->B")
    head = ["gap (°)", "arm", *(f"{_label(results, d)} P@{k}" for d in directions)]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * len(directions)]
    for level in results["levels"]:
        for arm in arms:
            cells = [_cell(values(results, level, arm, precision(d, k))) for d in directions]
            lines.append(f"| {level:g} | {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def step_table(results: dict[str, Any], k: int | None = None) -> str:
    """Markdown: each step at each level, paired by seed (mean ± sd, verdict)."""
    rows = steps(results, k)
    directions = list(dict.fromkeys(r["direction"] for r in rows))
    head = ["gap (°)", "step", *(_label(results, d) for d in directions)]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * len(directions)]
    for level in results["levels"]:
        for step in dict.fromkeys(r["step"] for r in rows):
            cells = [next(f"{r['mean']:+.1f} ± {r['sd']:.1f} ({r['verdict']})" for r in rows
                          if r["level"] == level and r["step"] == step and r["direction"] == d)
                     for d in directions]
            lines.append(f"| {level:g} | {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def diagnostics_table(results: dict[str, Any], arms: Sequence[str] | None = None) -> str:
    """Markdown: every diagnostic (mean ± sd over seeds) per level and arm (default: the
    warm-up and every arm)."""
    arms = (WARMUP, *results["arms"]) if arms is None else arms
    names = {"cross_cos": "class-mean cos", "dod_true": "class-mean DoD (true)",
             "dod_random": "DoD (random)", "purity_A": "purity A %", "purity_B": "purity B %",
             "matched_same": "OT-matched same class %"}
    head = ["gap (°)", "arm", *(names[c] for c in DIAGNOSTICS)]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * len(DIAGNOSTICS)]
    for level in results["levels"]:
        for arm in arms:
            cells = []
            for c in DIAGNOSTICS:
                fmt = ".3f" if c in ("cross_cos", "dod_true", "dod_random") else ".1f"
                cells.append(_cell(values(results, level, arm, diagnostic(c)), fmt))
            lines.append(f"| {level:g} | {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def load_gap_results(out: str | os.PathLike) -> dict[str, Any]:
    """The results written by ``run_gap_sweep(out=...)`` (timing re-attached)."""
    return load_results(out, command="gap-sweep")


# ------------------------------------------------------------------------------- figures


def plot_steps(results: dict[str, Any], k: int | None = None,
               directions: Sequence[str] = ("A->B", "B->A")):
    """P@k gain of each step against the gap level: one row per step (each on its own scale),
    one column per direction; points: mean of the paired per-seed differences, error bars:
    their sd over seeds, the grey line: no change. Returns a Figure."""
    from matplotlib.figure import Figure

    k = first_k(results, k)
    rows = steps(results, k, directions)
    names = list(dict.fromkeys(r["step"] for r in rows))
    fig = Figure(figsize=(7.4, 1.2 + 2.0 * len(names)), layout="constrained")
    axes = fig.subplots(len(names), len(directions), sharex=True, sharey="row", squeeze=False)
    for i, step in enumerate(names):
        for j, d in enumerate(directions):
            ax = axes[i, j]
            sel = [r for r in rows if r["direction"] == d and r["step"] == step]
            ax.errorbar([r["level"] for r in sel], [r["mean"] for r in sel],
                        yerr=[r["sd"] for r in sel], marker="o", capsize=4, color=f"C{i}")
            ax.axhline(0.0, color="0.5", lw=0.8)
            ax.tick_params(labelsize=9)
            if i == 0:
                ax.set_title(_label(results, d), fontsize=10)
            if j == 0:
                ax.set_ylabel(f"{step}\n(points of P@{k})", fontsize=9)
    for ax in axes[-1]:
        ax.set_xticks(results["levels"], [f"{v:g}°" for v in results["levels"]])
        ax.set_xlabel("domain gap: sketch glyphs turned by", fontsize=9)
    return fig


def _project(points: Tensor) -> Tensor:
    """(N, 2) projection of (N, D) points on their two principal directions."""
    centred = points - points.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return centred @ v[:2].T


def class_mean_geometry(run_dir: str | os.PathLike) -> tuple[Tensor, Tensor, list[str]]:
    """(C, D) L2-normalised class means of domain A and of domain B for a finished run's key
    encoder, and the class names."""
    _, sets, feats = run_features(run_dir)
    means = [F.normalize(class_means(F.normalize(z, dim=1), y, sorted(set(y.tolist()))), dim=1)
             for z, y in feats]
    return means[0], means[1], list(sets[0].eval_set.classes)


def plot_class_means(panels: Sequence[tuple[str, Tensor, Tensor]], names: Sequence[str],
                     domains: Sequence[str] = GAP_PAIR):
    """One panel per (title, means of A, means of B): both domains' class means in one 2-D
    projection shared by every panel (the principal directions of all their points), each
    class's two means joined. Short lines: the domains agree on where each class lies.
    Returns a Figure."""
    from matplotlib.figure import Figure

    n = len(panels[0][1])
    xy = _project(torch.cat([torch.cat([a, b]) for _, a, b in panels])).split(2 * n)
    fig = Figure(figsize=(7.4, 4.0), layout="constrained")
    axes = fig.subplots(1, len(panels), sharex=True, sharey=True, squeeze=False)[0]
    span = float((xy[0].max(0).values - xy[0].min(0).values).max())
    # label offsets (points) tried in turn, so that two nearby means do not share a place
    places = (((3, 3), "left", "bottom"), ((-3, -3), "right", "top"),
              ((-3, 3), "right", "bottom"), ((3, -3), "left", "top"))
    for ax, (title, _, _), points in zip(axes, panels, xy, strict=True):
        a, b = points[:n], points[n:]
        taken: list[tuple[int, int]] = []  # (class, place) of the labels already written
        for i in range(n):
            ax.plot([a[i, 0], b[i, 0]], [a[i, 1], b[i, 1]], color="0.6", lw=0.8, zorder=1)
            near = {place for j, place in taken
                    if float((a[i] - a[j]).abs().max()) < 0.08 * span}
            place = next((k for k in range(len(places)) if k not in near), 0)
            taken.append((i, place))
            offset, ha, va = places[place]
            ax.annotate(names[i].split("_", 1)[-1], a[i], fontsize=9, xytext=offset,
                        textcoords="offset points", ha=ha, va=va)
        ax.scatter(a[:, 0], a[:, 1], s=30, marker="o", label=domains[0], zorder=2)
        ax.scatter(b[:, 0], b[:, 1], s=30, marker="^", label=domains[1], zorder=2)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2,
               fontsize=9)
    return fig


__all__ = [
    "DIAGNOSTICS",
    "GAP_LEVELS",
    "GAP_PAIR",
    "STEPS",
    "class_mean_geometry",
    "diagnostic",
    "diagnostics_table",
    "first_k",
    "gap_table",
    "load_gap_results",
    "plot_class_means",
    "plot_steps",
    "precision",
    "run_diagnostics",
    "run_features",
    "run_gap_sweep",
    "step_table",
    "steps",
    "values",
]
