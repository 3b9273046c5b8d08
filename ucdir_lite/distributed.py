"""Training on several processes: torchrun, DistributedDataParallel, and what the ranks share.

Launch with PyTorch's own launcher (gloo on the CPU, nccl on cuda, one process per GPU)::

    python -m torch.distributed.run --nproc_per_node 2 -m ucdir_lite train --preset smoke

``setup`` joins the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, ...);
without it (WORLD_SIZE unset or 1) every helper here is a no-op that returns its input, so a
single-process run executes exactly the operations it always did.

How a run on W processes stays the run on one process at the same ``batch_size`` (the
global batch), step for step:

- every rank builds the same global batch (same order, same augmentation draws) and takes
  its ``local_rows`` for the query encoder, whose batch norm is ``GlobalBatchNorm``
  (statistics over the global batch: ``torch.nn.SyncBatchNorm`` refuses CPU tensors);
- the key batch is shuffled by the same permutation on every rank; each rank encodes its
  share (whole shuffling-BN groups, ``key_bn_splits / W`` of them) and ``all_gather_cat``
  puts the keys back together, so every rank writes the same keys into its memory banks;
- the loss terms are computed on the gathered queries (``gather_with_grad``): every rank
  computes the global batch's loss, which makes the batch-level terms (the OT L_DD's batch
  centroids, the supcon L_CW's mean over confident samples) exact, not only per-sample means;
  the gather's backward sums the ranks' gradients and DDP divides by W, so the averaged
  gradient is the single-process gradient;
- k-means, the OT matching, the bank initialisation and the evaluation run on rank 0 and are
  broadcast; only rank 0 writes files; ``check_agree`` verifies every epoch that the ranks'
  banks and encoders are bit-identical.

What is not the same: the float sums (convolutions over half batches, sums over ranks in
another order), so the loss curve follows the single-process one to float noise, as a run on
another thread count does (``tests/test_distributed.py`` states the measured figures); the key
encoder's ``num_batches_tracked`` counters, which nothing reads (the BN momentum is fixed);
and the work: every rank builds the whole global batch, so per-image transforms (real data)
are repeated on every rank, and the others wait while rank 0 clusters and evaluates.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")


# ------------------------------------------------------------------------------- the group


def env_world_size() -> int:
    """The number of processes torchrun started (WORLD_SIZE; 1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group (once; gloo for the CPU, nccl for cuda) when WORLD_SIZE
    > 1, and return this rank's device (``cuda:LOCAL_RANK`` for a bare ``cuda``)."""
    if env_world_size() <= 1:
        return device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_backend_available(backend):
            raise RuntimeError(f"torch.distributed has no {backend} backend in this build; "
                               "run on one process (without torchrun)")
        # the other ranks wait while rank 0 alone clusters and evaluates: allow it an hour
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=1))
    return device


def shutdown() -> None:
    """Leave the process group, if one was joined (the end of ``ucdir-lite train``)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """True when this process is one of several ranks of an initialised group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """The number of ranks (1 when not distributed)."""
    return dist.get_world_size() if active() else 1


def rank() -> int:
    """This process's rank: the group's, or torchrun's RANK before the group is joined."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if env_world_size() > 1 else 0


def is_main() -> bool:
    """True on rank 0, the rank that clusters, evaluates, writes files and shows progress."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op on one process)."""
    if active():
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first, the others after it (e.g. generating the benchmark into
    a shared cache folder once)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def check_sizes(batch_size: int, key_bn_splits: int) -> None:
    """The global batch splits into equal shares: ``batch_size`` images per domain and
    ``key_bn_splits`` shuffling-BN groups of the key batch, both divisible by the ranks."""
    w = world_size()
    if batch_size % w:
        raise ValueError(f"batch_size={batch_size} (the global batch) must be divisible by the "
                         f"{w} processes; choose a multiple of {w}")
    if key_bn_splits % w:
        raise ValueError(f"key_bn_splits={key_bn_splits} must be a multiple of the {w} "
                         "processes (each normalises whole groups of the shuffled key batch); "
                         f"set key_bn_splits={w} (MoCo's per-GPU shuffling BN) or run on "
                         f"{key_bn_splits} processes")


# ------------------------------------------------------------------------------- the batch


def local_rows(n: int) -> slice:
    """The rows of a global batch of ``n`` that this rank takes: equal consecutive shares in
    rank order, so gathering them in rank order gives the global batch back."""
    w, r = world_size(), rank() if active() else 0
    if n % w:
        raise ValueError(f"a batch of {n} cannot be shared equally by {w} processes")
    share = n // w
    return slice(r * share, (r + 1) * share)


