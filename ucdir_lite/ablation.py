"""The ablation table: which loss term buys what, with a shared warm-up and a run cache.

For every domain pair and seed the warm-up (L_IW alone; book chapter 2) is trained ONCE and then
forked into the arms (``train(cfg_arm, out, init_from=<warm-up checkpoint>)``), so every arm
starts from the same weights and sees the same data and the same epoch budget after warm-up.
The arms that add L_DD late (``dd_start``) fork in turn from one shared run of the arm
without it, trained until L_DD starts (``dd_stem``): the same weights, less work.

    IW                   w_IW L_IW                                  (no cluster term)
    CW                   + w_CW L_CW
    CW+SE                + w_SE L_SE
    Full                 + w_DD L_DD, OT-matched centroids (book chapter 5, the tutorial default)
    Full (official DoD)  + w_DD L_DD, the official code's sample-level form

Each arm is a dict of ``TrainConfig`` overrides on the preset (``ARMS``), never a code copy.

Every run goes through the run cache (``ucdir_lite.runcache``: content-addressed, reused,
continued), so notebook 06's ablation reuses the runs of the chapters' notebooks. The
scheduler trains the warm-ups, then each warm-up's arms as soon as it is done, in ``jobs``
worker processes; the rest of the module turns the rows into tables (``ablation_table``,
``gain_table``) and files (``write_results``); the chart is ``plots.plot_ablation``.

Reference: Hu & Lee, ECCV 2022 (arXiv:2207.09721), Table 4 (the ablation of the losses).
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import io
import json
import math
import multiprocessing
import os
import statistics
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ucdir_lite._progress import tqdm
from ucdir_lite.config import (
    ARMS,
    DEFAULT_PAIRS,
    DEFAULT_SEEDS,
    POST_WARMUP_FIELDS,
    TrainConfig,
    get_preset,
)
from ucdir_lite.runcache import (
    MARKER,
    _cache_dir,
    cached_run,
    code_version,
    data_checksum,
    default_cache_dir,
    run_key,
    train_cached,
    train_cached_summary,
)
from ucdir_lite.train import TrainResult, learning_rate
from ucdir_lite.utils import atomic_write, atomic_write_json, atomic_write_text

WARMUP = "warm-up"
"""The name of the shared warm-up run in the results (not a row of the table by default)."""


DIRECTIONS = ("A->B", "B->A", "A->A", "B->B")
# The settings of L_DD that arms may change (not its weight): an L_DD stem takes the base's.
_DD_SETTINGS = ("dd_variant", "ot_epsilon", "tau_dd")


# ------------------------------------------------------------------------------- configs


def arm_config(base: TrainConfig, arm: str) -> TrainConfig:
    """The config of ablation row ``arm`` (a key of ``ARMS``): the base with its overrides."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")
    return base.replace(**ARMS[arm])


def warmup_config(base: TrainConfig) -> TrainConfig:
    """The shared warm-up of ``base``: its first ``warmup_epochs`` epochs (L_IW only), with
    the fields read only after warm-up (``config.POST_WARMUP_FIELDS``) at their defaults, so
    that every arm (and every notebook) of ``base`` shares it. Note: with
    ``cosine=True`` the warm-up's schedule spans the warm-up only, not the first epochs of the
    full schedule."""
    if base.warmup_epochs < 1:
        raise ValueError(
            f"warmup_epochs={base.warmup_epochs}: the ablation forks a warm-up; use at least 1"
        )
    defaults = TrainConfig()
    return base.replace(epochs=base.warmup_epochs,
                        **{name: getattr(defaults, name) for name in POST_WARMUP_FIELDS})


