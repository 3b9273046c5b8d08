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

import numpy as np
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


_MAX_SHARED = 8
"""Rows of a chunk with more positives whose score is shared are ranked by a full sort."""

_CACHE_BYTES = 8 * 2**20
"""Scores scored and scanned at a time within a chunk: small enough to stay in the CPU's
cache between the product and the passes over them."""


def _score_chunks(
    query: Tensor, gallery: Tensor, chunk_size: int, exclude_self: bool
) -> Iterator[tuple[slice, Tensor]]:
    """Yield ``(rows, scores)``: cosine similarities of a block of queries to the gallery,
    written into one reused buffer (valid until the next block). Blocks hold at most
    ``chunk_size`` queries, fewer if their scores would not fit in ``_CACHE_BYTES``. With
    ``exclude_self`` the query's own gallery entry scores ``-inf`` (ranked last)."""
    M = gallery.shape[0]
    step = max(1, min(chunk_size, query.shape[0], _CACHE_BYTES // (M * query.element_size())))
    buffer = torch.empty(step, M, dtype=query.dtype, device=query.device)
    for start in range(0, query.shape[0], step):
        rows = slice(start, min(start + step, query.shape[0]))
        scores = buffer[: rows.stop - start]
        torch.mm(query[rows], gallery.T, out=scores)
        if exclude_self:
            r = torch.arange(scores.shape[0], device=scores.device)
            scores[r, r + start] = -torch.inf
        yield rows, scores


def _sort_rows(x: Tensor) -> Tensor:
    """Each row's values in ascending order (values only). On the CPU numpy's sort, which is
    vectorised (AVX-512 where the CPU has it) and several times faster than ``torch.sort``."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.numpy(), axis=1))
    return x.sort(dim=1).values


def _row_positions(row: Tensor, n_rows: int) -> tuple[Tensor, Tensor]:
    """For entries listed row by row (``row`` non-decreasing): each entry's place in its row,
    and each row's count."""
    counts = torch.bincount(row, minlength=n_rows)
    first = counts.cumsum(0) - counts
    return torch.arange(row.numel(), device=row.device) - first[row], counts


def _padded(row: Tensor, values: Tensor, n_rows: int, fill: float) -> tuple[Tensor, Tensor]:
    """Entries listed row by row as an ``(n_rows, widest row)`` matrix padded with ``fill``;
    also each entry's place in its row."""
    pos, counts = _row_positions(row, n_rows)
    out = values.new_full((n_rows, max(int(counts.max()), 1)), fill)
    out[row, pos] = values
    return out, pos


def _lower_bound(x: Tensor, top: int) -> Tensor:
    """Per row of ``x``, a score ``t`` with at least ``top`` scores ``>= t`` (so every score
    among the row's ``top`` largest is ``>= t``), from one pass over the row.

    The columns are dealt into ``B`` blocks by index modulo ``B`` (strided, so that a
    class-sorted gallery does not pile one class's items into a few blocks) and ``t`` is the
    ``top``-th largest block maximum: ``top`` blocks each hold an item ``>= t``. Sorting the
    ``B`` maxima is cheap for ``B <= 512``; ``B`` a few times ``top`` keeps the number of
    scores ``>= t`` within about 30 % of ``top`` on shuffled data. Exactness never depends
    on how tight ``t`` is, only the number of candidates does."""
    C, M = x.shape
    B = min(max(2 * top, min(4 * top, 512)), M)
    L = M // B
    maxima = x.as_strided((C, L, B), (x.stride(0), B, 1)).amax(1)
    if M > L * B:
        maxima[:, : M - L * B] = torch.maximum(maxima[:, : M - L * B], x[:, L * B :])
    return _sort_rows(maxima)[:, B - top]


def _at_least(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(row, column, score)`` of the scores ``>= t`` of their row, listed row by row."""
    if x.device.type == "cpu":  # numpy's comparison and flatnonzero are much faster here
        flat = torch.from_numpy(np.flatnonzero(x.numpy() >= t.numpy()[:, None]))
    else:
        flat = (x >= t[:, None]).view(-1).nonzero()[:, 0]
    row = flat // x.shape[1]
    return row, flat - row * x.shape[1], x.view(-1)[flat]


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


def _chunk_hits(
    x: Tensor, labels_q: Tensor, gallery_labels: Tensor, R: Tensor, ks: tuple[int, ...], top: int
) -> dict[int, Tensor]:
    """Per K, the positives among the top ``n_q = min(K, R_q)`` of each row of ``x``.

    Only the candidates, every score ``>= t`` of ``_lower_bound`` (at least ``top`` per row,
    a few hundred), are sorted. A row's ``n``-th largest score ``v`` is then exact, and when
    the next score is smaller the top ``n`` are exactly the items ``>= v``: their positives
    are counted among the candidates. When the cut falls inside a group of equal scores the
    row is counted exactly from its full score row (lower gallery index first)."""
    C = x.shape[0]
    row, col, val = _at_least(x, _lower_bound(x, top))
    ranked = _sort_rows(_padded(row, val, C, -torch.inf)[0]).flip(1)  # descending
    is_pos = gallery_labels[col] == labels_q[row]
    out = {}
    for k in ks:
        n = R.clamp(max=k)
        last = (n - 1).clamp_(min=0)[:, None]
        threshold = ranked.gather(1, last)[:, 0]
        straddle = (n > 0) & (n < top)
        straddle &= ranked.gather(1, n.clamp(max=top - 1)[:, None])[:, 0] == threshold
        hits = torch.bincount(row[is_pos & (val >= threshold[row])], minlength=C)
        if bool(straddle.any()):
            pos = gallery_labels[None, :] == labels_q[straddle][:, None]
            hits[straddle] = _hits_with_ties(x[straddle], pos, n[straddle], threshold[straddle])
        out[k] = torch.where(n > 0, hits, 0)
    return out


def _ap_sums(row: Tensor, rank0: Tensor, n_rows: int) -> Tensor:
    """Sum of ``j / rank(j)`` per row, for positives listed row by row in rank order
    (``rank0``: each one's 0-based rank in its row)."""
    j, _ = _row_positions(row, n_rows)
    ap = torch.zeros(n_rows, dtype=torch.float64, device=row.device)
    return ap.index_add_(0, row, (j + 1).double() / (rank0 + 1).double())


def _ap_by_sort(x: Tensor, is_pos: Tensor) -> Tensor:
    """Sum of ``j / rank(j)`` per row, from a full stable sort of each row."""
    order = x.sort(dim=1, descending=True, stable=True).indices
    row, rank0 = is_pos.gather(1, order).nonzero(as_tuple=True)  # positives in rank order
    return _ap_sums(row, rank0, x.shape[0])


def _chunk_ap(
    x: Tensor, labels_q: Tensor, gallery_labels: Tensor, R: Tensor, own: Tensor | None
) -> Tensor:
    """Sum of AP over the rows of ``x`` with ``R > 0`` (``own``: each row's own gallery
    column, excluded from its positives, or None).

    The rank of a positive ``p`` with score ``s`` is ``1 + #{score > s} + #{score == s, lower
    gallery index}``: the first count comes from the sorted row (values only, no indices), the
    second from the row itself, only for the positives whose score is shared. A row with many
    such positives (features with many exact ties) is ranked by a full stable sort instead."""
    C, M = x.shape
    is_pos = gallery_labels[None, :] == labels_q[:, None]
    if own is not None:
        is_pos[torch.arange(C, device=x.device), own] = False
    row, col = is_pos.nonzero(as_tuple=True)
    val = x[row, col]
    ascending = _sort_rows(x)
    padded, pos = _padded(row, val, C, torch.inf)
    below_or_equal = torch.searchsorted(ascending, padded, right=True)[row, pos]
    below = torch.searchsorted(ascending, padded)[row, pos]
    del ascending, padded
    rank0 = M - below_or_equal  # items scoring strictly above
    shared = below_or_equal - below > 1
    by_sort = torch.bincount(row[shared], minlength=C) > _MAX_SHARED
    shared = (shared & ~by_sort[row]).nonzero()[:, 0]
    index = torch.arange(M, device=x.device)
    for part in shared.split(C):  # at most C x M booleans at a time
        r, s, c = row[part], val[part], col[part]
        rank0[part] += ((x[r] == s[:, None]) & (index[None, :] < c[:, None])).sum(1)
    order = (row * (M + 1) + rank0).argsort()
    ap = _ap_sums(row[order], rank0[order], C)
    if bool(by_sort.any()):
        ap[by_sort] = _ap_by_sort(x[by_sort], is_pos[by_sort])
    r = R.double()
    return (ap[r > 0] / r[r > 0]).sum()


def _evaluate(
    query: Tensor,
    query_labels: Tensor,
    gallery: Tensor,
    gallery_labels: Tensor,
    ks: tuple[int, ...] | None,
    chunk_size: int,
    exclude_self: bool,
    with_map: bool,
) -> tuple[dict[int, float] | None, float | None]:
    """P@K (when ``ks``) and mAP (when ``with_map``) from one pass over the score chunks."""
    query, query_labels, gallery, gallery_labels, R = _prepare(
        query, query_labels, gallery, gallery_labels, chunk_size, exclude_self
    )
    M = gallery.shape[0]
    top = min(min(max(ks), int(R.max())) + 1, M) if ks else 0  # n_q <= min(K, R_q) < top
    hits_total = dict.fromkeys(ks or (), 0)
    n_total = dict.fromkeys(ks or (), 0)
    ap_sum = 0.0
    for rows, x in _score_chunks(query, gallery, chunk_size, exclude_self):
        labels_q, R_q = query_labels[rows], R[rows]
        if ks:
            for k, hits in _chunk_hits(x, labels_q, gallery_labels, R_q, ks, top).items():
                hits_total[k] += int(hits.sum())
                n_total[k] += int(R_q.clamp(max=k).sum())
        if with_map:
            own = torch.arange(rows.start, rows.stop, device=x.device) if exclude_self else None
            ap_sum += float(_chunk_ap(x, labels_q, gallery_labels, R_q, own))
    p = {k: 100.0 * hits_total[k] / n_total[k] for k in ks} if ks else None
    return p, (100.0 * ap_sum / int((R > 0).sum()) if with_map else None)


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
    r"""Pooled precision at K, in percent (book chapter 1; as the official code computes it).

    .. math::

        P@K = 100 \cdot \frac{\sum_q \mathrm{hits}_q(n_q)}{\sum_q n_q},
        \qquad n_q = \min(K, R_q)

    where ``R_q`` is the number of gallery items of query ``q``'s class and ``hits_q(n)`` the
    number of them among the ``n`` gallery items most cosine-similar to ``q``. Queries with
    ``R_q = 0`` are left out. Ties: lower gallery index first (a stable descending sort).

    No row is sorted or searched whole. Per chunk of queries, block maxima give each row a
    bound ``t`` with at least ``top = min(max(ks), max_q R_q) + 1`` scores ``>= t``; only
    those candidates (a few hundred per row) are sorted, and a row is resolved from them
    unless the ``n_q``-th score is tied with the next one, in which case that row is counted
    exactly from its full score row (see ``_lower_bound`` and ``_chunk_hits``).

    Args:
        query: (N, D) query features.
        query_labels: (N,) their classes.
        gallery: (M, D) gallery features.
        gallery_labels: (M,) their classes.
        ks: the K values (each >= 1; K > M is allowed and gives n_q = R_q).
        chunk_size: queries scored at a time (memory ``chunk_size x M``).
        exclude_self: the query set IS the gallery (row i = item i): item i is removed from
            query i's ranking and from its ``R`` (in-domain retrieval, e.g. A->A).

    Returns:
        ``{K: P@K in percent}`` in the order of ``ks``.
    """
    p, _ = _evaluate(
        query, query_labels, gallery, gallery_labels, _as_ks(ks), chunk_size, exclude_self, False
    )
    return p


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
    r"""Mean average precision over the full ranking, in percent.

    .. math::

        \mathrm{AP}_q = \frac{1}{R_q} \sum_{j=1}^{R_q} \frac{j}{\mathrm{rank}_q(j)},
        \qquad \mathrm{mAP} = 100 \cdot \operatorname{mean}_q \mathrm{AP}_q

    where ``rank_q(j)`` is the (1-based) rank of the ``j``-th same-class gallery item in
    query ``q``'s ranking by cosine similarity (ties: lower gallery index first). Queries with
    ``R_q = 0`` are left out. Each chunk sorts the values of its ``chunk_size x M`` scores
    (no indices) and looks up each positive's rank in them (about 8 bytes per score at the
    peak besides the scores): lower ``chunk_size`` for a large gallery.

    Args and ``exclude_self``: as in :func:`precision_at_k`.

    Returns:
        mAP in percent (a float).
    """
    _, ap = _evaluate(
        query, query_labels, gallery, gallery_labels, None, chunk_size, exclude_self, True
    )
    return ap


@torch.no_grad()
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
    itself excluded), the in-domain reference for the cross-domain figures. Each direction's
    scores are computed once, for P@K and mAP together; the figures equal
    :func:`precision_at_k` and :func:`mean_average_precision`.
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
        p, ap = _evaluate(q, q_labels, g, g_labels, ks, chunk_size, exclude_self, True)
        report[name] = {**{f"P@{k}": value for k, value in p.items()}, "mAP": ap}
    return report
