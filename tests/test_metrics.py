"""precision_at_k and mean_average_precision against plain loops of the official formula."""

import numpy as np
import pytest
import torch

from ucdir_lite.metrics import mean_average_precision, precision_at_k, retrieval_report

from _tolerances import cosine_error, cosine_scores, min_gap, unit_roundoff


def _rankings(query, gallery, exclude_self):
    """Per query: gallery indices by descending cosine similarity, stable (lower index first)."""
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    scores = q @ g.T
    for i in range(len(q)):
        order = np.argsort(-scores[i], kind="stable")
        yield order[order != i] if exclude_self else order


def loop_precision(query, query_labels, gallery, gallery_labels, ks, exclude_self=False):
    """P@K as the official code pools it: sum of hits in the top min(K, R) / sum of min(K, R)."""
    out, orders = {}, list(_rankings(query, gallery, exclude_self))
    for k in ks:
        hits = total = 0
        for i, order in enumerate(orders):
            R = int((gallery_labels == query_labels[i]).sum()) - int(exclude_self)
            n = min(k, R)
            hits += int((gallery_labels[order[:n]] == query_labels[i]).sum())
            total += n
        out[k] = 100.0 * hits / total
    return out


def loop_map(query, query_labels, gallery, gallery_labels, exclude_self=False):
    aps = []
    for i, order in enumerate(_rankings(query, gallery, exclude_self)):
        relevant = gallery_labels[order] == query_labels[i]
        if relevant.sum() == 0:
            continue
        ranks = np.flatnonzero(relevant) + 1
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
    return 100.0 * float(np.mean(aps))


def _data(n_query, n_gallery, seed, ties, dtype=np.float64):
    """Imbalanced classes (one missing from the gallery); with ``ties`` the features are
    +-1 in 16-d, so cosine scores take 17 exactly representable values (many ties)."""
    rng = np.random.default_rng(seed)
    probs = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    query_labels = rng.choice(6, n_query, p=probs)
    gallery_labels = rng.choice(5, n_gallery, p=probs[:5] / probs[:5].sum())  # no class 5
    gallery_labels[0] = 4
    if ties:
        query = rng.choice([-1.0, 1.0], (n_query, 16))
        gallery = rng.choice([-1.0, 1.0], (n_gallery, 16))
        gallery[1:4] = gallery[0]  # exact duplicates
    else:
        query, gallery = rng.normal(size=(n_query, 8)), rng.normal(size=(n_gallery, 8))
        query, gallery = query.astype(dtype), gallery.astype(dtype)
        # drop the few gallery items whose score with some query comes within twice the float
        # error of another item's: then every ranking is the same in any order of summation
        bound = cosine_error(8, unit_roundoff(dtype))
        scores = cosine_scores(query, gallery)
        order = np.argsort(scores, axis=1)
        gaps = np.diff(np.take_along_axis(scores, order, axis=1), axis=1)
        near = np.zeros(n_gallery, dtype=bool)
        rows, cols = np.nonzero(gaps <= 2 * bound)
        near[order[rows, cols]] = near[order[rows, cols + 1]] = True
        near[0] = False  # keep the one item of class 4
        gallery, gallery_labels = gallery[~near], gallery_labels[~near]
    return query.astype(dtype), query_labels, gallery.astype(dtype), gallery_labels


KS = (1, 5, 7, 50, 1000)  # 1000 > gallery size


def _assert_rankings_are_exact(query, gallery, ties):
    """The loops (numpy) and the package (torch, chunked matrix products) compute the scores in
    different orders, so P@K and mAP may be compared exactly (abs=1e-9, on counts divided the
    same way) only if every ranking is the same under both: with ``ties``, +-1 features in 16-d
    give cosines that are multiples of 1/16, exact in any order; otherwise two scores must lie
    further apart than twice the float error of a cosine, so that each computation, off by at
    most that error, orders them as the exact values do."""
    if ties:
        assert np.abs(query).min() == np.abs(query).max() == 1.0 and query.shape[1] == 16
    else:
        bound = cosine_error(query.shape[1], unit_roundoff(query.dtype))
        assert min_gap(cosine_scores(query, gallery)) > 2 * bound


def _torch(*arrays):
    return [torch.from_numpy(x) for x in arrays]


