"""Runs ``ucdir-lite train`` (``cli.main``) on the smoke preset and records, per rank, what
tests/test_distributed.py compares: every step's loss terms, the first step's gradients and update,
every epoch's clusters and the final banks. Launched as one process, or by torchrun:

    python tests/_ddp_worker.py OUT [--set KEY=VALUE ...]
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/_ddp_worker.py OUT

Writes OUT/rank<r>-of<W>.pt; the run folder is OUT/run-<W>.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ucdir_lite import cli, distributed
from ucdir_lite import train as train_mod


def main(out: Path, extra: list[str]) -> int:
    steps: list[dict[str, float]] = []
    grads: dict[str, torch.Tensor] = {}
    update: dict[str, torch.Tensor] = {}
    clusters: list[dict[str, torch.Tensor]] = []
    states = []
    train_step, epoch_clusters = train_mod.train_step, train_mod.epoch_clusters

    def recorded_step(cfg, state, batch, weights, found, amp=False):
        before = {n: p.detach().clone() for n, p in state.encoder_q.named_parameters()}
        terms = train_step(cfg, state, batch, weights, found, amp=amp)
        steps.append({name: float(value.detach()) for name, value in terms.items()})
        if not grads:  # the first step's gradients and the update they made
            for n, p in state.encoder_q.named_parameters():
                grads[n], update[n] = p.grad.clone(), p.detach() - before[n]
        states[:] = [state]
        return terms

    def recorded_clusters(*args, **kwargs):
        found = epoch_clusters(*args, **kwargs)
        if found is not None:
            clusters.append({"centroids_a": found.centroids[0], "centroids_b": found.centroids[1],
                             "labels_a": found.labels[0], "labels_b": found.labels[1],
                             "matching": found.matching})
        return found

    train_mod.train_step, train_mod.epoch_clusters = recorded_step, recorded_clusters
    world = distributed.env_world_size()
    code = cli.main(["train", "--preset", "smoke", "--out", str(out / f"run-{world}"),
                     "--no-progress", "--set", "device=cpu", "--set", "threads=1", *extra])
    state = states[0]
    torch.save({"steps": steps, "grads": grads, "update": update, "clusters": clusters,
                "banks": [b.clone() for b in state.banks],
                "encoder_k": state.encoder_k.state_dict()},
               out / f"rank{distributed.rank()}-of{world}.pt")
    return code


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2:]))