def dd_stem(base: TrainConfig, arm: str) -> TrainConfig | None:
    """The run that ``arm`` shares with the arms that add L_DD, or None.

    L_DD starts at ``dd_start``; until then an arm with L_DD trains exactly what the same
    arm without it trains (its weight is 0, and the lr and the other weights follow the same
    schedule). So the ablation trains that stem once, from the warm-up to ``dd_start``, and
    forks CW+SE, Full and Full (official DoD) from it: the same weights as training each
    from the warm-up, a quarter less work on the ``cpu`` preset. None when ``arm`` trains no
    cluster loss, when L_DD starts with the cluster losses, or when no arm with L_DD shares
    the stem.
    """
    cfg = arm_config(base, arm)
    start = base.dd_start
    clusters = cfg.cw_weight > 0 or cfg.se_weight > 0
    if not clusters or start is None or not base.warmup_epochs < start < cfg.epochs:
        return None

    def stem_of(c: TrainConfig) -> TrainConfig:  # L_DD off, its settings the base's
        return c.replace(dd_weight=0.0, epochs=start,
                         **{name: getattr(base, name) for name in _DD_SETTINGS})

    stem = stem_of(cfg)
    with_dd = [arm_config(base, other) for other in ARMS]
    if not any(c.dd_weight > 0 and stem_of(c) == stem for c in with_dd):
        return None
    for epoch in range(base.warmup_epochs, start):  # the fork is exact only if these agree
        if (learning_rate(stem, epoch) != learning_rate(cfg, epoch)
                or stem.loss_weights(epoch) != cfg.loss_weights(epoch)):
            return None
    return stem


def fork_chain(base: TrainConfig, arm: str) -> list[TrainConfig]:
    """The runs that train ``arm`` (a key of ``ARMS``, or ``"warm-up"``), each forked from
    the one before: the warm-up, the L_DD stem if any (``dd_stem``), the arm itself."""
    warm = warmup_config(base)
    if arm == WARMUP:
        return [warm]
    stem = dd_stem(base, arm)
    return [warm, *([stem] if stem is not None else []), arm_config(base, arm)]


def train_arms(base: TrainConfig, arms: Iterable[str],
               cache_dir: str | os.PathLike | None = None, *,
               progress: bool = False) -> dict[str, TrainResult]:
    """``{arm: train_arm(base, arm)}`` for several rows (``"warm-up"`` included), in order:
    what a chapter's notebook trains."""
    return {arm: train_arm(base, arm, cache_dir, progress=progress) for arm in arms}


def train_arm(base: TrainConfig, arm: str, cache_dir: str | os.PathLike | None = None, *,
              progress: bool = True) -> TrainResult:
    """One ablation row for one pair and seed, through the cache: the runs of
    ``fork_chain(base, arm)``, each forked from the one before (the shared warm-up of
    ``base``, which ``arm="warm-up"`` returns; the L_DD stem; ``arm_config(base, arm)``). The
    notebooks call this with the preset the ablation uses, so notebook 06 finds their runs."""
    if arm != WARMUP and arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose from {WARMUP}, {', '.join(ARMS)}")
    result = None
    for cfg in fork_chain(base, arm):
        result = train_cached(cfg, cache_dir, init_from=result, progress=progress)
    assert result is not None
    return result


# ------------------------------------------------------------------------------- jobs


def _job(cfg_dict: dict[str, Any], cache_dir: str, parent: str | None) -> dict[str, Any]:
    """Run (or reuse) one cached run; return its summary (picklable, for worker processes)."""
    return train_cached_summary(TrainConfig.from_dict(cfg_dict), cache_dir, parent,
                                progress=False)[1]


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _parse_pair(pair: str | Sequence[str]) -> tuple[str, str]:
    if isinstance(pair, str):
        a, sep, b = pair.partition(":")
        if not sep or not a or not b:
            raise ValueError(f"pair {pair!r}: write it as A:B, e.g. clipart:sketch")
        return a, b
    if len(pair) != 2:
        raise ValueError(f"pair {pair!r}: give two domains, e.g. ('clipart', 'sketch')")
    return str(pair[0]), str(pair[1])


def pair_name(pair: Sequence[str]) -> str:
    """``("clipart", "sketch")`` -> ``"clipart->sketch"``: the name of a pair in the results
    and the files (``split_pair`` is its inverse)."""
    return f"{pair[0]}->{pair[1]}"


def split_pair(name: str | Sequence[str]) -> tuple[str, str]:
    """``"clipart->sketch"`` -> ``("clipart", "sketch")`` (a pair passes through)."""
    if not isinstance(name, str):
        return str(name[0]), str(name[1])
    a, sep, b = name.partition("->")
    if not sep:
        raise ValueError(f"pair name {name!r}: expected A->B, e.g. clipart->sketch")
    return a, b