@pytest.mark.parametrize("ties", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_precision_at_k_equals_loop(ties, dtype):
    q, ql, g, gl = _data(90, 150, seed=int(ties), ties=ties, dtype=dtype)
    _assert_rankings_are_exact(q, g, ties)
    expected = loop_precision(q, ql, g, gl, KS)
    for chunk_size in (1, 7, 1024):
        got = precision_at_k(*_torch(q, ql, g, gl), KS, chunk_size=chunk_size)
        assert list(got) == list(KS)
        for k in KS:
            assert got[k] == pytest.approx(expected[k], abs=1e-9), (k, chunk_size)


@pytest.mark.parametrize("ties", [True, False])
def test_map_equals_loop(ties):
    q, ql, g, gl = _data(60, 120, seed=2, ties=ties)
    _assert_rankings_are_exact(q, g, ties)
    expected = loop_map(q, ql, g, gl)
    for chunk_size in (1, 13, 1024):
        got = mean_average_precision(*_torch(q, ql, g, gl), chunk_size)
        assert got == pytest.approx(expected, abs=1e-9)


def test_exclude_self_equals_loop():
    _, _, g, gl = _data(10, 160, seed=3, ties=True)
    expected = loop_precision(g, gl, g, gl, KS, exclude_self=True)
    got = precision_at_k(*_torch(g, gl, g, gl), KS, chunk_size=17, exclude_self=True)
    for k in KS:
        assert got[k] == pytest.approx(expected[k], abs=1e-9)
    expected_map = loop_map(g, gl, g, gl, exclude_self=True)
    got_map = mean_average_precision(*_torch(g, gl, g, gl), 17, exclude_self=True)
    assert got_map == pytest.approx(expected_map, abs=1e-9)
    # without exclusion the item itself (or an earlier exact duplicate) competes
    with_self = precision_at_k(*_torch(g, gl, g, gl), KS)
    assert with_self == pytest.approx(loop_precision(g, gl, g, gl, KS))
    assert with_self[1] > got[1]


def test_hand_made_values_and_tie_rule():
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
    gallery_labels = torch.tensor([0, 1, 0, 0])
    query = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    query_labels = torch.tensor([0, 1])
    # query 0 ranks 0 (1.0), 2 (0.707), then items 1 and 3 tied at 0 -> 1 before 3; R = 3.
    # query 1 ranks items 1 and 3 tied at 1.0 -> 1 first (a hit); R = 1.
    p = precision_at_k(query, query_labels, gallery, gallery_labels, ks=(1, 3))
    assert p[1] == 100.0  # (1 + 1) / (1 + 1)
    assert p[3] == pytest.approx(100 * (2 + 1) / (3 + 1))  # top-3 of query 0 holds item 1
    # swapping the tied items' indices turns query 1's top-1 into a miss
    swapped = precision_at_k(
        query, query_labels, gallery[[0, 3, 2, 1]], gallery_labels[[0, 3, 2, 1]], ks=(1,)
    )
    assert swapped[1] == 50.0
    # mAP: query 0 finds its positives at ranks 1, 2, 4 -> (1 + 1 + 3/4) / 3; query 1 at 1
    assert mean_average_precision(query, query_labels, gallery, gallery_labels) == (
        pytest.approx(100 * ((1 + 1 + 0.75) / 3 + 1) / 2)
    )


def test_queries_without_gallery_class_are_left_out():
    gallery = torch.eye(3)
    gallery_labels = torch.tensor([0, 1, 1])
    query = torch.eye(3)[:2]
    p = precision_at_k(query, torch.tensor([0, 7]), gallery, gallery_labels, ks=(1,))
    assert p[1] == 100.0  # class 7 has R = 0: only query 0 counts
    with pytest.raises(ValueError, match="R = 0"):
        precision_at_k(query, torch.tensor([5, 7]), gallery, gallery_labels, ks=(1,))


def test_retrieval_report_keys_and_directions():
    q, ql, g, gl = _data(40, 50, seed=4, ties=False)
    a, la, b, lb = _torch(q, ql, g, gl)
    report = retrieval_report(a, la, b, lb, ks=(1, 5), in_domain=True)
    assert list(report) == ["A->B", "B->A", "A->A", "B->B"]
    assert list(report["A->B"]) == ["P@1", "P@5", "mAP"]
    assert report["B->A"]["P@5"] == pytest.approx(precision_at_k(b, lb, a, la, (5,))[5])
    assert report["A->A"]["mAP"] == pytest.approx(
        mean_average_precision(a, la, a, la, exclude_self=True)
    )
    assert list(retrieval_report(a, la, b, lb, ks=(1,))) == ["A->B", "B->A"]


def test_bad_input_is_named():
    a, la = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="K >= 1"):
        precision_at_k(a, la, a, la, ks=(0,))
    with pytest.raises(ValueError, match=r"\(4, 3\) and \(4, 5\)"):
        precision_at_k(a, la, torch.randn(4, 5), la)
    with pytest.raises(ValueError, match="labels"):
        precision_at_k(a, la[:3], a, la)
    with pytest.raises(ValueError, match="exclude_self"):
        precision_at_k(a, la, a[:3], la[:3], exclude_self=True)
    with pytest.raises(ValueError, match="chunk_size"):
        mean_average_precision(a, la, a, la, chunk_size=0)


