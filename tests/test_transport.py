"""Sinkhorn against POT, and cluster matching on planted permutations."""

import numpy as np
import ot
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from ucdir_lite.transport import match_clusters, sinkhorn

from _tolerances import gamma, sq_distance_error


def _problem(n, m, seed, uniform_b=False):
    g = torch.Generator().manual_seed(seed)
    C = torch.rand(n, m, generator=g, dtype=torch.float64)  # a [0, 1] cost
    a = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    b = (
        torch.full((m,), 1.0, dtype=torch.float64)
        if uniform_b
        else torch.rand(m, generator=g, dtype=torch.float64) + 0.1
    )
    return a / a.sum(), b / b.sum(), C


def _assignment_margin(plan):
    """Plan mass of the best one-to-one matching minus that of the second best."""
    rows, cols = linear_sum_assignment(-plan)
    best, second = plan[rows, cols].sum(), -np.inf
    for i, j in zip(rows, cols, strict=True):  # any other matching avoids one of these pairs
        banned = plan.copy()
        banned[i, j] = -1.0  # below any plan mass: never chosen
        r, c = linear_sum_assignment(-banned)
        second = max(second, banned[r, c].sum())
    return best - second


@pytest.mark.parametrize("k", [5, 30, 65])
@pytest.mark.parametrize("epsilon", [1e-2, 5e-2, 0.5])
def test_sinkhorn_matches_pot(k, epsilon):
    a, b, C = _problem(k, k, seed=k, uniform_b=(k == 30))
    plan, log = sinkhorn(a, b, C, epsilon, return_log=True)
    ref_log, ref_log_info = ot.sinkhorn(
        a.numpy(), b.numpy(), C.numpy(), epsilon, method="sinkhorn_log", stopThr=1e-9, log=True
    )
    ref_plain = ot.sinkhorn(a.numpy(), b.numpy(), C.numpy(), epsilon, stopThr=1e-9)
    assert plan.dtype == torch.float64
    # POT runs the same iterations and stopping rule (n_iter checked below), so the plans
    # differ by float64 rounding only: each update is 1-Lipschitz in the max norm, so at most
    # ~2 n_iter gamma(k, U64) max|C / eps + u + v| ~ 1e-9, far below 1e-6 (both references)
    assert np.abs(plan.numpy() - ref_log).max() < 1e-6
    assert np.abs(plan.numpy() - ref_plain).max() < 1e-6
    assert log["n_iter"] == ref_log_info["niter"] + 1  # POT counts from 0
    # rows: exact after the u update (float64 rounding); columns: the stopping criterion
    # ||plan^T 1 - b|| < tol = 1e-9 (iteration, not rounding); atol 1e-6 is above both
    assert torch.allclose(plan.sum(1), a, rtol=0, atol=1e-6)
    assert torch.allclose(plan.sum(0), b, rtol=0, atol=1e-6)
    assert log["err"] < 1e-9


def test_sinkhorn_rectangular_and_float32():
    a, b, C = _problem(5, 9, seed=1)
    plan = sinkhorn(a.float(), b.float(), C.float(), 0.1, tol=1e-6)  # 1e-9 is below float32
    ref = ot.sinkhorn(a.numpy(), b.numpy(), C.numpy(), 0.1, method="sinkhorn_log")
    assert plan.shape == (5, 9) and plan.dtype == torch.float32
    # the float32 run stops at a column error of tol = 1e-6: the tolerance is that stopping
    # criterion, not rounding (float32 rounding, a few u32 * max|C / 0.1| ~ 1e-6 relative on
    # entries < 1, is no larger; the gap is ~4e-8 here)
    assert np.abs(plan.double().numpy() - ref).max() < 1e-6


def test_sinkhorn_small_epsilon_is_stable_and_near_exact_ot():
    # exp(-C / 1e-3) underflows to 0 for most entries: the plain kernel would divide by 0.
    a, b, C = _problem(20, 20, seed=3)
    plan = sinkhorn(a, b, C, 1e-3, max_iter=20000)
    assert torch.isfinite(plan).all()
    # converged at the stopping criterion (column error < tol = 1e-9, well before max_iter):
    # atol 1e-6 is above it; rtol=0, as a relative slack has no source here
    assert torch.allclose(plan.sum(0), b, rtol=0, atol=1e-6)
    exact = ot.emd2(a.numpy(), b.numpy(), C.numpy())
    # the entropic bias, not rounding (float64, ~1e-15): the gap is ~3e-6 here, 1% the claim
    assert abs(float((plan * C).sum()) - exact) < 0.01 * exact


def test_sinkhorn_potentials_reproduce_plan():
    a, b, C = _problem(6, 4, seed=4)
    eps = 0.2
    plan, log = sinkhorn(a, b, C, eps, return_log=True)
    rebuilt = torch.exp((log["f"][:, None] + log["g"][None, :] - C) / eps)
    # the same exponent, rearranged in float64: it differs by a few u64 * max|C/eps + u + v|
    # (~1e-14), so the entries (< 1) by less: atol 1e-12, and no default rtol=1e-5 on top
    assert torch.allclose(plan, rebuilt, rtol=0, atol=1e-12)


