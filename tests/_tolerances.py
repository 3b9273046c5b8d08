"""Tolerances derived from floating-point arithmetic, for tests that compare values computed
along different paths (another library, another matrix shape or thread count, another order
of summation), where bit-identity is not owed.

``u`` is the unit roundoff: 2**-24 for float32, 2**-53 for float64. A sum or dot product of n
terms, computed in any order, is within ``gamma(n) * sum_i |term_i|`` of the exact value,
``gamma(n) = n u / (1 - n u)`` (N. J. Higham, *Accuracy and Stability of Numerical
Algorithms*, 2nd ed., 2002, §3.1). Two computations of the same quantity can therefore differ
by twice that.

Where a result is discrete (a ranking, a nearest centroid), a tolerance on the floats is not
enough: a test first checks that the data leave a margin wider than the float error between
competing scores (``min_gap``), and then asks for exact equality.
"""

from __future__ import annotations

import numpy as np
import torch

U32 = 2.0**-24
U64 = 2.0**-53


def unit_roundoff(dtype: torch.dtype | np.dtype | type) -> float:
    """``u`` of a torch or numpy floating dtype."""
    if isinstance(dtype, torch.dtype):
        return torch.finfo(dtype).eps / 2
    return float(np.finfo(dtype).eps) / 2


def gamma(n: int, u: float = U32) -> float:
    """Higham's ``gamma_n``: the relative error bound of an n-term sum or dot product."""
    if n * u >= 1:
        raise ValueError(f"gamma({n}) is unbounded at u={u}")
    return n * u / (1 - n * u)


def cosine_error(d: int, u: float = U32) -> float:
    """Bound on the error of a cosine similarity of two d-dimensional vectors computed in
    precision ``u`` (each row L2-normalised, then one dot product).

    Each normalised component carries a relative error of at most ``gamma(d + 3)`` (the sum of
    squares, the square root, the division); the two rows' errors move the dot product of unit
    vectors by at most ``2 gamma(d + 3)`` (Cauchy-Schwarz bounds ``sum |a_i b_i|`` by 1), and the
    dot product itself adds ``gamma(d)``.
    """
    return gamma(d, u) + 2 * gamma(d + 3, u)


def min_gap(scores: np.ndarray) -> float:
    """Smallest difference between two entries of the same row of ``scores`` (2-D, float64):
    a ranking of every row is exact under any perturbation of less than half of it."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64), axis=1)
    return float(np.diff(ordered, axis=1).min())


def cosine_scores(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Cosine similarities in float64, the reference for ``min_gap``."""
    q = np.asarray(query, dtype=np.float64)
    g = np.asarray(gallery, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    return q @ g.T


def sq_distance_error(x: torch.Tensor, centroids: torch.Tensor, u: float = U32) -> torch.Tensor:
    """(N, K) bound on the error of ``||x_i - c_j||^2`` computed as
    ``||x_i||^2 - 2 x_i.c_j + ||c_j||^2`` in precision ``u``: each of the three d-term sums errs
    by ``gamma(d + 2)`` times the sum of its absolute terms, together at most
    ``gamma(d + 2) (||x_i|| + ||c_j||)^2``."""
    x, centroids = x.double(), centroids.double()
    d = x.shape[1]
    norms = x.norm(dim=1)[:, None] + centroids.norm(dim=1)[None, :]
    return gamma(d + 2, u) * norms.square()
