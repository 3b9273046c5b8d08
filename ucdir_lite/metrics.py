"""Retrieval metrics: precision at K as the official UCDIR code pools it (book chapter 1), and mAP.

Every query ranks the whole gallery by cosine similarity. Ties are broken as a stable
descending sort would break them (``np.argsort(-scores, kind="stable")``): of two gallery
items with the same score, the one with the lower gallery index ranks first. Queries whose
class has no item in the gallery (``R = 0``) contribute nothing and are left out.

The work is done ``chunk_size`` queries at a time, so memory is ``O(chunk_size * M)`` for a
gallery of ``M`` items, never the full ``N x M`` score matrix.

References:
    C. Hu and G. H. Lee, "Feature Representation Learning for Unsupervised Cross-domain Image
    Retrieval", ECCV 2022, §4 (official code: ``retrieval_precision_cal`` in ``main.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["precision_at_k", "mean_average_precision", "retrieval_report"]


def _prepare(
    query: Tensor,
    query_labels: Tensor,
    gallery: Tensor,
    gallery_labels: Tensor,
    chunk_size: int,
    exclude_self: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Validate; return unit-norm features, labels on one device, and ``R`` per query
    (at least one ``R`` must be positive)."""
    query, gallery = torch.as_tensor(query), torch.as_tensor(gallery)
    query_labels = torch.as_tensor(query_labels, device=query.device)
    gallery_labels = torch.as_tensor(gallery_labels, device=query.device)
    if query.dim() != 2 or gallery.dim() != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(
            "query must be (N, D) and gallery (M, D) with the same D; got "
            f"{tuple(query.shape)} and {tuple(gallery.shape)}."
        )
    if query.shape[0] == 0 or gallery.shape[0] == 0:
        raise ValueError(
            f"query and gallery must not be empty; got {tuple(query.shape)} and "
            f"{tuple(gallery.shape)}."
        )
    if query_labels.shape != query.shape[:1] or gallery_labels.shape != gallery.shape[:1]:
        raise ValueError(
            "labels must be 1-D with one entry per row: query (N,) and gallery (M,); got "
            f"query {tuple(query.shape)} with labels {tuple(query_labels.shape)}, gallery "
            f"{tuple(gallery.shape)} with labels {tuple(gallery_labels.shape)}."
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}.")
    if query_labels.is_floating_point() or gallery_labels.is_floating_point():
        raise ValueError("labels must be integer class indices, not floating point.")
    query_labels, gallery_labels = query_labels.long(), gallery_labels.long()
    if exclude_self and (
        query.shape != gallery.shape or not torch.equal(query_labels, gallery_labels)
    ):
        raise ValueError(
            "exclude_self=True needs the query set to BE the gallery (row i = gallery item i, "
            f"same labels); got query {tuple(query.shape)}, gallery {tuple(gallery.shape)}."
        )
    if not (bool(torch.isfinite(query).all()) and bool(torch.isfinite(gallery).all())):
        raise ValueError("features contain NaN or inf; retrieval needs finite features.")
    dtype = torch.float64 if torch.float64 in (query.dtype, gallery.dtype) else torch.float32
    query = F.normalize(query.to(dtype), dim=1)
    gallery = F.normalize(gallery.to(device=query.device, dtype=dtype), dim=1)
    # R: number of gallery items of each query's class.
    classes, counts = torch.unique(gallery_labels, return_counts=True)
    where = torch.searchsorted(classes, query_labels).clamp_(max=classes.numel() - 1)
    R = torch.where(classes[where] == query_labels, counts[where], 0)
    if exclude_self:
        R = R - 1
    if not bool((R > 0).any()):
        raise ValueError(
            "no query has an item of its class in the gallery (R = 0 for every query); "
            "check that both sets use the same class indices."
        )
    return query, query_labels, gallery, gallery_labels, R


