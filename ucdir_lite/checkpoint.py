"""A run's state and its ``checkpoint.pt``: save, load (weights only), resume and fork checks.

A checkpoint holds everything a run needs to continue exactly where it stopped: the epoch
counter, the config, a summary of the data, both encoders, the memory banks, the optimizer
and grad-scaler state and the history. ``train(resume=True)`` continues a run from it with
the same config (only ``RESUMABLE`` fields may change); ``train(init_from=...)`` starts a new
run from it (a fork, e.g. the ablation's arms from a shared warm-up) on the same data and model.
Files are read with ``torch.load(weights_only=True)``: tensors and plain containers, nothing
that runs.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ucdir_lite.config import TrainConfig, upgrade
from ucdir_lite.data import DomainData
from ucdir_lite.model import Encoder, build_model
from ucdir_lite.utils import resolve_device

CHECKPOINT = "checkpoint.pt"
FORMAT = "ucdir-lite-checkpoint-v1"
# What every ucdir-lite checkpoint holds besides its format tag ("scaler" may be empty).
CHECKPOINT_KEYS = ("epoch", "config", "data", "encoder_q", "encoder_k", "banks", "optimizer",
                   "history")
# Config fields that may change when resuming a run (they do not change what is learned).
RESUMABLE = ("epochs", "eval_every", "log_every", "device", "num_workers", "eval_batch_size", "ks")
# Config fields that a forked run (init_from) must share with its parent.
ARCH_FIELDS = ("arch", "feat_dim", "width", "hidden_dim", "small_input", "image_size")


@dataclass
class TrainState:
    """What training changes, step by step: the two encoders, the banks, the optimizer."""

    encoder_q: Encoder
    encoder_k: Encoder
    banks: list[torch.Tensor]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    replica: nn.Module | None = None
    """``encoder_q`` wrapped in DistributedDataParallel when the run has several processes
    (``distributed.replicate``; None on one): the query forward pass goes through it, so that
    the gradients are averaged over the ranks. Not saved: it shares ``encoder_q``'s weights."""


def data_summary(cfg: TrainConfig, data: Sequence[DomainData]) -> dict[str, Any]:
    """What a checkpoint records of its data (a fork must match it)."""
    return {
        "domains": list(cfg.domains),
        "classes": [list(d.eval_set.classes) for d in data],
        "sizes": [len(d) for d in data],
        "data_root": cfg.data_root,
        "generated": None if cfg.data_root else {
            "num_classes": cfg.num_classes, "images_per_class": cfg.images_per_class,
            "image_size": cfg.image_size, "data_seed": cfg.data_seed},
    }


def to_checkpoint(cfg: TrainConfig, state: TrainState, data: dict[str, Any]) -> dict[str, Any]:
    """The dict ``checkpoint.pt`` holds (``data``: ``data_summary``)."""
    return {
        "format": FORMAT,
        "epoch": state.epoch,
        "config": cfg.to_dict(),
        "data": data,
        "encoder_q": state.encoder_q.state_dict(),
        "encoder_k": state.encoder_k.state_dict(),
        "banks": [b.detach().cpu() for b in state.banks],
        "optimizer": state.optimizer.state_dict(),
        "scaler": state.scaler.state_dict(),
        "history": state.history,
    }


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a ucdir-lite ``checkpoint.pt`` (tensors and plain containers only:
    ``torch.load(weights_only=True)``). Raises FileNotFoundError / ValueError with the fix."""
    path = Path(path).expanduser()
    if path.is_dir():
        if not (path / CHECKPOINT).is_file():
            raise FileNotFoundError(
                f"{str(path)!r} is a folder without a {CHECKPOINT}; pass a run folder (the "
                f"--out of a train) or its {CHECKPOINT}"
            )
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {str(path)!r} does not exist; pass a run folder or its checkpoint.pt"
        )
    ckpt = _safe_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a ucdir-lite training checkpoint (no format {FORMAT!r}); "
            "for backbone weights use --set weights=PATH (TrainConfig(weights=path)) instead"
        )
    missing = [key for key in CHECKPOINT_KEYS if key not in ckpt]
    if missing:
        raise ValueError(
            f"checkpoint {str(path)!r} is incomplete (no {', '.join(missing)}): it is damaged "
            "or was not written by ucdir-lite train; pass the checkpoint.pt a run wrote"
        )
    ckpt["config"] = upgrade(ckpt["config"])  # the field names of today
    return ckpt


def _safe_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers, nothing that runs."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # torch's text would advise loading it unsafely
        raise ValueError(
            f"{str(path)!r} was refused: it holds Python objects, which loading would run, "
            "not only tensors; it is not a ucdir-lite checkpoint, and only a file you trust "
            "should ever be loaded that way"
        ) from err
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else ""
        raise ValueError(
            f"{str(path)!r} is not a loadable checkpoint ({type(err).__name__}: {first})"
        ) from err


def load_weights(module: nn.Module, state: dict[str, Any], path: str | os.PathLike,
                  cfg: TrainConfig) -> None:
    """``module.load_state_dict(state)``; a mismatch is a ValueError naming ``path``."""
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0] if lines else "")[:300].rstrip(".")
        raise ValueError(
            f"checkpoint {str(path)!r} does not fit the model its config describes "
            f"(arch={cfg.arch}, width={cfg.width}, feat_dim={cfg.feat_dim}): {detail}; it is "
            "damaged or was edited: pass the checkpoint.pt a run wrote"
        ) from err


def check_fits(ckpt: dict[str, Any], cfg: TrainConfig, path: str | os.PathLike) -> None:
    """The checkpoint's encoders load into the model ``cfg`` builds (before any data)."""
    with torch.random.fork_rng(devices=[]):
        model = build_model(cfg.replace(weights=None))
    for name in ("encoder_q", "encoder_k"):
        load_weights(model, ckpt[name], path, cfg)


