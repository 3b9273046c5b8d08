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

Runs live in a content-addressed cache: a run's key is the hash of its config (fields that
do not change what is learned, like ``ks`` or ``device``, left out), the code version (the
package version and a digest of the modules that train), the data (the generated benchmark's
manifest checksum, or a listing of the real data's files) and, for a forked run, its parent's
key. ``train_cached`` returns a finished run with the same key without training, continues an
interrupted one (``train(..., resume=True)``) and trains the rest. The book's notebooks train
through it, so notebook 06's ablation reuses their runs.

Reference: Hu & Lee, ECCV 2022 (arXiv:2207.09721), Table 4 (the ablation of the losses).
"""

from __future__ import annotations

import ast
import concurrent.futures as cf
import csv
import hashlib
import io
import json
import math
import multiprocessing
import os
import statistics
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

import ucdir_lite
from ucdir_lite import glyphs
from ucdir_lite._lock import folder_lock
from ucdir_lite._progress import tqdm
from ucdir_lite.config import ARMS, DEFAULT_PAIRS, DEFAULT_SEEDS, TrainConfig, get_preset
from ucdir_lite.train import (
    CHECKPOINT,
    TrainResult,
    data_root,
    learning_rate,
    loss_weights,
    train,
)
from ucdir_lite.utils import atomic_write, atomic_write_json, atomic_write_text

WARMUP = "warm-up"
"""The name of the shared warm-up run in the results (not a row of the table by default)."""


# Config fields that do not change what is learned: left out of the cache key (a cached run
# is re-evaluated, not retrained, when ``ks`` changes; see train(resume=True)).
NON_KEY_FIELDS = ("ks", "device", "num_workers", "eval_batch_size", "log_every", "data_root")
# Fields a run never reads are reset to TrainConfig's defaults (``canonical_config``) so that
# they do not split the cache: a loss's settings when the loss is off, every cluster setting
# when no cluster loss is on, all of them in a warm-up (which trains L_IW alone).
_LOSS_FIELDS = {
    "cw": ("cw_variant", "cw_weight", "cw_ramp_epochs", "supcon_tau", "conf_threshold"),
    "se": ("se_variant", "se_weight", "se_start", "se_tau"),
    "dd": ("dd_variant", "dd_weight", "dd_start", "ot_epsilon", "dd_tau"),
}
_CLUSTER_FIELDS = ("tau", "num_clusters", "kmeans_iters", "kmeans_restarts", "cluster_on")
# Modules whose source decides what a run learns (part of the code version).
_TRAINING_MODULES = ("train", "objective", "losses", "clustering", "transport", "model",
                     "data", "datasets", "augment", "checkpoint", "config", "utils", "metrics")
MARKER = "cache.json"
DIRECTIONS = ("A->B", "B->A", "A->A", "B->B")


# ------------------------------------------------------------------------------- configs


def arm_config(base: TrainConfig, arm: str) -> TrainConfig:
    """The config of ablation row ``arm`` (a key of ``ARMS``): the base with its overrides."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")
    return canonical_config(base.replace(**ARMS[arm]))