@torch.no_grad()
def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` (equal shapes), concatenated along dim 0 in rank order; ``x`` itself
    on one process. No gradient (the keys)."""
    if not active():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``all_gather_cat`` that carries the gradient: its backward sums the ranks' gradients
    and hands each rank its rows. Every rank then computes the same global loss, so each holds
    W times its share of the gradient, and DDP's average over the W ranks gives the exact
    gradient of the global batch's loss. ``x`` itself on one process."""
    if not active():
        return x
    return _GatherRows.apply(x)


class _GatherRows(torch.autograd.Function):
    """Forward: every rank's rows in rank order. Backward: the gradient summed over the ranks
    (each rank's loss depends on every rank's rows), this rank's rows of it."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = slice(rank() * x.shape[0], (rank() + 1) * x.shape[0])
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rows]


class _SumOverRanks(torch.autograd.Function):
    """Forward: the sum of every rank's ``x``. Backward: the gradient summed over the ranks
    (every rank's result depends on every rank's ``x``)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        total = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def broadcast_(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``x`` with rank ``src``'s (in place; no-op on one process)."""
    if active():
        dist.broadcast(x, src)
    return x


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s picklable ``obj`` (plain Python values, e.g. a metrics report) on every
    rank; ``obj`` itself on one process."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def on_main(compute: Callable[[], T]) -> T:
    """``compute()`` on rank 0 only, its result (plain Python values) shared with every rank:
    the other ranks wait instead of repeating it (e.g. the evaluation)."""
    return broadcast_object(compute() if is_main() else None)  # type: ignore[arg-type]


@torch.no_grad()
def average_buffers_(module: nn.Module) -> None:
    """Average the floating-point buffers (batch-norm running statistics) over the ranks, in
    place: the key encoder's per-group running statistics become the mean over all groups,
    as on one process."""
    if not active():
        return
    for buffer in module.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer.div_(world_size())


def fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """A hash of the tensors' bytes (names and values): equal fingerprints, equal tensors."""
    digest = hashlib.sha256()
    for name, t in tensors.items():
        digest.update(name.encode())
        digest.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_agree(**parts: Mapping[str, torch.Tensor]) -> None:
    """Raise RuntimeError unless every rank holds bit-identical tensors in each part (e.g.
    ``banks=..., encoder_k=...``): the replicas must never drift apart."""
    if not active():
        return
    mine = {name: fingerprint(tensors) for name, tensors in parts.items()}
    every: list[Any] = [None] * world_size()
    dist.all_gather_object(every, mine)
    differ = [name for name in mine if len({prints[name] for prints in every}) > 1]
    if differ:
        raise RuntimeError(f"the ranks' {', '.join(differ)} differ: the replicas drifted apart "
                           "(a bug in the distributed training; please report it)")


# ------------------------------------------------------------------------------- the model


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch, summed over the
    ranks (differentiably, so the gradient through the statistics is exact too); a plain
    BatchNorm2d in eval mode or on one process. ``torch.nn.SyncBatchNorm`` does this on GPUs
    only; this one runs on gloo (the CPU) and nccl alike, in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        dims = (0, 2, 3)
        xf = x.float()
        local = torch.cat([xf.sum(dims), xf.new_tensor([x.numel() / x.shape[1]])])
        total = _SumOverRanks.apply(local)
        n = total[-1]
        mean = total[:-1] / n
        centred = xf - mean[None, :, None, None]
        var = _SumOverRanks.apply(centred.square().sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (self.momentum if self.momentum is not None
                          else 1.0 / float(self.num_batches_tracked))
                self.running_mean.lerp_(mean, factor)
                self.running_var.lerp_(var * n / (n - 1), factor)
        return y.to(x.dtype)


def global_batch_norm(module: nn.Module) -> nn.Module:
    """Replace, in place, every BatchNorm2d of ``module`` by a ``GlobalBatchNorm`` that holds
    the very same parameter and buffer tensors: an optimizer built on ``module`` before keeps
    updating them, and the state-dict keys do not change. Returns ``module``."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            synced = GlobalBatchNorm(child.num_features, eps=child.eps, momentum=child.momentum,
                                     affine=child.affine,
                                     track_running_stats=child.track_running_stats,
                                     device="meta")
            for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                setattr(synced, key, getattr(child, key))
            setattr(module, name, synced)
        else:
            global_batch_norm(child)
    return module


def replicate(encoder: nn.Module, device: torch.device) -> nn.Module | None:
    """The query encoder for the forward pass on several ranks: its batch norm made global
    (in place), wrapped in DistributedDataParallel (which averages the gradients over the
    ranks in the backward pass); None on one process (the encoder is used as it is)."""
    if not active():
        return None
    global_batch_norm(encoder)
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(encoder, device_ids=device_ids)


__all__ = ["GlobalBatchNorm", "active", "all_gather_cat", "average_buffers_", "barrier",
           "broadcast_", "broadcast_object", "check_agree", "check_sizes", "env_world_size",
           "fingerprint", "gather_with_grad", "global_batch_norm", "is_main", "local_rows",
           "main_first", "on_main", "rank", "replicate", "setup", "shutdown", "world_size"]
