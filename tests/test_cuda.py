"""The GPU path: training with AMP, and the losses, k-means, OT matching and metrics on cuda
agreeing with the CPU. Marked ``cuda`` and skipped without a GPU; ``bench/gpu_check.py``
runs them (``pytest -m cuda``) on a machine that has one."""

from __future__ import annotations

import math

import pytest
import torch

from ucdir_lite.clustering import kmeans
from ucdir_lite.config import get_preset
from ucdir_lite.losses import instance_wise_loss
from ucdir_lite.metrics import precision_at_k
from ucdir_lite.train import train
from ucdir_lite.transport import match_clusters

from _tolerances import gamma

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(autouse=True)
def data_env(tmp_path, monkeypatch):
    monkeypatch.setenv("UCDIR_DATA", str(tmp_path / "data"))


def test_smoke_training_on_cuda_with_amp():
    cfg = get_preset("smoke", device="cuda", amp=True)
    result = train(cfg, None, progress=False)
    assert next(result.encoder.parameters()).device.type == "cuda"
    for entry in result.history:
        assert all(math.isfinite(v) for v in entry["losses"].values()), entry
    assert entry["weights"]["cw"] > 0  # the last epoch trained the cluster losses under AMP
    for direction in ("A->B", "B->A"):
        assert all(0 <= v <= 100 for v in result.metrics[direction].values())


def test_instance_wise_loss_on_cuda_matches_the_cpu():
    g = torch.Generator().manual_seed(0)
    q, k = (torch.nn.functional.normalize(torch.randn(32, 16, generator=g), dim=1)
            for _ in range(2))
    bank = torch.nn.functional.normalize(torch.randn(200, 16, generator=g), dim=1)
    index = torch.randperm(200, generator=g)[:32]
    cpu = instance_wise_loss(q, k, bank, index, tau=0.2)
    gpu = instance_wise_loss(q.cuda(), k.cuda(), bank.cuda(), index.cuda(), tau=0.2)
    # logits are cosines over 16 dims divided by tau; log-sum-exp over 200 terms
    bound = 4 * (gamma(16) / 0.2 + gamma(200)) * (1 + abs(cpu.item()))
    assert abs(gpu.item() - cpu.item()) <= bound


def test_kmeans_on_cuda_finds_the_cpu_partition():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[10.0, 0.0], [0.0, 10.0], [-10.0, 0.0]])
    x = (centres.repeat_interleave(50, 0) + 0.1 * torch.randn(150, 2, generator=g))
    cpu = kmeans(x, 3, seed=0).labels
    gpu = kmeans(x.cuda(), 3, seed=0).labels.cpu()
    # well-separated blobs (gap 10 against spread 0.1): the same partition, up to renaming
    pairs = set(zip(cpu.tolist(), gpu.tolist(), strict=True))
    assert len(pairs) == 3


def test_match_clusters_on_cuda_matches_the_cpu():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=1)
    perm = torch.randperm(8, generator=g)
    b = a[perm] + 0.01 * torch.randn(8, 16, generator=g)
    cpu = match_clusters(a, b)
    gpu = match_clusters(a.cuda(), b.cuda()).cpu()
    assert torch.equal(cpu, torch.argsort(perm))  # b[j] is a noisy copy of a[perm[j]]
    assert torch.equal(gpu, cpu)


def test_precision_at_k_on_cuda_equals_the_cpu():
    # one-hot features: normalised exactly, every score exactly 0 or 1 on both devices, so
    # the rankings (ties broken by the same rule) and P@K are the same
    g = torch.Generator().manual_seed(0)
    query = torch.eye(8)[torch.randint(0, 8, (60,), generator=g)]
    gallery = torch.eye(8)[torch.randint(0, 8, (90,), generator=g)]
    ql, gl = torch.randint(0, 3, (60,), generator=g), torch.randint(0, 3, (90,), generator=g)
    cpu = precision_at_k(query, ql, gallery, gl, ks=(5, 10))
    gpu = precision_at_k(query.cuda(), ql.cuda(), gallery.cuda(), gl.cuda(), ks=(5, 10))
    assert gpu == cpu