def canonical_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the fields it never reads reset to TrainConfig's defaults: the settings of
    a switched-off loss (e.g. ``se_weight`` when ``se=False``), the cluster settings when no
    cluster loss is on, and in a warm-up-only run (``epochs <= warmup_epochs``) every
    post-warm-up field. Two configs that train the same thing then share a cache key."""
    defaults = TrainConfig()
    warmup_only = cfg.epochs <= cfg.warmup_epochs
    unused: list[str] = ["iw_weight", *_LOSS_FIELDS] if warmup_only else []
    for switch, names in _LOSS_FIELDS.items():
        if warmup_only or not getattr(cfg, switch):
            unused += names
    if warmup_only or not (cfg.cw or cfg.se or cfg.dd):
        unused += _CLUSTER_FIELDS
    return cfg.replace(**{name: getattr(defaults, name) for name in unused})


def warmup_config(base: TrainConfig) -> TrainConfig:
    """The shared warm-up of ``base``: its first ``warmup_epochs`` epochs (L_IW only), in
    canonical form, so that every arm (and every notebook) of ``base`` shares it. Note: with
    ``cosine=True`` the warm-up's schedule spans the warm-up only, not the first epochs of the
    full schedule."""
    if base.warmup_epochs < 1:
        raise ValueError(
            f"warmup_epochs={base.warmup_epochs}: the ablation forks a warm-up; use at least 1"
        )
    return canonical_config(base.replace(epochs=base.warmup_epochs))


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
    if not (cfg.cw or cfg.se) or start is None or not base.warmup_epochs < start < cfg.epochs:
        return None
    stem = canonical_config(cfg.replace(dd=False, epochs=start))
    with_dd = [arm_config(base, other) for other in ARMS]
    if not any(c.dd and canonical_config(c.replace(dd=False, epochs=start)) == stem
               for c in with_dd):
        return None
    for epoch in range(base.warmup_epochs, start):  # the fork is exact only if these agree
        if (learning_rate(stem, epoch) != learning_rate(cfg, epoch)
                or loss_weights(stem, epoch) != loss_weights(cfg, epoch)):
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


# ------------------------------------------------------------------------------- cache keys


def default_cache_dir() -> Path:
    """``$UCDIR_RUNS``, else ``~/.cache/ucdir_lite/runs`` (beside the generated data)."""
    return Path(os.environ.get("UCDIR_RUNS") or "~/.cache/ucdir_lite/runs").expanduser()


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    """``cache_dir`` (user folder expanded), or ``default_cache_dir()`` when None."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def _code_digest(source: str) -> bytes:
    """The syntax tree of ``source`` without its docstrings (comments are not in it): editing
    prose leaves the digest, and so the run cache, as it was."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        for name in ("body", "orelse", "finalbody"):
            body = getattr(node, name, None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                kept = [s for s in body if not (isinstance(s, ast.Expr) and isinstance(
                    s.value, ast.Constant) and isinstance(s.value.value, str))]
                setattr(node, name, kept or [ast.Pass()])
    return ast.dump(tree).encode()


def code_version() -> str:
    """The package version plus a digest of the code (not the docstrings or comments) of the
    modules that train."""
    digest = hashlib.sha256()
    package = Path(ucdir_lite.__file__).parent
    for name in _TRAINING_MODULES:
        digest.update(_code_digest((package / f"{name}.py").read_text()))
    return f"{ucdir_lite.__version__}+{digest.hexdigest()[:12]}"


def data_checksum(cfg: TrainConfig, progress: bool = False) -> str:
    """A checksum of the data ``cfg`` trains on: the generated benchmark's manifest checksum
    (the benchmark is generated first if missing), or for real data a hash of the relative
    path and size of every file of the two domains."""
    root = data_root(cfg, progress=progress)
    if cfg.data_root is None:
        return "glyphs:" + glyphs.read_manifest(root)["files_sha256"]
    digest = hashlib.sha256()
    for domain in cfg.domains:
        for path in sorted((root / domain).rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                digest.update(f"{path.relative_to(root).as_posix()}\t{path.stat().st_size}\n"
                              .encode())
    return "files:" + digest.hexdigest()


def run_key(cfg: TrainConfig, parent_key: str | None = None, *,
            data: str | None = None, code: str | None = None) -> str:
    """The cache key of a run: sha256 over its config (``NON_KEY_FIELDS`` left out), the code
    version, the data checksum and the parent run's key (forked runs). ``data`` and ``code``
    may be passed when already known."""
    config = {k: v for k, v in cfg.to_dict().items() if k not in NON_KEY_FIELDS}
    material = {
        "config": config,
        "code": code or code_version(),
        "data": data or data_checksum(cfg),
        "parent": parent_key,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def _run_dir(cache_dir: Path, cfg: TrainConfig, key: str) -> Path:
    a, b = (d.replace(" ", "_") for d in cfg.domains)
    return cache_dir / f"{a}-{b}-s{cfg.seed}-e{cfg.epochs}-{key[:16]}"


def _marker(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / MARKER
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _finished_marker(run_dir: Path, key: str) -> dict[str, Any] | None:
    """The marker of ``run_dir`` if it records a finished run of ``key``, else None."""
    marker = _marker(run_dir)
    if marker is None or not marker.get("finished") or marker.get("key") != key:
        return None
    return marker


def _parent_of(init_from: TrainResult | str | os.PathLike | None) -> tuple[Path | None,
                                                                          str | None]:
    """(checkpoint path, parent key) of an ``init_from`` (a TrainResult, a run folder or a
    checkpoint file); the key is the parent's cache key, else the checkpoint's sha256."""
    if init_from is None:
        return None, None
    if isinstance(init_from, TrainResult):
        if init_from.out_dir is None:
            raise ValueError("init_from is a TrainResult trained in memory (out_dir=None); "
                             "fork only from a run saved to a folder")
        init_from = init_from.out_dir
    path = Path(init_from).expanduser()
    ckpt = path / CHECKPOINT if path.is_dir() else path
    if not ckpt.is_file():
        raise FileNotFoundError(
            f"init_from {str(path)!r} holds no checkpoint; pass a finished run's folder"
        )
    marker = _marker(ckpt.parent)
    if marker is not None and marker.get("finished"):
        return ckpt, marker["key"]
    digest = hashlib.sha256()
    with open(ckpt, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return ckpt, "sha256:" + digest.hexdigest()


def _resolved(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` in canonical form with its thread count fixed (None: this process's count):
    the count is part of the run's key, since the trained weights depend on it."""
    cfg = canonical_config(cfg)
    return cfg if cfg.threads is not None else cfg.replace(threads=torch.get_num_threads())