def direction_label(direction: str, pair: str | Sequence[str]) -> str:
    """A retrieval direction with the pair's domain names: ``("A->B", ("clipart", "sketch"))``
    -> ``"clipart→sketch"``, ``"B->B"`` -> ``"sketch→sketch"``."""
    names = dict(zip("AB", split_pair(pair), strict=True))
    query, _, gallery = direction.partition("->")
    return f"{names[query]}→{names[gallery]}"


class _Scheduler:
    """Run the warm-ups, then each warm-up's arms as soon as it is done, in ``jobs`` processes
    (one thread each) or in this process (``jobs=1``); cached runs are not submitted."""

    def __init__(self, jobs: int, threads: int, cache_dir: Path, progress: bool) -> None:
        self.jobs, self.threads, self.cache_dir = jobs, threads, cache_dir
        self.bar = tqdm(total=0, desc="ablation", unit="run", disable=not progress,
                        dynamic_ncols=True)
        self.results: dict[str, dict[str, Any]] = {}

    def _lookup(self, cfg: TrainConfig, parent: str | None) -> dict[str, Any] | None:
        summary = cached_run(cfg, self.cache_dir, init_from=parent)
        return None if summary is None else {**summary, "wall_s": 0.0, "reused": True}

    def run(self, warmups: dict[str, TrainConfig],
            arms: dict[str, list[tuple[str, TrainConfig]]]) -> dict[str, dict[str, Any]]:
        """warmups: {job id: config}; arms: {warm-up job id: [(job id, config)]}."""
        self.bar.total = len(warmups) + sum(len(v) for v in arms.values())
        self.bar.refresh()
        pool = None
        if self.jobs > 1:
            pool = cf.ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context(
                "spawn"), initializer=_init_worker, initargs=(self.threads,))
        previous = torch.get_num_threads()
        try:
            if pool is None:
                torch.set_num_threads(self.threads)
            self._drive(pool, warmups, arms)
        finally:
            torch.set_num_threads(previous)
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            self.bar.close()
        return self.results

    def _drive(self, pool: cf.ProcessPoolExecutor | None, warmups: dict[str, TrainConfig],
               arms: dict[str, list[tuple[str, TrainConfig]]]) -> None:
        todo: list[tuple[str, TrainConfig, str | None]] = [
            (job, cfg, None) for job, cfg in warmups.items()]
        running: dict[cf.Future, str] = {}
        while todo or running:
            while todo:
                job, cfg, parent = todo.pop(0)
                cached = self._lookup(cfg, parent)
                if cached is not None:
                    self._done(job, cached, arms, todo)
                elif pool is None:
                    self._done(job, _job(cfg.to_dict(), str(self.cache_dir), parent), arms, todo)
                else:
                    future = pool.submit(_job, cfg.to_dict(), str(self.cache_dir), parent)
                    running[future] = job
            if running:
                finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for future in finished:
                    try:
                        summary = future.result()
                    except cf.process.BrokenProcessPool as err:
                        raise RuntimeError(
                            "a worker process of the ablation died. Worker processes are "
                            "spawned: a script that calls run_ablation(jobs>1) must do so under "
                            "`if __name__ == '__main__':`; or pass --jobs 1 (jobs=1)"
                        ) from err
                    self._done(running.pop(future), summary, arms, todo)

    def _done(self, job: str, summary: dict[str, Any],
              arms: dict[str, list[tuple[str, TrainConfig]]],
              todo: list[tuple[str, TrainConfig, str | None]]) -> None:
        self.results[job] = summary
        todo.extend((arm_job, cfg, summary["run_dir"]) for arm_job, cfg in arms.get(job, []))
        self.bar.set_postfix_str(job)
        self.bar.update(1)


# ------------------------------------------------------------------------------- the ablation