def restore(state: TrainState, ckpt: dict[str, Any], device: torch.device, *,
            optimizer: bool) -> None:
    """Put a checkpoint's weights, banks, epoch and history (and, with ``optimizer``, the
    optimizer and scaler state) into ``state``."""
    state.encoder_q.load_state_dict(ckpt["encoder_q"])
    state.encoder_k.load_state_dict(ckpt["encoder_k"])
    state.banks = [b.to(device) for b in ckpt["banks"]]
    state.epoch = int(ckpt["epoch"])
    state.history = list(ckpt["history"])
    if optimizer:
        state.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            state.scaler.load_state_dict(ckpt["scaler"])


def load_run(path: str | os.PathLike, device: str = "cpu") -> tuple[Encoder, TrainConfig]:
    """The evaluated (key) encoder of a saved run and its config (for ``ucdir-lite evaluate``)."""
    ckpt = load_checkpoint(path)
    cfg = TrainConfig.from_dict(ckpt["config"])
    encoder = build_model(cfg.replace(weights=None))
    load_weights(encoder, ckpt["encoder_k"], path, cfg)
    # the memory format training used: convolutions then sum in the same order
    return encoder.to(resolve_device(device), memory_format=torch.channels_last).eval(), cfg


def _differences(a: dict[str, Any], b: dict[str, Any], keys: Sequence[str]) -> list[str]:
    return [f"{k}={a.get(k)!r} there vs {b.get(k)!r} here" for k in keys if a.get(k) != b.get(k)]


def check_resume(ckpt: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """``cfg`` may continue the run of ``ckpt``: only ``RESUMABLE`` fields differ."""
    keys = [k for k in cfg.to_dict() if k not in RESUMABLE]
    diffs = _differences(ckpt["config"], cfg.to_dict(), keys)
    if diffs:
        raise ValueError(
            f"cannot resume {str(path)!r} with a different config: {'; '.join(diffs)}. Resume "
            "with the same config (only " + ", ".join(RESUMABLE) + " may change), or start a "
            "new run from it with --init-from (init_from=)"
        )


def check_fork(ckpt: dict[str, Any], cfg: TrainConfig, data: dict[str, Any], path: Path) -> None:
    """``cfg`` may start from ``ckpt``: the same model and data, and epochs left to train."""
    diffs = _differences(ckpt["config"], cfg.to_dict(), ARCH_FIELDS)
    diffs += _differences(ckpt["data"], data, ("domains", "classes", "sizes", "data_root",
                                               "generated"))
    if diffs:
        raise ValueError(
            f"--init-from (init_from=) checkpoint {str(path)!r} is incompatible with this config: "
            f"{'; '.join(diffs)}. Fork only from a run on the same data and model"
        )
    if int(ckpt["epoch"]) >= cfg.epochs:
        raise ValueError(
            f"--init-from (init_from=) checkpoint {str(path)!r} has already trained "
            f"{ckpt['epoch']} epochs; set epochs larger than that (got epochs={cfg.epochs})"
        )


__all__ = ["ARCH_FIELDS", "CHECKPOINT", "CHECKPOINT_KEYS", "FORMAT", "RESUMABLE", "TrainState",
           "check_fits", "check_fork", "check_resume", "data_summary", "load_checkpoint",
           "load_run", "load_weights", "restore", "to_checkpoint"]
