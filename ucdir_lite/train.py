"""The UCDIR training loop: warm-up on L_IW, then the cluster losses (book chapter 6).

The loop, in outline::

    for epoch in range(start, epochs):
        re-seed from (seed, epoch); set the lr and the loss weights (cfg.loss_weights)
        after warm-up: k-means on each domain -> prototypes, pseudo-labels (objective.py)
        for each batch of A and B (data.epoch_batches), two augmented views per image:
            train_step: q = f_theta(view 1), k = f_theta_k(view 2); write k into the banks;
                        L = sum_t w_t(epoch) L_t (objective.step_losses); step; momentum update
        evaluate (every eval_every epochs and at the end); save the checkpoint

The trainer never reads a class label: only the evaluation does (``evaluation.evaluate``).
Where the rest lives: the data and its batches in ``data``, the augmentations in ``augment``,
the loss terms and clusters in ``objective``, checkpoints, resume and fork in ``checkpoint``.

Determinism: the global generators, the batches' order and augmentations and k-means are
re-seeded from (seed, epoch) at the start of every epoch, so a run resumed from its checkpoint
ends exactly where the uninterrupted run would (on the CPU).

Several processes: launched by PyTorch's ``torchrun`` (``python -m torch.distributed.run
--nproc_per_node 2 -m ucdir_lite train ...``; gloo on the CPU, nccl on cuda), the same loop
trains the single-process run at the same global ``batch_size``, to float noise: each rank
builds the global batch and takes its share (``ucdir_lite.distributed`` says how the keys,
banks, loss, clusters and evaluation are shared); rank 0 alone writes the run folder. On one
process every distributed hook is a no-op: the run is bit for bit what it was without them.

Reference: Hu & Lee, ECCV 2022 (arXiv:2207.09721), and its official code.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ucdir_lite import datasets as ds_lib
from ucdir_lite import distributed
from ucdir_lite._lock import folder_lock
from ucdir_lite._progress import tqdm
from ucdir_lite.checkpoint import (
    CHECKPOINT,
    TrainState,
    check_fits,
    check_fork,
    check_resume,
    data_summary,
    load_checkpoint,
    restore,
    to_checkpoint,
)
from ucdir_lite.checkpoint import load_run as load_run  # moved; re-exported from here
from ucdir_lite.config import TrainConfig, get_preset
from ucdir_lite.data import (
    Batch,
    DomainData,
    build_data,
    check_sizes,
    encode,
    epoch_batches,
)
from ucdir_lite.data import data_root as data_root  # moved; re-exported from here
from ucdir_lite.evaluation import evaluate
from ucdir_lite.evaluation import extract_features as extract_features  # moved; re-exported
from ucdir_lite.evaluation import label_selected_best as label_selected_best  # re-exported
from ucdir_lite.model import Encoder, build_model, momentum_update, split_batch_norm
from ucdir_lite.objective import Clusters, cluster_features, step_losses
from ucdir_lite.utils import (
    PART_SUFFIX,
    atomic_torch_save,
    atomic_write_json,
    derive_seed,
    keep_freed_memory,
    resolve_device,
    seed_everything,
)

CHECK_EVERY = 50
"""Steps between the checks that the losses are finite on an accelerator, where each check
waits for the device (on the CPU every step is checked: it costs nothing there)."""


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    """What ``train`` returns.

    - ``encoder``: the momentum (key) encoder in eval mode, the one evaluated (as the
      official code does).
    - ``history``: one dict per epoch (0-based "epoch", "phase", "lr", "weights", "losses",
      "time_s", and "metrics" when evaluated).
    - ``metrics``: the final ``evaluate`` report.
    - ``out_dir``: where config.json, history.json, metrics.json and checkpoint.pt live (or None).
    - ``config``: the run's TrainConfig.
    - ``datasets``: the two evaluation datasets (A, B), with eval transforms.
    """

    encoder: Encoder
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    out_dir: Path | None
    config: TrainConfig
    datasets: tuple[Dataset, Dataset] = field(repr=False, default=())


# ------------------------------------------------------------------------------- entry


def train(
    cfg: TrainConfig | str,
    out_dir: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    init_from: str | os.PathLike | None = None,
    progress: bool = True,
    reevaluate: bool = False,
) -> TrainResult:
    """Train the UCDIR encoder pair on ``cfg.domains`` and evaluate cross-domain retrieval.

    Under ``torchrun`` every process calls ``train`` with the same arguments (the module
    docstring); rank 0 locks and writes ``out_dir``.

    Args:
        cfg: a TrainConfig (or a preset name).
        out_dir: folder for checkpoint.pt (every epoch, atomically), config.json,
            history.json and metrics.json; None keeps everything in memory. One run at a
            time: the folder is locked (``.lock``) while the run writes to it.
        resume: continue the run saved in ``out_dir`` (to the same result as an uninterrupted
            run); a finished run is returned as it is (re-evaluated only if ``ks`` changed);
            with no checkpoint there, start fresh. Without ``resume``, an ``out_dir`` that
            holds a checkpoint is an error (nothing is overwritten).
        init_from: start a NEW run (written to ``out_dir``) from another run's checkpoint:
            its weights, banks, epoch counter, history and (same optimizer type) optimizer
            state, trained on to ``cfg.epochs`` with ``cfg`` (e.g. ablation arms forking a
            shared warm-up). Model and data must match the parent's.
        progress: show a tqdm bar over epochs.
        reevaluate: with ``resume``, evaluate a finished run afresh even if ``ks`` did not
            change (the run cache does when the evaluation code changed).

    Raises:
        TrainingDiverged: a loss became NaN/inf (the last good checkpoint is kept).
        ValueError / FileNotFoundError / FileExistsError: bad config, data or out_dir.
        FolderInUse: another process is running in ``out_dir`` (its PID is named).
        PermissionError: ``out_dir`` is not writable and the run is not finished.
    """
    if isinstance(cfg, str):
        cfg = get_preset(cfg)
    if resume and init_from is not None:
        raise ValueError("pass either --resume (resume=True) or --init-from (init_from=), "
                         "not both")
    out = Path(out_dir).expanduser() if out_dir is not None else None
    if resume and out is None:
        raise ValueError("--resume (resume=True) needs the folder of the run to continue: "
                         "--out (out_dir=)")
    progress = progress and distributed.is_main()
    if out is None:
        return _prepare(cfg, None, resume, init_from, progress, reevaluate)
    if out.is_dir() and not os.access(out, os.W_OK):  # only a finished run can be read here
        return _prepare(cfg, out, resume, init_from, progress, reevaluate, read_only=True)
    if not distributed.is_main():  # rank 0 locks the folder and writes; the others only read
        return _prepare(cfg, out, resume, init_from, progress, reevaluate)
    with folder_lock(out, what="run folder",
                     hint="wait for it to finish, or choose another --out (out_dir=)"):
        _remove_stale_parts(out)
        return _prepare(cfg, out, resume, init_from, progress, reevaluate)


def _prepare(cfg: TrainConfig, out: Path | None, resume: bool,
             init_from: str | os.PathLike | None, progress: bool, reevaluate: bool,
             read_only: bool = False) -> TrainResult:
    """``train`` once its arguments are checked (and ``out``, if any, locked): load the
    checkpoint to resume or fork, the data, the device; then ``_run`` on ``cfg.threads``."""
    ckpt_path = out / CHECKPOINT if out is not None else None
    if ckpt_path is not None and ckpt_path.exists() and not resume:
        raise FileExistsError(
            f"{str(out)!r} already holds a run (checkpoint.pt); pass --resume (resume=True) to "
            "continue it, or choose another --out (out_dir=)"
        )
    ckpt, old_ks = None, None
    if resume and ckpt_path is not None and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        started = ckpt["config"].setdefault("threads", cfg.threads)  # None: an older run
        if cfg.threads is None:  # a resumed run keeps the thread count it started with
            cfg = cfg.replace(threads=started)
        check_resume(ckpt, cfg, ckpt_path)
        check_fits(ckpt, cfg, ckpt_path)
        old_ks = tuple(ckpt["config"]["ks"])
    finished = ckpt is not None and ckpt["epoch"] >= cfg.epochs
    if read_only and not (finished and old_ks == tuple(cfg.ks) and not reevaluate):
        raise PermissionError(
            f"run folder {str(out)!r} is not writable; make it writable (chmod u+w) or "
            "choose another --out (out_dir=)"
        )

    device = distributed.setup(resolve_device(cfg.device))  # joins torchrun's group, if any
    distributed.check_sizes(cfg.batch_size, cfg.key_bn_splits)
    amp = cfg.amp and device.type == "cuda"
    if device.type == "cpu":
        keep_freed_memory()  # no page faults for the step's activations (same numbers)
    workers = cfg.num_workers if cfg.num_workers is not None else (
        ds_lib.default_workers(device.type))
    with distributed.main_first():  # the generated benchmark is written once, by rank 0
        data = build_data(cfg, progress=progress)
    check_sizes(cfg, data)
    for domain in data:
        if domain.images is not None:
            domain.images = domain.images.to(device)
    summary = data_summary(cfg, data)

    if ckpt is None and init_from is not None:
        ckpt = load_checkpoint(init_from)
        check_fork(ckpt, cfg, summary, Path(init_from))
        check_fits(ckpt, cfg, init_from)
    if cfg.threads is None:
        cfg = cfg.replace(threads=torch.get_num_threads())
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, out, ckpt, None if reevaluate else old_ks, init_from, data, summary,
                    device, amp, workers, progress, reevaluate)
    finally:
        torch.set_num_threads(previous_threads)


# ------------------------------------------------------------------------------- the loop


def _run(cfg: TrainConfig, out: Path | None, ckpt: dict[str, Any] | None,
         old_ks: tuple[int, ...] | None, init_from: str | os.PathLike | None,
         data: Sequence[DomainData], summary: dict[str, Any], device: torch.device, amp: bool,
         workers: int, progress: bool, reevaluate: bool = False) -> TrainResult:
    """The body of ``train`` once the config, data and checkpoint are known."""
    ckpt_path = out / CHECKPOINT if out is not None else None
    eval_data = (data[0].eval_data, data[1].eval_data)
    state = new_state(cfg, device, amp, pretrained=ckpt is None)
    if ckpt is None:  # the banks start as a key-encoder pass over each domain (official code)
        state.banks = [encode(state.encoder_k, d, device, cfg.eval_batch_size, workers)[0]
                       if distributed.is_main() else
                       torch.empty(len(d), cfg.feat_dim, dtype=torch.float32, device=device)
                       for d in eval_data]
        for bank in state.banks:  # computed once, by rank 0
            distributed.broadcast_(bank)
    else:
        restore(state, ckpt, device, optimizer=ckpt["config"]["optimizer"] == cfg.optimizer)
        _set_hyperparameters(state.optimizer, cfg)
        if init_from is not None:
            for entry in state.history:
                entry.setdefault("inherited_from", str(init_from))
    state.replica = distributed.replicate(state.encoder_q, device)  # None on one process
    trains = state.epoch < cfg.epochs  # else a finished run: nothing is rewritten
    writes = out is not None and distributed.is_main()
    if writes and trains:
        atomic_write_json(cfg.to_dict(), out / "config.json")

    def run_evaluation() -> dict[str, Any]:  # by rank 0; the others receive its report
        return distributed.on_main(lambda: evaluate(
            state.encoder_k, *eval_data, ks=cfg.ks, device=device,
            batch_size=cfg.eval_batch_size, num_workers=workers))

    metrics: dict[str, Any] = {}
    bar = tqdm(total=cfg.epochs, initial=state.epoch, disable=not progress, desc="train",
               unit="epoch", dynamic_ncols=True)
    while state.epoch < cfg.epochs:
        start = time.perf_counter()
        if ckpt_path is not None and ckpt_path.exists():
            note = f"The last good checkpoint ({state.epoch} epochs) is kept: {ckpt_path}."
        else:
            note = "No checkpoint had been written yet."
        entry = train_epoch(cfg, state, data, device, amp, workers, note)
        entry["time_s"] = time.perf_counter() - start
        state.epoch += 1
        last = state.epoch == cfg.epochs
        if last or (cfg.eval_every and state.epoch % cfg.eval_every == 0):
            start = time.perf_counter()
            metrics = entry["metrics"] = run_evaluation()
            entry["eval_s"] = time.perf_counter() - start
        state.history.append(entry)
        if writes:
            atomic_torch_save(to_checkpoint(cfg, state, summary), ckpt_path)
            atomic_write_json(state.history, out / "history.json")
        # the others wait for rank 0's checkpoint here, and every rank checks the replicas
        distributed.check_agree(banks=dict(zip("AB", state.banks, strict=True)),
                                encoder_q=state.encoder_q.state_dict(),
                                encoder_k=state.encoder_k.state_dict())
        bar.update(1)
        bar.set_postfix(loss=f"{entry['losses']['total']:.3f}")
        if cfg.log_every and distributed.is_main() and (state.epoch % cfg.log_every == 0 or last):
            bar.write(_summary(entry))
    bar.close()

    if not metrics:  # nothing left to train: reuse the last report unless ks changed
        evaluated = [e["metrics"] for e in state.history if "metrics" in e]
        reuse = evaluated and not reevaluate and (old_ks is None or old_ks == tuple(cfg.ks))
        metrics = evaluated[-1] if reuse else run_evaluation()
        if writes and not reuse:  # re-evaluated with other ks: record them
            atomic_write_json(cfg.to_dict(), out / "config.json")
    if writes:
        _record(metrics, out / "metrics.json")
    distributed.barrier()  # the run is complete on disk when any rank returns
    state.encoder_k.eval()
    eval_sets = (data[0].eval_set, data[1].eval_set)
    return TrainResult(state.encoder_k, state.history, metrics, out, cfg, eval_sets)


def train_epoch(cfg: TrainConfig, state: TrainState, data: Sequence[DomainData],
                device: torch.device, amp: bool, workers: int,
                ckpt_note: str = "") -> dict[str, Any]:
    """One epoch (``state.epoch``): re-seed, set lr and weights, cluster, step; its history
    entry (mean loss terms over the steps)."""
    epoch = state.epoch
    seed_everything(derive_seed(cfg.seed, epoch))
    lr = learning_rate(cfg, epoch)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    weights = cfg.loss_weights(epoch)
    clusters = epoch_clusters(cfg, state, data, weights, device, workers)
    names: list[str] = []
    sums: torch.Tensor | None = None  # the terms summed over the steps, on the device: no sync
    steps = 0
    check_every = 1 if device.type == "cpu" else CHECK_EVERY
    state.encoder_q.train()
    state.encoder_k.train()
    for batch in epoch_batches(cfg, data, epoch, device, workers):
        terms = train_step(cfg, state, batch, weights, clusters, amp=amp)
        values = torch.stack([t.detach().float() for t in terms.values()]).double()
        names = list(terms)
        sums = (torch.zeros_like(values) if sums is None else sums) + values
        steps += 1
        if steps % check_every == 0:
            _check_finite(names, sums, epoch, steps, ckpt_note)
    if sums is not None:
        _check_finite(names, sums, epoch, steps, ckpt_note)
    totals = sums.tolist() if sums is not None else []
    return {
        "epoch": epoch,
        "phase": "warmup" if epoch < cfg.warmup_epochs else "cluster",
        "lr": lr,
        "weights": weights,
        "losses": {name: total / steps for name, total in zip(names, totals, strict=True)},
        "steps": steps,
    }


def epoch_clusters(cfg: TrainConfig, state: TrainState, data: Sequence[DomainData],
                   weights: dict[str, float], device: torch.device,
                   workers: int = 0) -> Clusters | None:
    """The epoch's clusters (``objective.cluster_features``) when a cluster loss has a
    weight, else None. The points are, per image, the key encoder's eval-mode feature computed
    afresh (``cluster_on="features"``, the official code) or the memory bank (``"bank"``).
    On several processes rank 0 clusters and broadcasts the result."""
    if not any(weights[t] > 0 for t in ("cw", "se", "dd")):
        return None
    match = weights["dd"] > 0 and cfg.dd_variant == "ot"
    clusters = None
    if distributed.is_main():
        if cfg.cluster_on == "features":
            points = [encode(state.encoder_k, d.eval_data, device, cfg.eval_batch_size,
                             workers)[0] for d in data]
        else:
            points = state.banks
        clusters = cluster_features(cfg, points, state.epoch, match=match)
    return _broadcast_clusters(clusters, cfg, [len(d) for d in data], match, device)


def _broadcast_clusters(clusters: Clusters | None, cfg: TrainConfig, sizes: Sequence[int],
                        match: bool, device: torch.device) -> Clusters:
    """Rank 0's clusters on every rank (``clusters`` itself on one process); the other ranks
    pass None and receive prototypes, pseudo-labels and matching into tensors of known shape."""
    if not distributed.active():
        assert clusters is not None
        return clusters
    if clusters is None:
        k = cfg.num_clusters
        clusters = Clusters(
            tuple(torch.empty(k, cfg.feat_dim, device=device) for _ in sizes),  # type: ignore[arg-type]
            tuple(torch.empty(n, dtype=torch.long, device=device) for n in sizes),  # type: ignore[arg-type]
            torch.empty(k, dtype=torch.long, device=device) if match else None)
    shared = [*clusters.centroids, *clusters.labels]
    for t in shared + ([clusters.matching] if clusters.matching is not None else []):
        distributed.broadcast_(t)
    return clusters


def train_step(cfg: TrainConfig, state: TrainState, batch: Batch, weights: dict[str, float],
               clusters: Clusters | None, amp: bool = False) -> dict[str, torch.Tensor]:
    """One optimiser step on one batch of each domain; returns the loss terms and "total".

    In the order of the official code: the first views of both domains go through the query
    encoder in one pass, the second views through the key encoder (``shuffled_keys``); the
    keys are written into the batch's bank slots; the loss terms are computed against that
    bank and summed with their weights; the query encoder takes an optimiser step and the key
    encoder follows it by ``momentum_update``.

    On several processes (``distributed``) ``batch`` is the global batch on every rank: the
    rank's share goes through the query encoder, the keys are computed by shares and gathered,
    and the loss is that of the global batch's gathered queries.
    """
    (xq_a, xk_a, index_a), (xq_b, xk_b, index_b) = batch
    n_a = xq_a.shape[0]
    rows = distributed.local_rows(n_a)  # this rank's queries: all of them on one process
    x_q = torch.cat([xq_a[rows], xq_b[rows]]).contiguous(memory_format=torch.channels_last)
    x_k = torch.cat([xk_a, xk_b]).contiguous(memory_format=torch.channels_last)
    encoder_q = state.replica if state.replica is not None else state.encoder_q
    with torch.autocast(x_q.device.type, dtype=torch.float16, enabled=amp):
        z_q = encoder_q(x_q)
        z_k = shuffled_keys(state.encoder_k, x_k)
    # the losses see the global batch's queries on every rank (distributed.gather_with_grad)
    q = [distributed.gather_with_grad(z) for z in z_q.float().split(rows.stop - rows.start)]
    k = z_k.float().split(n_a)
    index = (index_a, index_b)
    with torch.no_grad():  # as the official code: the batch's keys enter the bank first
        for d in (0, 1):
            state.banks[d][index[d]] = k[d]
    terms = step_losses(cfg, weights, q, k, index, state.banks, clusters)
    terms["total"] = sum(weights[name] * value for name, value in terms.items())
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(terms["total"]).backward()
    state.scaler.step(state.optimizer)
    state.scaler.update()
    momentum_update(state.encoder_q, state.encoder_k, cfg.m)
    return terms


@torch.no_grad()
def shuffled_keys(encoder_k: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Key features of a batch passed through the key encoder in a random order and put back
    in order: with split batch norm (``model.SplitBatchNorm``) each BN group is then a random
    half of the batch, MoCo's shuffling BN. Draws from torch's global generator (seeded per
    epoch by the trainer).

    On several processes every rank draws the same permutation, encodes its share of the
    shuffled batch (whole BN groups) and gathers the others'; the running statistics are
    averaged over the ranks, so every rank holds the single-process keys and key encoder."""
    perm = torch.randperm(x.shape[0]).to(x.device)
    z = distributed.all_gather_cat(encoder_k(x[perm][distributed.local_rows(x.shape[0])]))
    distributed.average_buffers_(encoder_k)
    return torch.empty_like(z).index_copy_(0, perm, z)


