"""Clustering: k-means on memory-bank features and soft assignments to centroids (book chapter 3).

Each domain's centroids are initialised per epoch by k-means on that domain's features
(the official code uses faiss, 20 iterations, 5 restarts); within a batch the soft
assignment ``p_ij`` and the soft-weighted centroid estimate ``c_j`` follow
Hu & Lee 2022 (book chapter 3).

References:
    S. Lloyd, "Least squares quantization in PCM", IEEE Trans. Inf. Theory, 1982.
    D. Arthur and S. Vassilvitskii, "k-means++: The Advantages of Careful Seeding", SODA 2007.
    C. Hu and G. H. Lee, "Feature Representation Learning for Unsupervised Cross-domain
    Image Retrieval", ECCV 2022, §3.2.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["KMeansResult", "cosine_logits", "kmeans", "soft_assign", "soft_centroids"]


SEED_POINTS_PER_CLUSTER = 64
"""k-means++ seeds from a random subsample of at most this many points per cluster."""


class KMeansResult(NamedTuple):
    """Result of :func:`kmeans`: centroids (k, D), labels (N,) in ``[0, k)``, inertia."""

    centroids: Tensor
    """(k, D) cluster centres (plain means of their points)."""
    labels: Tensor
    """(N,) the cluster of each point, in ``[0, k)``."""
    inertia: float
    """Sum of squared distances of the points to their centroids."""


def _nearest(x: Tensor, centroids: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Index of and squared distance to the nearest centroid, ``chunk_size`` rows at a time.

    The nearest centroid is found with ``||x_i - c_j||^2 = ||x_i||^2 - 2 x_i.c_j + ||c_j||^2``
    (one matrix product), whose cancellation leaves an error of about ``eps * ||x_i||^2``;
    the distance to the chosen centroid is then recomputed directly
    as ``sum_d (x_id - c_jd)^2``, which is exactly 0 for a point on its centroid and accurate to
    ``eps`` relative otherwise. Memory stays ``chunk_size x k``.
    """
    c_sq = centroids.square().sum(1)
    labels, dists = [], []
    for xc in x.split(chunk_size):
        partial = torch.addmm(c_sq[None, :], xc, centroids.T, alpha=-2.0)  # ||c||^2 - 2 x.c
        j = partial.argmin(dim=1)
        labels.append(j)
        dists.append((xc - centroids[j]).square().sum(1))
    return torch.cat(labels), torch.cat(dists)


def _sq_dist_to(x: Tensor, x_sq: Tensor, points: Tensor) -> Tensor:
    """(t, N) squared distances from a few ``points`` (t, D) to every row of ``x``."""
    d = torch.addmm(x_sq[None, :], points, x.T, alpha=-2.0)
    return d.add_(points.square().sum(1)[:, None]).clamp_min_(0.0)