def _score_chunks(
    query: Tensor, gallery: Tensor, chunk_size: int, exclude_self: bool
) -> Iterator[tuple[slice, Tensor]]:
    """Yield ``(rows, scores)``: cosine similarities of ``chunk_size`` queries to the gallery;
    with ``exclude_self`` the query's own gallery entry scores ``-inf`` (ranked last)."""
    for start in range(0, query.shape[0], chunk_size):
        rows = slice(start, min(start + chunk_size, query.shape[0]))
        scores = query[rows] @ gallery.T
        if exclude_self:
            r = torch.arange(scores.shape[0], device=scores.device)
            scores[r, r + start] = -torch.inf
        yield rows, scores


def _as_ks(ks: int | Iterable[int]) -> tuple[int, ...]:
    ks = (ks,) if isinstance(ks, int) else tuple(ks)
    if not ks or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in ks):
        raise ValueError(f"ks must be integers K >= 1; got {ks!r}.")
    return ks


def _hits_with_ties(scores: Tensor, is_pos: Tensor, n: Tensor, threshold: Tensor) -> Tensor:
    """Positives among the top ``n`` of each row when the ``n``-th score ``threshold`` is
    shared by items on both sides of the cut: every item scoring above ``threshold`` is in,
    then the tied items in gallery-index order fill the remaining slots."""
    above = scores > threshold[:, None]
    tied = scores == threshold[:, None]
    slots = n - above.sum(1)
    tied_in = tied & (tied.cumsum(1, dtype=torch.int32) <= slots[:, None])
    return (above & is_pos).sum(1) + (tied_in & is_pos).sum(1)


@torch.no_grad()
def precision_at_k(
    query: Tensor,
    query_labels: Tensor,
    gallery: Tensor,
    gallery_labels: Tensor,
    ks: int | Iterable[int] = (50, 100, 200),
    chunk_size: int = 1024,
    *,
    exclude_self: bool = False,
) -> dict[int, float]:
    """Pooled precision at K, in percent (book chapter 1; as the official code computes it).

        P@K = 100 * sum_q hits_q(n_q) / sum_q n_q,    n_q = min(K, R_q)

    where ``R_q`` is the number of gallery items of query ``q``'s class and ``hits_q(n)`` the
    number of them among the ``n`` gallery items most cosine-similar to ``q``. Queries with
    ``R_q = 0`` are left out. Ties: lower gallery index first (a stable descending sort).

    Per chunk of queries only ``torch.topk`` with ``min(max(ks), max_q R_q) + 1`` is taken,
    never a full sort: a row is resolved from its top list unless the ``n_q``-th score is
    tied with the next one, in which case that row is counted exactly from its full score row.

    Args:
        query: (N, D) query features; query_labels: (N,) their classes.
        gallery: (M, D) gallery features; gallery_labels: (M,) their classes.
        ks: the K values (each >= 1; K > M is allowed and gives n_q = R_q).
        chunk_size: queries scored at a time (memory ``chunk_size x M``).
        exclude_self: the query set IS the gallery (row i = item i): item i is removed from
            query i's ranking and from its ``R`` (in-domain retrieval, e.g. A->A).

    Returns:
        ``{K: P@K in percent}`` in the order of ``ks``.
    """
    ks = _as_ks(ks)
    query, query_labels, gallery, gallery_labels, R = _prepare(
        query, query_labels, gallery, gallery_labels, chunk_size, exclude_self
    )
    M = gallery.shape[0]
    top = min(min(max(ks), int(R.max())) + 1, M)  # n_q <= min(K, R_q) < top
    hits_total = dict.fromkeys(ks, 0)
    n_total = dict.fromkeys(ks, 0)
    for rows, scores in _score_chunks(query, gallery, chunk_size, exclude_self):
        labels_q = query_labels[rows]
        values, index = scores.topk(top, dim=1)
        cum_hits = (gallery_labels[index] == labels_q[:, None]).cumsum(1)
        for k in ks:
            n = R[rows].clamp(max=k)
            last = (n - 1).clamp_(min=0)[:, None]
            hits = cum_hits.gather(1, last)[:, 0]
            threshold = values.gather(1, last)[:, 0]
            # The cut falls inside a group of equal scores: count that row exactly.
            straddle = (n > 0) & (n < top)
            straddle &= values.gather(1, n.clamp(max=top - 1)[:, None])[:, 0] == threshold
            if bool(straddle.any()):
                is_pos = gallery_labels[None, :] == labels_q[straddle][:, None]
                hits[straddle] = _hits_with_ties(
                    scores[straddle], is_pos, n[straddle], threshold[straddle]
                )
            hits_total[k] += int(hits[n > 0].sum())
            n_total[k] += int(n.sum())
    return {k: 100.0 * hits_total[k] / n_total[k] for k in ks}