# ------------------------------------------------------------------------------- schedule


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """lr at ``epoch``: constant, or cosine ``lr * (1 + cos(pi * epoch / epochs)) / 2``."""
    if not cfg.cosine:
        return cfg.lr
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))


# ------------------------------------------------------------------------------- helpers


def new_state(cfg: TrainConfig, device: torch.device, amp: bool, pretrained: bool) -> TrainState:
    """Encoders (key = copy of query), optimizer and scaler; the banks are filled later."""
    seed_everything(cfg.seed)
    # channels_last: 2-3x faster convolutions on the CPU, and the tensor-core layout on cuda
    encoder_q = build_model(cfg if pretrained else cfg.replace(weights=None))
    encoder_q = encoder_q.to(device, memory_format=torch.channels_last)
    encoder_k = copy.deepcopy(encoder_q)  # the same weights, head included (official code)
    if cfg.key_bn_splits > 1:  # on W processes each rank normalises 1/W of the groups
        split_batch_norm(encoder_k, cfg.key_bn_splits // distributed.world_size())
    encoder_k.requires_grad_(False)
    params = encoder_q.parameters()
    if cfg.optimizer == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=cfg.lr)
    else:
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
    _set_hyperparameters(optimizer, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    return TrainState(encoder_q, encoder_k, [], optimizer, scaler)


def _set_hyperparameters(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> None:
    """The config's weight decay and momentum (a loaded optimizer state carries its own)."""
    for group in optimizer.param_groups:
        group["weight_decay"] = cfg.weight_decay
        if cfg.optimizer == "sgd":
            group["momentum"] = cfg.momentum


def _check_finite(names: Sequence[str], sums: torch.Tensor, epoch: int, step: int,
                  ckpt: str) -> None:
    """Raise TrainingDiverged if a summed loss term is NaN or infinite (a sum is finite only
    if every value added was)."""
    for name, value in zip(names, sums.tolist(), strict=True):
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"loss term {name!r} became {value} at epoch {epoch} (by step {step}); training "
                f"stopped. {ckpt} Lower lr or the weight/temperature of {name!r}, then resume "
                "or start again."
            )


def _summary(entry: dict[str, Any]) -> str:
    losses = " ".join(f"{k}={v:.4f}" for k, v in entry["losses"].items())
    text = f"epoch {entry['epoch']} [{entry['phase']}] {losses} ({entry['time_s']:.1f}s)"
    if "metrics" in entry:
        ab = entry["metrics"].get("A->B", {})
        text += " A->B " + " ".join(f"{k}={v:.1f}" for k, v in ab.items())
    return text


def _remove_stale_parts(out: Path) -> None:
    """Delete the temporary files of atomic writes that a killed run left in ``out`` (called
    under the folder's lock: no other writer is at work there)."""
    for part in out.glob(f".*{PART_SUFFIX}"):
        if part.is_file():
            part.unlink()


def _record(obj: Any, path: Path) -> None:
    """Write ``obj`` as JSON to ``path`` unless the file holds it already (resuming a
    finished run rewrites nothing)."""
    try:
        if json.loads(path.read_text()) == json.loads(json.dumps(obj)):
            return
    except (OSError, ValueError):
        pass
    atomic_write_json(obj, path)


__all__ = [
    "CHECK_EVERY",
    "TrainResult",
    "TrainingDiverged",
    "epoch_clusters",
    "learning_rate",
    "new_state",
    "shuffled_keys",
    "train",
    "train_epoch",
    "train_step",
]