def _has_metrics(metrics: dict[str, Any], ks: Iterable[int]) -> bool:
    entry = metrics.get("A->B", {})
    return all(f"P@{k}" in entry for k in ks)


def cached_run(cfg: TrainConfig, cache_dir: str | os.PathLike | None = None,
               init_from: TrainResult | str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The summary (``cache.json`` plus ``metrics`` and ``run_dir``) of the finished cached run
    of ``cfg``, or None when it is missing, unfinished or lacks some of ``cfg.ks``. Never
    trains."""
    cfg = _resolved(cfg)
    cache_dir = _cache_dir(cache_dir)
    key = run_key(cfg, _parent_of(init_from)[1])
    run_dir = _run_dir(cache_dir, cfg, key)
    marker = _finished_marker(run_dir, key)
    if marker is None:
        return None
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not _has_metrics(metrics, cfg.ks):
        return None
    return {**marker, "metrics": metrics, "run_dir": str(run_dir)}


def _train_cached(cfg: TrainConfig, cache_dir: str | os.PathLike | None,
                  init_from: TrainResult | str | os.PathLike | None,
                  progress: bool) -> tuple[TrainResult, dict[str, Any]]:
    cfg = _resolved(cfg)
    cache_dir = _cache_dir(cache_dir)
    parent_ckpt, parent_key = _parent_of(init_from)
    data = data_checksum(cfg, progress=progress)
    key = run_key(cfg, parent_key, data=data)
    run_dir = _run_dir(cache_dir, cfg, key)
    with folder_lock(run_dir, what="run-cache entry", hint="another ablation or notebook "
                     "is training it: wait for it to finish, or use another --cache-dir "
                     "(cache_dir=)"):
        marker = _finished_marker(run_dir, key)
        finished = marker is not None
        start = time.perf_counter()
        if (run_dir / CHECKPOINT).is_file():  # finished (no training) or interrupted (continues)
            result = train(cfg, run_dir, resume=True, progress=progress)
        else:
            result = train(cfg, run_dir, init_from=parent_ckpt, progress=progress)
        if not finished:
            marker = {
                "key": key,
                "finished": True,
                "parent": parent_key,
                "init_from": str(parent_ckpt) if parent_ckpt else None,
                "code": code_version(),
                "data": data,
                "config": cfg.to_dict(),
                "train_s": round(time.perf_counter() - start, 2),
            }
            atomic_write_json(marker, run_dir / MARKER)
    summary = {**marker, "metrics": result.metrics, "run_dir": str(run_dir),
               "reused": bool(finished), "wall_s": round(time.perf_counter() - start, 2)}
    return result, summary


def train_cached(
    cfg: TrainConfig,
    cache_dir: str | os.PathLike | None = None,
    init_from: TrainResult | str | os.PathLike | None = None,
    *,
    progress: bool = True,
) -> TrainResult:
    """``train(cfg)`` through the run cache: reuse, continue or train the run keyed by ``cfg``.

    ``cfg`` is first put in canonical form (``canonical_config``). A finished run with the
    same key is loaded, not trained (re-evaluated only when ``cfg.ks`` asks for other K); an
    interrupted one continues where it stopped (``resume=True``); otherwise the run is
    trained, forked from ``init_from`` if given (a cached warm-up: a ``TrainResult``, its
    folder or its checkpoint). Runs live in ``cache_dir/<A>-<B>-s<seed>-e<epochs>-<key>``
    (default: ``default_cache_dir()``).
    """
    return _train_cached(cfg, cache_dir, init_from, progress)[0]


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
    return _train_cached(TrainConfig.from_dict(cfg_dict), cache_dir, parent, progress=False)[1]


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
    """``("clipart", "sketch")`` -> ``"clipart->sketch"``."""
    return f"{pair[0]}->{pair[1]}"


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
        a, b = pair.split("->")
        columns = [f"{d} P@{k}" for d in directions for k in ks]
        names = {"A": a, "B": b}
        header = [f"{names[c[0]]}→{names[c[3]]} P@{c.split('P@')[1]}" for c in columns]
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


def gain_table(results: dict[str, Any], k: int | None = None, baseline: str = "IW",
               directions: Sequence[str] = ("A->B", "B->A")) -> str:
    """A Markdown table of each arm's gain in P@k over ``baseline``, paired by seed (the arms
    of one seed share its warm-up, so the paired differences vary far less than the P@k):
    rows = arms, columns = pair and direction, cells = mean ± sd over the seeds and the
    verdict of ``paired_verdict`` (``RULE``)."""
    k = k if k is not None else _ks(results)[0]
    metric = f"P@{k}"
    header, cells = [], {arm: [] for arm in results["arms"] if arm != baseline}
    for pair in results["pairs"]:
        a, b = pair.split("->")
        names = {"A": a, "B": b}
        for direction in directions:
            header.append(f"{names[direction[0]]}→{names[direction[3]]}")
            base = {r["seed"]: r["metrics"][direction][metric] for r in results["rows"]
                    if r["pair"] == pair and r["arm"] == baseline}
            for arm in cells:
                gains = [r["metrics"][direction][metric] - base[r["seed"]]
                         for r in results["rows"] if r["pair"] == pair and r["arm"] == arm]
                cells[arm].append(f"{_cell(*_mean_sd(gains))} ({paired_verdict(gains)})"
                                  if gains else "")
    lines = [f"Gain in {metric} over {baseline}, paired by seed (mean ± sd; verdict: {RULE})",
             "",
             "| arm | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    lines += [f"| {arm} | " + " | ".join(row) + " |" for arm, row in cells.items()]
    return "\n".join(lines) + "\n"


def plot_ablation(results: dict[str, Any], k: int | None = None,
                  directions: Sequence[str] = DIRECTIONS):
    """Grouped bars of P@k (default: the first K) per direction, one panel per pair, one bar
    per arm, error bars = sd over the seeds. Returns a matplotlib Figure (no pyplot state)."""
    from matplotlib.figure import Figure

    k = k if k is not None else _ks(results)[0]
    means = summarize(results)
    arms = results["arms"]
    fig = Figure(figsize=(7.4, 3.2 * len(means) + 0.4), layout="constrained")
    axes = fig.subplots(len(means), 1, squeeze=False)[:, 0]  # one row per pair: page width
    width = 0.8 / len(arms)
    for ax, (pair, cells) in zip(axes, means.items(), strict=True):
        a, b = pair.split("->")
        labels = [d.replace("A", a).replace("B", b).replace("->", "→") for d in directions]
        for i, arm in enumerate(arms):
            values = [cells[arm][f"{d} P@{k}"] for d in directions]
            x = [j + (i - (len(arms) - 1) / 2) * width for j in range(len(directions))]
            sd = [0.0 if math.isnan(v[1]) else v[1] for v in values]
            ax.bar(x, [v[0] for v in values], width, yerr=sd, capsize=2, label=arm)
        ax.set_xticks(range(len(directions)), labels, fontsize=9)
        ax.set_title(pair.replace("->", " → "), fontsize=10)
        ax.set_ylabel(f"P@{k} (%)")
        ax.axvline(1.5, color="0.7", lw=0.8, ls="--")  # cross-domain | in-domain
    axes[0].legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


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
    fig = plot_ablation(results)
    atomic_write(out / "ablation.png", lambda tmp: fig.savefig(
        tmp, format="png", dpi=120, metadata={"Software": None}))
    return out


def load_results(out: str | os.PathLike) -> dict[str, Any]:
    """The results dict written by ``run_ablation`` (``results.json``, timing re-attached)."""
    out = Path(out).expanduser()
    path = out / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `ucdir-lite ablate --out {out}` first")
    results = json.loads(path.read_text())
    timing = out / "timing.json"
    results["timing"] = json.loads(timing.read_text()) if timing.is_file() else {}
    return results


__all__ = [
    "ARMS",
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
    "plot_ablation",
    "run_ablation",
    "run_key",
    "summarize",
    "train_arm",
    "train_cached",
    "warmup_config",
    "write_results",
]
