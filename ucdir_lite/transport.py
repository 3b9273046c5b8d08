r"""Entropic optimal transport (Sinkhorn) and one-to-one cluster matching (book chapter 5).

Cluster indices are arbitrary in each domain, so before the distance-of-distance loss can
compare the two domains' centroid geometry, cluster ``i`` of domain A must be paired with a
cluster ``pi(i)`` of domain B. We solve the entropic OT problem

.. math::

    \min_{P \ge 0}\; \langle P, C\rangle - \epsilon H(P)
    \quad\text{s.t.}\quad P\mathbf{1} = a,\;\; P^\top\mathbf{1} = b,

    H(P) = -\sum_{ij} P_{ij}\,(\log P_{ij} - 1),

by the Sinkhorn algorithm (``P`` is ``plan`` in the code), then round the plan to a
permutation with the Hungarian algorithm.

References:
    M. Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport", NeurIPS 2013.
    G. Peyré and M. Cuturi, "Computational Optimal Transport", 2019, §4.4 (log-domain updates).
    POT, ``ot.bregman.sinkhorn_log`` (the reference implementation used in the tests).
"""

from __future__ import annotations

import math
import warnings

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

__all__ = ["sinkhorn", "match_clusters"]


def _check_sinkhorn_inputs(a: Tensor, b: Tensor, C: Tensor, epsilon: float) -> None:
    if C.dim() != 2:
        raise ValueError(f"C must be a 2-D cost matrix (n, m); got shape {tuple(C.shape)}.")
    if a.dim() != 1 or b.dim() != 1:
        raise ValueError(
            f"a and b must be 1-D histograms; got shapes {tuple(a.shape)} and {tuple(b.shape)}."
        )
    if (a.numel(), b.numel()) != tuple(C.shape):
        raise ValueError(
            f"C must have shape (len(a), len(b)) = ({a.numel()}, {b.numel()}); "
            f"got {tuple(C.shape)}."
        )
    if a.numel() == 0 or b.numel() == 0:
        raise ValueError("a and b must not be empty.")
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be a finite number > 0; got {epsilon!r}.")
    if not bool(torch.isfinite(C).all()):
        raise ValueError("C contains NaN or inf; pass a finite cost matrix.")
    for name, h in (("a", a), ("b", b)):
        if not bool((h > 0).all()) or not bool(torch.isfinite(h).all()):
            raise ValueError(
                f"{name} must be finite and strictly positive (min {h.min().item():.3g}); "
                "drop zero-mass points before calling sinkhorn."
            )
    mass_a, mass_b = a.sum().item(), b.sum().item()
    if abs(mass_a - mass_b) > 1e-6 * max(mass_a, mass_b):
        raise ValueError(
            f"a and b must have the same total mass; got sum(a)={mass_a:.9g}, "
            f"sum(b)={mass_b:.9g}. Normalise both, e.g. a / a.sum()."
        )


def sinkhorn(
    a: Tensor,
    b: Tensor,
    C: Tensor,
    epsilon: float,
    max_iter: int = 1000,
    tol: float = 1e-9,
    *,
    return_log: bool = False,
    warn: bool = True,
) -> Tensor | tuple[Tensor, dict]:
    r"""Entropic OT plan by log-domain Sinkhorn iterations.

    Solves ``min_plan <plan, C> - epsilon * H(plan)`` subject to ``plan 1 = a`` and
    ``plan^T 1 = b``. The solution is ``plan_ij = exp(u_i + v_j - C_ij / epsilon)``; with
    ``M = -C / epsilon`` the log-scalings alternate (Peyré & Cuturi, Remark 4.23): first the
    columns of the plan are made to sum to ``b``, then its rows to ``a``,

    .. math::

        v_j \leftarrow \log b_j - \operatorname{logsumexp}_i (M_{ij} + u_i),

        u_i \leftarrow \log a_i - \operatorname{logsumexp}_j (M_{ij} + v_j).

    Every 10 iterations (starting with the first) the column marginal, the one that is not
    exact after the ``u`` update, is compared with ``b``; iteration stops when
    ``||plan^T 1 - b||_2 < tol``. This is POT's ``ot.sinkhorn(a, b, C, reg=epsilon,
    method="sinkhorn_log", numItermax=max_iter, stopThr=tol)``: same kernel ``exp(-C/epsilon)``,
    same update order and stopping rule. ``logsumexp`` keeps it stable for small ``epsilon``,
    where the plain kernel ``exp(-C/epsilon)`` would underflow. The same code runs on CPU and
    GPU; pass float64 tensors for tight tolerances. Autograd can differentiate through the
    unrolled iterations.

    Args:
        a: (n,) source histogram, strictly positive.
        b: (m,) target histogram, strictly positive, same total mass as ``a``.
        C: (n, m) finite cost matrix.
        epsilon: entropic regularisation (> 0), in the units of ``C``.
        max_iter: maximum number of iterations.
        tol: stopping threshold on the L2 error of the column marginal.
        return_log: also return ``{"n_iter", "err", "f", "g"}``, where ``f = epsilon * u``
            and ``g = epsilon * v`` are the dual potentials (units of ``C``).
        warn: warn when ``max_iter`` is reached before ``tol``.

    Returns:
        The (n, m) transport plan in the common dtype of the inputs (and the log dict if
        ``return_log``).
    """
    C = torch.as_tensor(C)
    if not C.is_floating_point():
        C = C.to(torch.get_default_dtype())
    a = torch.as_tensor(a, dtype=C.dtype, device=C.device)
    b = torch.as_tensor(b, dtype=C.dtype, device=C.device)
    _check_sinkhorn_inputs(a, b, C, epsilon)
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1; got {max_iter}.")

    M = -C / epsilon
    log_a, log_b = a.log(), b.log()
    u = torch.zeros_like(a)
    v = torch.zeros_like(b)
    err = math.inf
    n_iter = 0
    for it in range(max_iter):
        v = log_b - torch.logsumexp(M + u[:, None], dim=0)
        u = log_a - torch.logsumexp(M + v[None, :], dim=1)
        n_iter = it + 1
        if it % 10 == 0:
            col_marginal = torch.logsumexp(M + u[:, None], dim=0).add(v).exp()
            err = torch.linalg.vector_norm(col_marginal - b).item()
            if err < tol:
                break
    else:
        if warn:
            warnings.warn(
                f"sinkhorn did not converge: marginal error {err:.3g} >= tol {tol:.3g} after "
                f"{max_iter} iterations; raise max_iter or epsilon.",
                stacklevel=2,
            )
    plan = (M + u[:, None] + v[None, :]).exp()
    if return_log:
        return plan, {"n_iter": n_iter, "err": err, "f": epsilon * u, "g": epsilon * v}
    return plan