@torch.no_grad()
def mean_average_precision(
    query: Tensor,
    query_labels: Tensor,
    gallery: Tensor,
    gallery_labels: Tensor,
    chunk_size: int = 1024,
    *,
    exclude_self: bool = False,
) -> float:
    """Mean average precision over the full ranking, in percent.

        AP_q = (1 / R_q) * sum_{j=1..R_q} j / rank_q(j),    mAP = 100 * mean_q AP_q

    where ``rank_q(j)`` is the (1-based) rank of the ``j``-th same-class gallery item in
    query ``q``'s ranking by cosine similarity (ties: lower gallery index first). Queries with
    ``R_q = 0`` are left out. Each chunk sorts its ``chunk_size x M`` scores fully (about
    13 bytes per score at the peak): lower ``chunk_size`` for a large gallery.

    Args and ``exclude_self``: as in :func:`precision_at_k`.

    Returns:
        mAP in percent (a float).
    """
    query, query_labels, gallery, gallery_labels, R = _prepare(
        query, query_labels, gallery, gallery_labels, chunk_size, exclude_self
    )
    ap_sum = 0.0
    for rows, scores in _score_chunks(query, gallery, chunk_size, exclude_self):
        order = scores.sort(dim=1, descending=True, stable=True).indices
        del scores
        is_pos = gallery_labels[order] == query_labels[rows][:, None]
        if exclude_self:
            self_index = torch.arange(rows.start, rows.stop, device=order.device)
            is_pos &= order != self_index[:, None]
        del order
        row, rank0 = is_pos.nonzero(as_tuple=True)  # row-major: positives in rank order
        first = torch.searchsorted(row, torch.arange(is_pos.shape[0], device=row.device))
        j = torch.arange(row.numel(), device=row.device) - first[row] + 1
        precision = j.double() / (rank0 + 1).double()
        ap = torch.zeros(is_pos.shape[0], dtype=torch.float64, device=row.device)
        ap.index_add_(0, row, precision)
        r = R[rows].double()
        ap_sum += float((ap[r > 0] / r[r > 0]).sum())
    return 100.0 * ap_sum / int((R > 0).sum())


def retrieval_report(
    feats_a: Tensor,
    labels_a: Tensor,
    feats_b: Tensor,
    labels_b: Tensor,
    ks: int | Iterable[int] = (50, 100, 200),
    chunk_size: int = 1024,
    *,
    in_domain: bool = False,
) -> dict[str, dict[str, float]]:
    """P@K and mAP in both cross-domain directions (A queries B, B queries A).

    Returns ``{"A->B": {"P@50": ..., "P@100": ..., "mAP": ...}, "B->A": {...}}``; with
    ``in_domain=True`` also ``"A->A"`` and ``"B->B"`` (each item queries its own domain,
    itself excluded), the in-domain reference for the cross-domain figures.
    """
    ks = _as_ks(ks)
    runs = {
        "A->B": (feats_a, labels_a, feats_b, labels_b, False),
        "B->A": (feats_b, labels_b, feats_a, labels_a, False),
    }
    if in_domain:
        runs["A->A"] = (feats_a, labels_a, feats_a, labels_a, True)
        runs["B->B"] = (feats_b, labels_b, feats_b, labels_b, True)
    report = {}
    for name, (q, q_labels, g, g_labels, exclude_self) in runs.items():
        p = precision_at_k(q, q_labels, g, g_labels, ks, chunk_size, exclude_self=exclude_self)
        entry = {f"P@{k}": value for k, value in p.items()}
        entry["mAP"] = mean_average_precision(
            q, q_labels, g, g_labels, chunk_size, exclude_self=exclude_self
        )
        report[name] = entry
    return report
