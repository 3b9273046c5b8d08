"""The run cache: every training run of the book, content-addressed, reused, continued.

A run's key is the sha256 of its config (``NON_KEY_FIELDS``, which do not change what is
learned, left out), the training code's version (``code_version``: the package version and a
digest of the code, not the docstrings, of ``TRAINING_MODULES``), the data (the generated
benchmark's manifest checksum, or a listing of the real data's files) and, for a forked run,
its parent's key. The run lives in ``<cache>/<A>-<B>-s<seed>-e<epochs>-<key>``; its
``cache.json`` (``runs.MARKER``) marks it finished.

``train_cached`` returns a finished run with the same key without training, continues an
interrupted one (``train(..., resume=True)``) and trains the rest. Evaluation does not decide
what is learned: its code (``EVAL_MODULES``) has its own version (``eval_version``), recorded
in the marker, and a finished run whose evaluation version differs is re-evaluated from its
checkpoint, not retrained. ``cached_run`` looks a run up without training anything.
The book's notebooks train through this cache, so notebook 06's ablation reuses their runs.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

import ucdir_lite
from ucdir_lite import glyphs
from ucdir_lite._lock import folder_lock
from ucdir_lite.config import TrainConfig
from ucdir_lite.data import data_root
from ucdir_lite.runs import MARKER, default_cache_dir
from ucdir_lite.train import CHECKPOINT, TrainResult, train
from ucdir_lite.utils import atomic_write_json

# Config fields that do not change what is learned: left out of the cache key (a cached run
# is re-evaluated, not retrained, when ``ks`` changes; see train(resume=True)).
NON_KEY_FIELDS = ("ks", "device", "num_workers", "eval_batch_size", "log_every", "data_root")
TRAINING_MODULES = ("train", "objective", "losses", "clustering", "transport", "model", "data",
                    "datasets", "augment", "checkpoint", "config", "utils", "distributed")
"""Modules whose code decides what a run learns (``code_version``, part of the key)."""
EVAL_MODULES = ("evaluation", "metrics")
"""Modules whose code decides only a run's report (``eval_version``, not part of the key)."""


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


def _version(modules: Iterable[str]) -> str:
    digest = hashlib.sha256()
    package = Path(ucdir_lite.__file__).parent
    for name in modules:
        digest.update(_code_digest((package / f"{name}.py").read_text()))
    return f"{ucdir_lite.__version__}+{digest.hexdigest()[:12]}"


def code_version() -> str:
    """The package version plus a digest of the code (not the docstrings or comments) of the
    modules that train (``TRAINING_MODULES``)."""
    return _version(TRAINING_MODULES)


def eval_version() -> str:
    """The package version plus a digest of the code of the evaluation (``EVAL_MODULES``)."""
    return _version(EVAL_MODULES)


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


def _evaluated_now(marker: dict[str, Any]) -> bool:
    """The run's metrics come from the current evaluation code."""
    return marker.get("eval") == eval_version()


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
    """``cfg`` with its thread count fixed (None: this process's count): the count is part
    of the run's key, since the trained weights depend on it."""
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
    if marker is None or not _evaluated_now(marker):
        return None
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not _has_metrics(metrics, cfg.ks):
        return None
    return {**marker, "metrics": metrics, "run_dir": str(run_dir)}


def train_cached_summary(cfg: TrainConfig, cache_dir: str | os.PathLike | None,
                         init_from: TrainResult | str | os.PathLike | None,
                         progress: bool) -> tuple[TrainResult, dict[str, Any]]:
    """``train_cached`` and the run's summary: its marker plus ``metrics``, ``run_dir``,
    ``reused`` (no training), ``reevaluated`` and ``wall_s``."""
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
        reevaluate = finished and not _evaluated_now(marker)
        start = time.perf_counter()
        if (run_dir / CHECKPOINT).is_file():  # finished (no training) or interrupted (continues)
            result = train(cfg, run_dir, resume=True, progress=progress, reevaluate=reevaluate)
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
        if reevaluate or not finished:
            marker = {**marker, "eval": eval_version()}
            atomic_write_json(marker, run_dir / MARKER)
    summary = {**marker, "metrics": result.metrics, "run_dir": str(run_dir),
               "reused": bool(finished), "reevaluated": bool(reevaluate),
               "wall_s": round(time.perf_counter() - start, 2)}
    return result, summary


def train_cached(
    cfg: TrainConfig,
    cache_dir: str | os.PathLike | None = None,
    init_from: TrainResult | str | os.PathLike | None = None,
    *,
    progress: bool = True,
) -> TrainResult:
    """``train(cfg)`` through the run cache: reuse, continue or train the run keyed by ``cfg``.

    A finished run with the same key is loaded, not trained (re-evaluated only when
    ``cfg.ks`` asks for other K, or when the evaluation code changed: ``eval_version``); an
    interrupted one continues where it stopped (``resume=True``); otherwise the run is
    trained, forked from ``init_from`` if given (a cached warm-up: a ``TrainResult``, its
    folder or its checkpoint). Runs live in ``cache_dir/<A>-<B>-s<seed>-e<epochs>-<key>``
    (default: ``default_cache_dir()``).
    """
    return train_cached_summary(cfg, cache_dir, init_from, progress)[0]


__all__ = ["EVAL_MODULES", "NON_KEY_FIELDS", "TRAINING_MODULES", "cached_run", "code_version",
           "data_checksum", "default_cache_dir", "eval_version", "run_key",
           "train_cached", "train_cached_summary"]