def run_ablation(
    pairs: Iterable[str | Sequence[str]] = DEFAULT_PAIRS,
    seeds: Iterable[int] = DEFAULT_SEEDS,
    preset: str = "cpu",
    out: str | os.PathLike | None = "results/default",
    arms: Iterable[str] | None = None,
    jobs: int | None = None,
    overrides: dict[str, Any] | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train (or reuse) the warm-up and every arm for each pair and seed; write the results.

    Args:
        pairs: domain pairs, ``"A:B"`` strings or ``(A, B)`` tuples (A queries B and back).
        seeds: training seeds (``TrainConfig.seed``); the table shows mean ± sd over them.
        preset: the ``TrainConfig`` preset every run starts from.
        out: results folder (``None``: write nothing): ``runs/<pair>/seed<s>/<arm>.json``,
            ``rows.csv`` (one row per pair, seed, arm), ``table.md``, ``ablation.png``,
            ``results.json`` and ``timing.json``.
        arms: rows to train (default: all of ``ARMS``, in that order).
        jobs: worker processes, one thread each (default: 2 on the CPU, 1 on a GPU); 1 runs in
            this process with all its threads.
        overrides: ``TrainConfig`` fields applied to the preset for every run (e.g.
            ``{"ks": (1, 5, 15)}`` for Office-Home's P@1/5/15).
        cache_dir: the run cache (default: ``default_cache_dir()``).
        progress: a progress bar over runs.
        threads: CPU threads of each run (default: the preset's ``threads``, else the cores
            shared out over ``jobs``, or this process's thread count for ``jobs=1``). Float
            sums, and so the trained weights, depend on the thread count: runs are
            bit-reproducible at a fixed one, the count is part of each run's cache key, and the
            table's title names it.

    Returns:
        ``{"preset", "overrides", "pairs", "seeds", "arms", "rows", "timing"}``; ``rows`` holds
        one dict per (pair, seed, arm), the warm-ups included (arm ``"warm-up"``), each with
        the full retrieval ``metrics`` (``"A->B"``, ``"B->A"``, ``"A->A"``, ``"B->B"``).
    """
    pairs = [_parse_pair(p) for p in pairs]
    seeds = [int(s) for s in seeds]
    if any(s < 0 for s in seeds):
        raise ValueError(f"--seeds (seeds=) {seeds}: a seed must be >= 0, e.g. --seeds 0 1 2")
    arm_names = list(ARMS) if arms is None else list(arms)
    for arm in arm_names:
        if arm not in ARMS:
            raise ValueError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")
    if not pairs or not seeds or not arm_names:
        raise ValueError("give at least one pair, one seed and one arm")
    overrides = dict(overrides or {})
    for name in ("domains", "seed"):
        if name in overrides:
            raise ValueError(f"--set {name}= (overrides={{{name!r}: ...}}) is not allowed: "
                             "pass --pairs (pairs=) / --seeds (seeds=) instead")
    probe = get_preset(preset, **overrides)
    on_gpu = probe.device != "cpu" and torch.cuda.is_available()
    if jobs is None:
        jobs = 1 if on_gpu else 2
    if jobs < 1:
        raise ValueError(f"--jobs (jobs=) {jobs}: must be >= 1")
    if threads is None:
        threads = probe.threads
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else torch.get_num_threads()
    if threads < 1:
        raise ValueError(f"threads={threads} must be >= 1")
    cache = _cache_dir(cache_dir)

    warmups: dict[str, TrainConfig] = {}
    forks: dict[str, list[tuple[str, TrainConfig]]] = {}  # job -> the jobs forked from it
    where: dict[str, tuple[str, int, str]] = {}
    for pair in pairs:
        for seed in seeds:
            base = get_preset(preset, **overrides, domains=pair, seed=seed)
            base = base.replace(threads=threads)
            data_checksum(base, progress=progress)  # generate missing data before the workers
            prefix = f"{pair_name(pair)}/seed{seed}"
            warm_job = f"{prefix}/{WARMUP}"
            warmups[warm_job] = warmup_config(base)
            where[warm_job] = (pair_name(pair), seed, WARMUP)
            for arm in arm_names:
                *stages, cfg = fork_chain(base, arm)
                parent = warm_job
                if len(stages) > 1:  # the L_DD stem: one job, shared by the arms forked from it
                    stem_job = f"{prefix}/until epoch {stages[1].epochs} without L_DD"
                    if stem_job not in forks:
                        forks.setdefault(parent, []).append((stem_job, stages[1]))
                        forks[stem_job] = []
                    parent = stem_job
                job = f"{prefix}/{arm}"
                forks.setdefault(parent, []).append((job, cfg))
                where[job] = (pair_name(pair), seed, arm)

    start = time.perf_counter()
    summaries = _Scheduler(jobs, threads, cache, progress).run(warmups, forks)
    wall = time.perf_counter() - start

    rows = []
    for job, (pair, seed, arm) in where.items():
        s = summaries[job]
        rows.append({"pair": pair, "seed": seed, "arm": arm, "metrics": s["metrics"],
                     "key": s["key"], "run_dir": s["run_dir"], "reused": s["reused"],
                     "wall_s": s["wall_s"]})
    trained = {job: s for job, s in summaries.items() if not s["reused"]}  # stems included
    results = {
        "preset": preset,
        "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
        "pairs": [pair_name(p) for p in pairs],
        "seeds": seeds,
        "arms": arm_names,
        "threads": threads,
        "rows": rows,
        "timing": {
            "wall_s": round(wall, 1),
            "jobs": jobs,
            "threads_per_job": threads,
            "runs_trained": len(trained),
            "runs_reused": len(summaries) - len(trained),
            "warmup_run_s": round(sum(s["wall_s"] for job, s in trained.items()
                                      if job in warmups), 1),
            "arm_run_s": round(sum(s["wall_s"] for job, s in trained.items()
                                   if job not in warmups), 1),
        },
    }
    if out is not None:
        write_results(results, out)
    return results


# ------------------------------------------------------------------------------- outputs


def first_k(results: dict[str, Any]) -> int:
    """The first K of the results' P@K (the K the gain table and the chart use)."""
    return _ks(results)[0]


def _ks(results: dict[str, Any]) -> list[int]:
    entry = results["rows"][0]["metrics"]["A->B"]
    return [int(name[2:]) for name in entry if name.startswith("P@")]


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else math.nan)


def summarize(results: dict[str, Any]) -> dict[str, dict[str, dict[str, tuple[float, float]]]]:
    """``{pair: {arm: {"A->B P@50": (mean, sd), ...}}}`` over the seeds (sd NaN for 1 seed);
    arms in ``results["arms"]`` order, the warm-up first."""
    out: dict[str, dict[str, dict[str, tuple[float, float]]]] = {}
    for pair in results["pairs"]:
        out[pair] = {}
        for arm in [WARMUP, *results["arms"]]:
            rows = [r for r in results["rows"] if r["pair"] == pair and r["arm"] == arm]
            if not rows:
                continue
            cells = {}
            for direction in DIRECTIONS:
                for metric in rows[0]["metrics"].get(direction, {}):
                    cells[f"{direction} {metric}"] = _mean_sd(
                        [r["metrics"][direction][metric] for r in rows])
            out[pair][arm] = cells
    return out


def _cell(mean: float, sd: float) -> str:
    return f"{mean:.1f}" if math.isnan(sd) else f"{mean:.1f} ± {sd:.1f}"


def ablation_table(results: dict[str, Any], ks: Sequence[int] | None = None,
                   directions: Sequence[str] = DIRECTIONS, include_warmup: bool = False) -> str:
    """A Markdown table per pair: rows = arms, columns = P@K per direction (cross-domain
    A->B, B->A, then in-domain A->A, B->B), cells = mean ± sd over the seeds."""
    ks = list(ks) if ks is not None else _ks(results)
    means = summarize(results)
    n = len(results["seeds"])
    lines = []
    for pair, arms in means.items():
        columns = [f"{d} P@{k}" for d in directions for k in ks]
        header = [f"{direction_label(d, pair)} P@{k}" for d in directions for k in ks]
        lines += [f"**{pair}** (mean ± sd over {n} seed{'s' if n > 1 else ''})", "",
                  "| arm | " + " | ".join(header) + " |",
                  "|---|" + "---:|" * len(columns)]
        for arm, cells in arms.items():
            if arm == WARMUP and not include_warmup:
                continue
            row = [_cell(*cells[c]) if c in cells else "" for c in columns]
            lines.append(f"| {arm} | " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


RULE = ("a step is a **gain** (a **loss**) when its paired per-seed difference is positive "
        "(negative) in every seed and its mean exceeds twice its standard error; anything "
        "else is **no measurable effect**")
"""The book's rule for calling one arm better than another (``paired_verdict``). Twice, not
once: for differences of one sign the mean always exceeds one standard error, so that test
alone would add nothing; twice rejects a mean that one seed carries."""


def paired_verdict(diffs: Sequence[float]) -> str:
    """``"gain"``, ``"loss"`` or ``"no measurable effect"`` for the paired per-seed
    differences ``diffs`` (arm minus reference, one per seed), by ``RULE``: every difference
    of one sign and ``|mean| > 2 sd / sqrt(n)``. A single seed is never enough (no spread)."""
    if len(diffs) < 2:
        return "no measurable effect"
    mean = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    if all(d > 0 for d in diffs) and mean > 2 * se:
        return "gain"
    if all(d < 0 for d in diffs) and -mean > 2 * se:
        return "loss"
    return "no measurable effect"


def per_seed(results: dict[str, Any], pair: str, arm: str, direction: str,
             k: int | None = None) -> dict[int, float]:
    """``{seed: P@k}`` of one row and direction (``k`` default: the first K): one cell of
    the table before the mean over the seeds, in the order of the rows."""
    metric = f"P@{k if k is not None else first_k(results)}"
    return {r["seed"]: r["metrics"][direction][metric] for r in results["rows"]
            if r["pair"] == pair and r["arm"] == arm}


class Step(NamedTuple):
    """The change from one row to another, seed by seed (``paired_step``)."""

    mean: float
    """Mean of the paired per-seed differences (points)."""
    sd: float
    """Their standard deviation; NaN for one seed."""
    up: int
    """Seeds in which the change is positive."""
    down: int
    """Seeds in which the change is negative."""
    n: int
    """Seeds compared."""
    verdict: str
    """By ``paired_verdict`` (``RULE``)."""

    def cell(self) -> str:
        """``"+1.2 ± 0.4 (3/3 ↑, gain)"``."""
        spread = "" if math.isnan(self.sd) else f" ± {self.sd:.1f}"
        return f"{self.mean:+.1f}{spread} ({self.up}/{self.n} ↑, {self.verdict})"


def paired_step(results: dict[str, Any], pair: str, lower: str, upper: str, direction: str,
                k: int | None = None) -> Step:
    """The change of P@k from row ``lower`` to row ``upper`` in one direction, paired by
    seed (the rows of one seed share its warm-up, so the paired differences vary far less
    than the P@k themselves)."""
    low = per_seed(results, pair, lower, direction, k)
    diffs = [value - low[seed] for seed, value in per_seed(results, pair, upper, direction,
                                                           k).items()]
    if not diffs:
        return Step(math.nan, math.nan, 0, 0, 0, "no measurable effect")
    mean, sd = _mean_sd(diffs)
    return Step(mean, sd, sum(d > 0 for d in diffs), sum(d < 0 for d in diffs), len(diffs),
                paired_verdict(diffs))


def gain_table(results: dict[str, Any], k: int | None = None, baseline: str = "IW",
               directions: Sequence[str] = ("A->B", "B->A")) -> str:
    """A Markdown table of each arm's gain in P@k over ``baseline``, paired by seed
    (``paired_step``): rows = arms, columns = pair and direction, cells = mean ± sd over the
    seeds and the verdict of ``paired_verdict`` (``RULE``)."""
    k = k if k is not None else first_k(results)
    metric = f"P@{k}"
    header, cells = [], {arm: [] for arm in results["arms"] if arm != baseline}
    for pair in results["pairs"]:
        for direction in directions:
            header.append(direction_label(direction, pair))
            for arm in cells:
                step = paired_step(results, pair, baseline, arm, direction, k)
                cells[arm].append(f"{_cell(step.mean, step.sd)} ({step.verdict})"
                                  if step.n else "")
    lines = [f"Gain in {metric} over {baseline}, paired by seed (mean ± sd; verdict: {RULE})",
             "",
             "| arm | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    lines += [f"| {arm} | " + " | ".join(row) + " |" for arm, row in cells.items()]
    return "\n".join(lines) + "\n"


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    flat = {"pair": row["pair"], "seed": row["seed"], "arm": row["arm"]}
    for direction in DIRECTIONS:
        for metric, value in row["metrics"].get(direction, {}).items():
            flat[f"{direction} {metric}"] = round(value, 4)
    return flat


def write_results(results: dict[str, Any], out: str | os.PathLike) -> Path:
    """Write a results dict to ``out``: one JSON per run, ``rows.csv``, ``table.md``,
    ``ablation.png``, ``results.json`` (everything) and ``timing.json``. The table, CSV and
    per-run JSON hold no times, so the same ablation writes the same files."""
    out = Path(out).expanduser()
    for row in results["rows"]:
        name = row["arm"].replace(" ", "_").replace("(", "").replace(")", "")
        record = {k: v for k, v in row.items() if k not in ("wall_s", "reused")}
        atomic_write_json(record, out / "runs" / row["pair"].replace("->", "-") /
                          f"seed{row['seed']}" / f"{name}.json")
    flat = [_flat(r) for r in results["rows"]]
    fields = list(dict.fromkeys(f for r in flat for f in r))
    rows_csv = io.StringIO(newline="")
    writer = csv.DictWriter(rows_csv, fieldnames=fields)
    writer.writeheader()
    writer.writerows(flat)
    atomic_write(out / "rows.csv",
                 lambda tmp: Path(tmp).write_text(rows_csv.getvalue(), newline=""))
    threads = results.get("threads")
    title = (f"# Ablation: preset `{results['preset']}`, seeds {results['seeds']}"
             + (f", overrides {results['overrides']}" if results["overrides"] else "")
             + (f", {threads} CPU thread{'s' if threads != 1 else ''} per run" if threads
                else "") + "\n\n")
    text = title + ablation_table(results)
    if "IW" in results["arms"] and len(results["arms"]) > 1:
        text += "\n" + gain_table(results)
    atomic_write_text(text, out / "table.md")
    stable = {k: v for k, v in results.items() if k != "timing"}
    stable["rows"] = [{k: v for k, v in r.items() if k not in ("wall_s", "reused")}
                      for r in results["rows"]]
    atomic_write_json(stable, out / "results.json")
    atomic_write_json(results["timing"], out / "timing.json")
    from ucdir_lite.plots import plot_ablation, save_png  # matplotlib only when writing

    save_png(plot_ablation(results), out / "ablation.png")
    return out


def load_results(out: str | os.PathLike, command: str = "ablate") -> dict[str, Any]:
    """The results dict written by ``run_ablation`` (``results.json``, timing re-attached);
    ``command`` is the ``ucdir-lite`` subcommand that writes them, named when they are missing
    (``gap.load_gap_results`` passes ``gap-sweep``)."""
    out = Path(out).expanduser()
    path = out / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `ucdir-lite {command} --out {out}` first")
    results = json.loads(path.read_text())
    timing = out / "timing.json"
    results["timing"] = json.loads(timing.read_text()) if timing.is_file() else {}
    return results


def __getattr__(name: str) -> Any:
    """``plot_ablation`` moved to ``ucdir_lite.plots``; imported from there on first use
    (matplotlib is not loaded with this module)."""
    if name == "plot_ablation":
        from ucdir_lite.plots import plot_ablation

        return plot_ablation
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ARMS",
    "MARKER",
    "direction_label",
    "first_k",
    "split_pair",
    "DEFAULT_PAIRS",
    "DEFAULT_SEEDS",
    "WARMUP",
    "ablation_table",
    "arm_config",
    "cached_run",
    "code_version",
    "data_checksum",
    "dd_stem",
    "default_cache_dir",
    "fork_chain",
    "gain_table",
    "load_results",
    "pair_name",
    "Step",
    "paired_step",
    "paired_verdict",
    "per_seed",
    "run_ablation",
    "train_arms",
    "run_key",
    "summarize",
    "train_arm",
    "train_cached",
    "warmup_config",
    "write_results",
]