def _ternary(n, seed, dim=128, nonzero=64):
    """Rows with ``nonzero`` entries of +-1 (the rest 0): unit rows are +-1/8, so every cosine
    is a multiple of 1/64, exact in float32 whatever the order of summation: 129 possible
    scores, so ties everywhere."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, dim), dtype=np.float32)
    for row in x:
        row[rng.choice(dim, nonzero, replace=False)] = rng.choice([-1.0, 1.0], nonzero)
    return x


@pytest.mark.parametrize("classes", [5, 300])
@pytest.mark.parametrize("class_sorted", [False, True])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_pruned_selection_equals_full_sort(classes, class_sorted, exclude_self):
    """Galleries large enough for the block-maxima pruning, features with exact ties
    everywhere (cuts inside tied groups, positives sharing scores), K > R and K > M."""
    from ucdir_lite.metrics import _lower_bound

    rng = np.random.default_rng(classes + 2 * class_sorted + 4 * exclude_self)
    M = 3003  # not a multiple of the block length: the last columns are checked apart
    gallery, gallery_labels = _ternary(M, seed=classes), rng.integers(0, classes, M)
    gallery[7:30] = gallery[6]  # exact duplicates
    if class_sorted:
        order = np.argsort(gallery_labels, kind="stable")
        gallery, gallery_labels = gallery[order], gallery_labels[order]
    if exclude_self:
        query, query_labels = gallery, gallery_labels
    else:
        query, query_labels = _ternary(150, seed=classes + 1), rng.integers(0, classes + 1, 150)
    ks = (1, 5, 20, 50, 5000)  # 5000 > M
    # the loops' float64 scores are exact here: every cosine is a multiple of 1/64
    expected_p = loop_precision(query, query_labels, gallery, gallery_labels, ks, exclude_self)
    expected_map = loop_map(query, query_labels, gallery, gallery_labels, exclude_self)
    args = _torch(query, query_labels, gallery, gallery_labels)
    for ks_used in (ks, (1, 5, 20)):
        for chunk_size in (64, 1024):
            got = precision_at_k(*args, ks_used, chunk_size, exclude_self=exclude_self)
            assert got == {k: pytest.approx(expected_p[k], abs=1e-9) for k in ks_used}
    # the bound did prune: for K <= 20 most rows keep a small part of the gallery
    scores = torch.from_numpy(query / 8.0) @ torch.from_numpy(gallery / 8.0).T
    kept = (scores >= _lower_bound(scores, 21)[:, None]).sum(1)
    assert (kept >= 21).all() and kept.float().median() < M / 4
    got_map = mean_average_precision(*args, 64, exclude_self=exclude_self)
    assert got_map == pytest.approx(expected_map, abs=1e-9)
    if not exclude_self:
        report = retrieval_report(*args, ks=ks, chunk_size=64, in_domain=True)
        assert report["A->B"] == {
            **{f"P@{k}": pytest.approx(expected_p[k], abs=1e-9) for k in ks},
            "mAP": pytest.approx(expected_map, abs=1e-9),
        }
        own = mean_average_precision(*args[2:], *args[2:], 64, exclude_self=True)
        assert report["B->B"]["mAP"] == own  # the same computation, the same chunks


def test_pruned_selection_on_continuous_features():
    """Float features (no exact ties but near ones): the pruned P@K and the values-only mAP
    against plain loops, with every ranking checked to be the same in any summation order."""
    q, ql, g, gl = _data(40, 2500, seed=5, ties=False, dtype=np.float64)
    _assert_rankings_are_exact(q, g, False)
    ks = (1, 3, 10, 40)
    expected = loop_precision(q, ql, g, gl, ks)
    got = precision_at_k(*_torch(q, ql, g, gl), ks, chunk_size=16)
    assert got == {k: pytest.approx(expected[k], abs=1e-9) for k in ks}
    got_map = mean_average_precision(*_torch(q, ql, g, gl), 16)
    assert got_map == pytest.approx(loop_map(q, ql, g, gl), abs=1e-9)