@torch.no_grad()
def match_clusters(
    centroids_a: Tensor,
    centroids_b: Tensor,
    epsilon: float = 0.05,
    return_plan: bool = False,
    *,
    max_iter: int = 1000,
) -> Tensor | tuple[Tensor, Tensor]:
    """One-to-one matching ``pi`` of A's clusters to B's clusters by entropic OT (book chapter 5).

    Cost ``C_ij = ||c^A_i - c^B_j||_2^2``, divided by its maximum so that ``C`` lies in
    ``[0, 1]`` and ``epsilon`` is relative to the largest squared distance (scale-free; for
    L2-normalised centroids the unscaled cost is at most 4). Uniform marginals ``1/K``; the
    plan comes from :func:`sinkhorn` in float64 (no convergence warning: only the rounding
    below is used). The plan is rounded to a permutation by the Hungarian algorithm on
    ``-plan`` (the matching of largest total plan mass), so ``pi`` is one-to-one even when the
    plan is blurred by a large ``epsilon``. No gradient flows through the matching.

    Args:
        centroids_a: (K, D) centroids ``c^A`` of domain A.
        centroids_b: (K, D) centroids ``c^B`` of domain B (same K and D).
        epsilon: entropic regularisation relative to the max-scaled cost.
        return_plan: also return the (K, K) plan (rows: A, columns: B; each sums to 1/K).
        max_iter: Sinkhorn iteration cap.

    Returns:
        The matching, a (K,) LongTensor: ``perm[i]`` is the cluster of B matched to cluster
        ``i`` of A (and the plan, in the centroids' dtype, if ``return_plan``).
    """
    if centroids_a.dim() != 2 or centroids_b.dim() != 2:
        raise ValueError(
            "centroids must be 2-D (K, D); got shapes "
            f"{tuple(centroids_a.shape)} and {tuple(centroids_b.shape)}."
        )
    if centroids_a.shape[0] != centroids_b.shape[0]:
        raise ValueError(
            "match_clusters needs the same number of clusters in both domains; got "
            f"K_A={centroids_a.shape[0]} and K_B={centroids_b.shape[0]}. "
            "Cluster both domains with the same k."
        )
    if centroids_a.shape[1] != centroids_b.shape[1]:
        raise ValueError(
            f"centroid dimensions differ: D_A={centroids_a.shape[1]}, D_B={centroids_b.shape[1]}."
        )
    if centroids_a.shape[0] == 0:
        raise ValueError("match_clusters needs at least one cluster (K >= 1).")
    k = centroids_a.shape[0]
    ca = centroids_a.detach().to(torch.float64)
    cb = centroids_b.detach().to(torch.float64)
    if not bool(torch.isfinite(ca).all() and torch.isfinite(cb).all()):
        raise ValueError("centroids contain NaN or inf.")
    C = torch.cdist(ca, cb, compute_mode="donot_use_mm_for_euclid_dist").square()
    C_max = C.max()
    if C_max > 0:
        C = C / C_max
    marginal = torch.full((k,), 1.0 / k, dtype=torch.float64, device=C.device)
    plan = sinkhorn(marginal, marginal, C, epsilon, max_iter=max_iter, warn=False)
    _, cols = linear_sum_assignment(-plan.cpu().numpy())
    perm = torch.as_tensor(cols, dtype=torch.long, device=centroids_a.device)
    if return_plan:
        return perm, plan.to(centroids_a.dtype)
    return perm