def _kmeans_plus_plus(x: Tensor, x_sq: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Greedy k-means++ seeding: each new centre is the best of ``2 + log k`` candidates.

    Candidates are drawn with probability proportional to ``D(x)^2``, the squared distance to
    the nearest centre chosen so far; the one that lowers the total ``sum D(x)^2`` most wins
    (the greedy variant of Arthur & Vassilvitskii's seeding that scikit-learn uses).
    """
    n = x.shape[0]
    n_trials = 2 + int(math.log(k))
    first = torch.randint(n, (1,), generator=generator, device=x.device)
    centers = [x[first]]
    closest = _sq_dist_to(x, x_sq, x[first])[0]
    closest[first] = 0.0  # exactly: a chosen centre is never drawn again
    for _ in range(1, k):
        cumulative = closest.double().cumsum(0)
        total = cumulative[-1]
        if total <= 0:  # every point sits on a centre: draw uniformly
            cand = torch.randint(n, (n_trials,), generator=generator, device=x.device)
        else:
            r = torch.rand(n_trials, generator=generator, device=x.device, dtype=torch.float64)
            cand = torch.searchsorted(cumulative, r * total, right=True).clamp_(max=n - 1)
        trial = torch.minimum(closest[None, :], _sq_dist_to(x, x_sq, x[cand]))
        trial[torch.arange(len(cand), device=x.device), cand] = 0.0  # each candidate itself
        best = trial.sum(1).argmin()
        closest = trial[best]
        centers.append(x[cand[best]][None])
    return torch.cat(centers)


def _lloyd(
    x: Tensor, centroids: Tensor, n_iter: int, chunk_size: int
) -> KMeansResult:
    """Up to ``n_iter`` Lloyd steps (mean of each cluster, then re-assign), stopping at a
    fixed point. An empty cluster is re-seeded at the point farthest from its centroid."""
    k = centroids.shape[0]
    labels, dist = _nearest(x, centroids, chunk_size)
    for _ in range(n_iter):
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        centroids = sums / counts.clamp_min(1)[:, None].to(x.dtype)
        empty = (counts == 0).nonzero()[:, 0]
        if empty.numel() > 0:
            far = dist.argsort(descending=True)[: empty.numel()]
            centroids[empty] = x[far]
        new_labels, dist = _nearest(x, centroids, chunk_size)
        converged = empty.numel() == 0 and torch.equal(new_labels, labels)
        labels = new_labels
        if converged:
            break
    return KMeansResult(centroids, labels, float(dist.double().sum()))


def kmeans(
    x: Tensor,
    k: int,
    n_iter: int = 20,
    n_restarts: int = 5,
    seed: int = 0,
    *,
    init: Tensor | None = None,
    chunk_size: int | None = None,
) -> KMeansResult:
    """Euclidean k-means (Lloyd) with k-means++ seeding and restarts.

    Minimises the inertia ``sum_i min_j ||x_i - c_j||^2``. Each restart seeds with greedy
    k-means++ from a ``torch.Generator`` seeded with ``seed`` (on ``x``'s device), drawing
    from a random subsample of ``SEED_POINTS_PER_CLUSTER * k`` points when ``x`` is larger
    (faiss likewise trains on a subsample), runs ``n_iter`` Lloyd iterations on all points
    (stopping early at a fixed point) and the restart with the lowest inertia is kept. A
    cluster that becomes empty is re-seeded at the point farthest from its centroid.
    Distances are computed in chunks, so memory is ``O(chunk_size * k)`` beyond ``x``.
    Centroids are plain means (not L2-normalised; the official code normalises them after
    faiss k-means: ``F.normalize(result.centroids, dim=1)``).

    Args:
        x: (N, D) features.
        k: number of clusters, ``1 <= k <= N``.
        n_iter: Lloyd iterations per restart (0: return the seeding).
        n_restarts: number of seedings tried; the best inertia is kept.
        seed: seed of the k-means++ draws.
        init: optional (k, D) initial centroids (e.g. last epoch's); then a single run.
        chunk_size: rows of ``x`` per distance block (default: about 4M distances a block).

    Returns:
        KMeansResult(centroids (k, D), labels (N,) LongTensor, inertia float).
    """
    x = torch.as_tensor(x)
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty 2-D tensor (N, D); got shape {tuple(x.shape)}.")
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    n = x.shape[0]
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be an integer >= 1; got {k!r}.")
    if k > n:
        raise ValueError(
            f"k={k} clusters need at least k points, but x has N={n} rows; "
            "lower k or cluster more points."
        )
    if n_iter < 0 or n_restarts < 1:
        raise ValueError(f"need n_iter >= 0 and n_restarts >= 1; got {n_iter}, {n_restarts}.")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or inf; k-means needs finite features.")
    if chunk_size is None:
        chunk_size = max(1, (1 << 22) // k)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}.")
    x = x.detach()
    x_sq = x.square().sum(1)

    if init is not None:
        init = torch.as_tensor(init, dtype=x.dtype, device=x.device)
        if init.shape != (k, x.shape[1]):
            raise ValueError(
                f"init must have shape (k, D) = ({k}, {x.shape[1]}); got {tuple(init.shape)}."
            )
        best = _lloyd(x, init.clone(), n_iter, chunk_size)
    else:
        generator = torch.Generator(device=x.device).manual_seed(seed)
        best = None
        n_seed = SEED_POINTS_PER_CLUSTER * k
        for _ in range(n_restarts):
            if n > n_seed:  # seed from a subsample: the greedy draws cost O(N k log k) flops
                sub = torch.randperm(n, generator=generator, device=x.device)[:n_seed]
                seeds = _kmeans_plus_plus(x[sub], x_sq[sub], k, generator)
            else:
                seeds = _kmeans_plus_plus(x, x_sq, k, generator)
            result = _lloyd(x, seeds, n_iter, chunk_size)
            if best is None or result.inertia < best.inertia:
                best = result
    n_used = int(torch.bincount(best.labels, minlength=k).gt(0).sum())
    if n_used < k:
        warnings.warn(
            f"kmeans: only {n_used} of k={k} clusters are non-empty (x has too few distinct "
            "points); lower k.",
            stacklevel=2,
        )
    return best


def _check_z_centroids(z: Tensor, centroids: Tensor) -> None:
    if z.dim() != 2 or centroids.dim() != 2 or z.shape[1] != centroids.shape[1]:
        raise ValueError(
            "z must be (N, D) and centroids (K, D) with the same D; got "
            f"{tuple(z.shape)} and {tuple(centroids.shape)}."
        )


def cosine_logits(z: Tensor, centroids: Tensor, tau: float) -> Tensor:
    """``sim(z_i, c_j) / tau``, (N, K), with ``sim`` the cosine similarity: the logits of
    :func:`soft_assign`. No checks: callers check their inputs once, at their entry."""
    return F.normalize(z, dim=1) @ F.normalize(centroids, dim=1).T / tau


def soft_assign(z: Tensor, centroids: Tensor, tau: float = 0.1) -> Tensor:
    r"""Soft cluster assignment (Hu & Lee 2022; book chapter 3).

    .. math::
        p_{ij} = \frac{\exp(\mathrm{sim}(z_i, c_j)/\tau)}{\sum_{k}\exp(\mathrm{sim}(z_i, c_k)/\tau)}

    with ``sim`` the cosine similarity (both sides are L2-normalised here).

    Args:
        z: (N, D) features.
        centroids: (K, D) centroids ``c_j``.
        tau: temperature (> 0); smaller is sharper.

    Returns:
        (N, K) soft assignments ``p``, rows sum to 1; differentiable in ``z`` and ``centroids``.
    """
    _check_z_centroids(z, centroids)
    if not tau > 0:
        raise ValueError(f"tau must be > 0; got {tau!r}.")
    return torch.softmax(cosine_logits(z, centroids, tau), dim=1)


def soft_centroids(z: Tensor, p: Tensor, eps: float = 1e-8) -> Tensor:
    r"""Soft-weighted centroids (book chapter 3): the batch estimate of each cluster's centre.

    .. math::
        c_j = \frac{\sum_i p_{ij}\, z_i}{\sum_i p_{ij} + \epsilon}

    Args:
        z: (N, D) features.
        p: (N, K) soft assignments, e.g. from :func:`soft_assign`.
        eps: keeps an (almost) unused cluster finite.

    Returns:
        (K, D) soft centroids, not re-normalised; differentiable in ``z`` and ``p``.
    """
    if z.dim() != 2 or p.dim() != 2 or z.shape[0] != p.shape[0]:
        raise ValueError(
            "z must be (N, D) and p (N, K) with the same N; got "
            f"{tuple(z.shape)} and {tuple(p.shape)}."
        )
    return (p.T @ z) / (p.sum(0)[:, None] + eps)