def test_sinkhorn_gradient():
    a, b, C = _problem(4, 3, seed=5)
    C.requires_grad_(True)

    def cost(C):
        return (sinkhorn(a, b, C, 0.5, max_iter=30, tol=0.0, warn=False) * C).sum()

    assert torch.autograd.gradcheck(cost, (C,))


def test_sinkhorn_warns_when_not_converged():
    a, b, C = _problem(10, 10, seed=6)
    with pytest.warns(UserWarning, match="did not converge"):
        sinkhorn(a, b, C, 1e-3, max_iter=5)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a, b, C, e: (a[:-1], b, C, e), "shape"),
        (
            lambda a, b, C, e: (a.clone().index_fill_(0, torch.tensor([0]), -0.1), b, C, e),
            "positive",
        ),
        (lambda a, b, C, e: (a * 2, b, C, e), "same total mass"),
        (lambda a, b, C, e: (a, b, C, 0.0), "epsilon"),
        (lambda a, b, C, e: (a, b, C.clone().fill_(float("nan")), e), "NaN"),
        (lambda a, b, C, e: (a[None], b, C, e), "1-D"),
    ],
)
def test_sinkhorn_rejects_bad_input(change, match):
    a, b, C = _problem(5, 5, seed=7)
    with pytest.raises(ValueError, match=match):
        sinkhorn(*change(a, b, C, 0.1))


@pytest.mark.parametrize("k", [7, 30, 65])
def test_match_clusters_recovers_planted_permutation(k):
    g = torch.Generator().manual_seed(k)
    centroids_a = torch.nn.functional.normalize(torch.randn(k, 32, generator=g), dim=1)
    perm = torch.randperm(k, generator=g)
    centroids_b = centroids_a[perm] + 0.02 * torch.randn(k, 32, generator=g)
    # precondition: each A centroid's planted partner is its nearest B centroid by a margin
    # far wider than the float error of the squared distances: no near-tie in the matching
    partner = torch.argsort(perm)[:, None]  # B[partner[i]] is A[i] plus noise
    d2 = torch.cdist(centroids_a.double(), centroids_b.double()).square()
    gap = d2.scatter(1, partner, float("inf")).min(1).values - d2.gather(1, partner)[:, 0]
    assert gap.min() > 2 * sq_distance_error(centroids_a, centroids_b).max()
    matched, plan = match_clusters(centroids_a, centroids_b, return_plan=True)
    assert matched.dtype == torch.long and matched.shape == (k,)
    assert torch.equal(torch.sort(matched).values, torch.arange(k))  # one-to-one
    assert torch.equal(perm[matched], torch.arange(k))  # B[matched[i]] is A[i]
    # Rows are exact after each update; near a permutation Sinkhorn converges slowly
    # (contraction ~ 1 - exp(-1/epsilon)), so the column marginal is looser after 1000 steps.
    # The plan comes back in float32: k entries rounded (u32 each) and summed in float32, vs
    # 1/k rounded, err by <= gamma(k + 1) * sum = gamma(k + 1) / k; the float64 row error
    # (~1e-16) is negligible. The column bound is the unconverged iteration, not rounding.
    assert torch.allclose(plan.sum(1), torch.full((k,), 1 / k), rtol=0, atol=gamma(k + 1) / k)
    assert torch.allclose(plan.sum(0), torch.full((k,), 1 / k), rtol=0, atol=1e-4)


def test_match_clusters_scale_free_and_no_grad():
    g = torch.Generator().manual_seed(0)
    centroids_a = torch.randn(10, 8, generator=g, requires_grad=True)
    centroids_b = torch.randn(10, 8, generator=g)
    matched = match_clusters(centroids_a, centroids_b)
    assert not matched.requires_grad
    # 100 * x rounds in float32, so the two float64 plans differ by some delta; a matching's
    # total moves by <= k delta, so the matchings agree unless the best is within 2 k delta
    # of the second best (a near-tie): check it is not
    _, plan = match_clusters(centroids_a.double(), centroids_b.double(), return_plan=True)
    scaled = (100 * centroids_a).double(), (100 * centroids_b).double()
    _, plan_100 = match_clusters(*scaled, return_plan=True)
    delta = (plan - plan_100).abs().max().item()
    assert _assignment_margin(plan.numpy()) > 2 * 10 * delta
    assert torch.equal(matched, match_clusters(100 * centroids_a, 100 * centroids_b))


def test_match_clusters_rejects_different_k():
    with pytest.raises(ValueError, match="K_A=5 and K_B=6"):
        match_clusters(torch.randn(5, 4), torch.randn(6, 4))
    with pytest.raises(ValueError, match="D_A=4"):
        match_clusters(torch.randn(5, 4), torch.randn(5, 3))
