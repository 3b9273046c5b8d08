"""Training on several processes (``ucdir_lite.distributed``): the helpers are no-ops on one
process, and 2 CPU processes under torchrun (gloo) train the single-process run at the same
global batch.

The end-to-end tests launch ``tests/_ddp_worker.py`` (``ucdir-lite train`` on the smoke
preset, 2 epochs: the warm-up, then one epoch with k-means, the OT matching and every cluster
loss) once as one process and once by ``python -m torch.distributed.run --nproc_per_node 2``,
and compare what each rank recorded.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from ucdir_lite import distributed
from ucdir_lite.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("_ddp_worker.py")
EPOCHS = 2  # warm-up + one cluster epoch

# Tolerances, measured on 2 cores (smoke preset, 1 thread per process, 12 steps):
# - the first step's loss comes before any update: only the forward pass's float sums differ
#   (the two halves of a batch through the convolutions, the gathered keys): measured 4.8e-7;
STEP0_TOL = 1e-5
# - the loss curve: after the first update the float differences grow through training. The
#   largest difference of any term at any step was 5.1e-4 (losses of 2 to 6); the same run on
#   one process with 2 threads instead of 1 differs from it by 5.1e-4 as well: float noise of
#   the same size. A factor 10 of margin;
CURVE_TOL = 5e-3
# - the first step, per parameter tensor: the gradients' |a - b| / |a|, measured 7.5e-3 (the
#   first conv block, where BN's mean subtraction cancels most of the sum; 1 vs 2 threads on
#   one process: the same 7.5e-3), and the update's norm |b| / |a| - 1, measured 1.2e-7 (Adam's
#   first update is lr * sign(g), so its norm, unlike its elements, does not hinge on a
#   gradient element within float noise of 0; with per-image transforms: 6.3e-5). A gradient
#   scaled by the number of ranks, or a parameter the optimiser no longer updates, is off by
#   0.5 or more: a loss curve alone hardly shows either (Adam's steps do not depend on the
#   gradient's scale; frozen BN parameters moved the curve by 2e-3 only).
STEP_TOL = 0.05

needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this build",
)


# ------------------------------------------------------------------------------- one process


def test_helpers_are_no_ops_on_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("RANK", "1")  # a stray RANK without torchrun's WORLD_SIZE: rank 0
    assert not distributed.active()
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    device = torch.device("cpu")
    assert distributed.setup(device) is device and not dist.is_initialized()
    assert distributed.local_rows(6) == slice(0, 6)
    x = torch.randn(6, 3, requires_grad=True)
    assert distributed.all_gather_cat(x) is x
    assert distributed.gather_with_grad(x) is x
    assert distributed.broadcast_(x) is x
    report = {"A->B": {"P@1": 50.0}}
    assert distributed.broadcast_object(report) is report
    assert distributed.on_main(lambda: report) is report
    encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    encoder.train()(torch.randn(4, 3, 8, 8))
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    distributed.average_buffers_(encoder)
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert distributed.replicate(encoder, device) is None
    assert type(encoder[1]) is nn.BatchNorm2d  # untouched
    distributed.check_agree(banks={"A": x})
    distributed.check_sizes(batch_size=15, key_bn_splits=3)
    with distributed.main_first():
        pass
    distributed.barrier()
    distributed.shutdown()


def test_global_batch_norm_keeps_tensors_and_is_batch_norm_on_one_process():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                            nn.Sequential(nn.BatchNorm2d(4)))
    plain = copy.deepcopy(encoder)
    params, buffers = list(encoder.parameters()), list(encoder.buffers())
    keys = list(encoder.state_dict())
    distributed.global_batch_norm(encoder)
    assert isinstance(encoder[1], distributed.GlobalBatchNorm)
    assert isinstance(encoder[3][0], distributed.GlobalBatchNorm)
    # the same tensors: an optimizer built before the conversion still updates them
    assert all(a is b for a, b in zip(params, encoder.parameters(), strict=True))
    assert all(a is b for a, b in zip(buffers, encoder.buffers(), strict=True))
    assert list(encoder.state_dict()) == keys
    x = torch.randn(5, 3, 8, 8)
    for mode in (True, False):
        assert torch.equal(encoder.train(mode)(x), plain.train(mode)(x))
    assert all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(),
                                                 plain.state_dict().values(), strict=True))


def test_sizes_must_split_over_the_ranks(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    distributed.check_sizes(batch_size=16, key_bn_splits=2)
    with pytest.raises(ValueError, match="batch_size=15 .* divisible by the 2 processes"):
        distributed.check_sizes(batch_size=15, key_bn_splits=2)
    with pytest.raises(ValueError, match="key_bn_splits=1 must be a multiple of the 2"):
        distributed.check_sizes(batch_size=16, key_bn_splits=1)


# ------------------------------------------------------------------------------- two processes


def _launch(args: list[str], out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, *args, str(WORKER), str(out), "--epochs", str(EPOCHS)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


@pytest.fixture(scope="module")
def runs(env):
    """What each rank recorded: {"one": rank 0 of 1, "two": [rank 0 of 2, rank 1 of 2]}, and
    the folder holding the run folders run-1 and run-2."""
    out = env / "ddp"
    out.mkdir()
    _launch([], out)  # one process (and the generated data, which the second run reuses)
    _launch(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"], out)

    def load(name: str) -> dict:
        return torch.load(out / name, weights_only=False)

    return {"one": load("rank0-of1.pt"), "two": [load("rank0-of2.pt"), load("rank1-of2.pt")],
            "out": out}


@pytest.mark.slow
@needs_gloo
def test_two_processes_follow_the_single_process_loss_curve(runs):
    one, two = runs["one"]["steps"], runs["two"][0]["steps"]
    assert len(two) == len(one) == EPOCHS * 6  # 96 images per domain, global batch 16
    assert set(one[-1]) == {"iw", "cw", "se", "dd", "total"}  # past the warm-up
    assert abs(two[0]["total"] - one[0]["total"]) <= STEP0_TOL
    worst = max(abs(b[name] - a[name]) for a, b in zip(one, two, strict=True) for name in a)
    assert worst <= CURVE_TOL, f"loss curves differ by {worst:.3g}"


@pytest.mark.slow
@needs_gloo
def test_two_processes_take_the_single_process_first_step(runs):
    one, two = runs["one"], runs["two"][0]
    for name, a in one["grads"].items():
        error = float((two["grads"][name] - a).norm() / a.norm())
        assert error <= STEP_TOL, f"the gradients of {name} differ by {error:.3g} (relative)"
    for name, a in one["update"].items():
        ratio = float(two["update"][name].norm() / a.norm())
        assert abs(ratio - 1) <= STEP_TOL, f"the update of {name} is {ratio:.3g} times as large"


@pytest.mark.slow
@needs_gloo
def test_ranks_hold_the_same_banks_clusters_and_key_encoder(runs):
    rank0, rank1 = runs["two"]
    assert rank0["steps"] == rank1["steps"]  # every rank computes the global batch's loss
    assert len(rank0["clusters"]) == len(runs["one"]["clusters"]) == EPOCHS - 1
    for mine, theirs in zip(rank0["clusters"], rank1["clusters"], strict=True):
        assert mine["matching"] is not None  # the OT L_DD ran
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert all(torch.equal(a, b) for a, b in zip(rank0["banks"], rank1["banks"], strict=True))
    assert all(torch.equal(rank0["encoder_k"][k], v) for k, v in rank1["encoder_k"].items())


@pytest.mark.slow
@needs_gloo
def test_rank_zero_writes_the_run_folder(runs):
    one, two = runs["out"] / "run-1", runs["out"] / "run-2"
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert json.loads((two / "config.json").read_text()) == json.loads(
        (one / "config.json").read_text())  # the config records the global batch
    ckpt = load_checkpoint(two)
    assert ckpt["epoch"] == EPOCHS and len(ckpt["history"]) == EPOCHS
    assert not any(k.startswith("module.") for k in ckpt["encoder_q"])  # not DDP's names
    assert ckpt["encoder_q"].keys() == load_checkpoint(one)["encoder_q"].keys()
