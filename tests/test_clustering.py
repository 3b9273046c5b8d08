"""k-means on planted clusters (vs scikit-learn), soft assignments and soft centroids."""

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans

from ucdir_lite.clustering import KMeansResult, kmeans, soft_assign, soft_centroids

from _tolerances import U32, gamma, sq_distance_error


def _blobs(n=600, k=8, d=16, spread=0.15, seed=0):
    """Gaussian blobs around k unit-norm centres, unequal sizes."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)
    weights = torch.linspace(1.0, 3.0, k)
    labels = torch.multinomial(weights, n, replacement=True, generator=g)
    x = centres[labels] + spread / d**0.5 * torch.randn(n, d, generator=g)
    return x, labels


def _best_agreement(labels, truth, k):
    """Fraction of points whose cluster maps to their true class under the best matching."""
    table = np.zeros((k, k))
    np.add.at(table, (labels.numpy(), truth.numpy()), 1)
    rows, cols = linear_sum_assignment(-table)
    return table[rows, cols].sum() / len(labels)


def test_kmeans_recovers_planted_clusters_and_matches_sklearn():
    x, truth = _blobs()
    result = kmeans(x, 8, seed=0)
    assert isinstance(result, KMeansResult)
    assert result.centroids.shape == (8, 16) and result.labels.shape == (600,)
    assert _best_agreement(result.labels, truth, 8) == 1.0
    # labels are the nearest centroids and inertia is their summed squared distance. The
    # float32 expanded-form distances may pick another centroid only where two are within its
    # error bound of each other (none is, on these blobs); the inertia sums directly computed
    # float32 squared distances of 16 terms each: within gamma(17) of the float64 value.
    d2 = torch.cdist(x.double(), result.centroids.double()).square()
    ambiguous = (d2 - d2.min(1, keepdim=True).values <= 2 * sq_distance_error(
        x, result.centroids)).sum(1) > 1
    assert not ambiguous.any()
    assert torch.equal(result.labels, d2.argmin(1))
    assert result.inertia == pytest.approx(float(d2.min(1).values.sum()), rel=gamma(17, U32))
    sk = KMeans(8, n_init=5, max_iter=20, random_state=0).fit(x.numpy())
    assert result.inertia <= 1.01 * sk.inertia_


def test_kmeans_harder_data_within_one_percent_of_sklearn():
    x, _ = _blobs(n=1500, k=20, d=32, spread=0.9, seed=1)  # overlapping clusters
    result = kmeans(x, 20, seed=0)
    sk = KMeans(20, n_init=5, max_iter=20, random_state=0).fit(x.numpy())
    assert result.inertia <= 1.01 * sk.inertia_


def test_kmeans_is_deterministic_for_a_seed_and_more_restarts_never_hurt():
    x, _ = _blobs(n=400, k=6, spread=1.0, seed=2)
    a, b = kmeans(x, 6, seed=3), kmeans(x, 6, seed=3)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centroids, b.centroids)
    one = kmeans(x, 6, n_restarts=1, seed=3)
    assert a.inertia <= one.inertia  # the first restart is the same draw


def test_kmeans_reseeds_an_empty_cluster():
    x, truth = _blobs(n=300, k=4, seed=4)
    x = x + 5.0  # far from the origin, where an empty cluster's plain mean would land
    init = x[:4].clone()
    init[3] = 100.0  # nobody is nearest to this centroid: its cluster starts empty
    result = kmeans(x, 4, init=init)
    assert torch.bincount(result.labels, minlength=4).min() > 0
    assert (result.centroids - 5.0).abs().max() < 2  # the far centroid moved onto the data
    assert _best_agreement(result.labels, truth, 4) == 1.0


def test_kmeans_chunking_changes_nothing():
    x, _ = _blobs(n=500, k=5, seed=5)
    a, b = kmeans(x, 5, seed=1), kmeans(x, 5, seed=1, chunk_size=7)
    # Products of another shape may round differently, which could change a label only where
    # two centroids are within the distances' error bound; no point is that close to a tie
    # here, so labels agree, and centroids (means of the same points, summed in the same
    # order) are bit-identical.
    d2 = torch.cdist(x.double(), a.centroids.double()).square()
    margin = d2.topk(2, dim=1, largest=False).values.diff(dim=1)[:, 0]
    assert (margin > 2 * sq_distance_error(x, a.centroids).max(1).values).all()
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.centroids, b.centroids)


def test_kmeans_k_equals_n_and_too_few_distinct_points():
    x = torch.randn(5, 3)
    result = kmeans(x, 5)
    # every point is its own centroid, and the distance to it is computed directly: exactly 0
    assert result.inertia == 0.0
    assert torch.equal(result.centroids[result.labels], x)
    dup = torch.tensor([[0.0, 0.0], [1.0, 1.0]]).repeat(5, 1)
    with pytest.warns(UserWarning, match="non-empty"):
        kmeans(dup, 3)


def test_kmeans_rejects_bad_input():
    with pytest.raises(ValueError, match=r"k=11 .*N=10"):
        kmeans(torch.randn(10, 2), 11)
    with pytest.raises(ValueError, match="k must be"):
        kmeans(torch.randn(10, 2), 0)
    bad = torch.randn(10, 2)
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        kmeans(bad, 2)
    with pytest.raises(ValueError, match="2-D"):
        kmeans(torch.randn(10), 2)
    with pytest.raises(ValueError, match="init"):
        kmeans(torch.randn(10, 2), 2, init=torch.randn(3, 2))


def test_soft_assign_is_softmax_of_cosine_over_tau():
    g = torch.Generator().manual_seed(0)
    z, centroids = torch.randn(7, 5, generator=g), torch.randn(3, 5, generator=g)
    p = soft_assign(z, centroids, tau=0.1)
    assert p.shape == (7, 3)
    assert torch.allclose(p.sum(1), torch.ones(7), atol=1e-6)
    for i in range(7):
        sims = torch.tensor(
            [torch.nn.functional.cosine_similarity(z[i], c, dim=0) for c in centroids]
        )
        expected = torch.exp(sims / 0.1) / torch.exp(sims / 0.1).sum()
        assert torch.allclose(p[i], expected, atol=1e-5)
    # cosine: the scale of z and of the centroids does not matter
    assert torch.allclose(soft_assign(3 * z, 0.5 * centroids), p, atol=1e-6)
    # a sharper temperature gives a lower entropy
    entropy = lambda q: -(q * q.log()).sum(1).mean()  # noqa: E731
    assert entropy(soft_assign(z, centroids, tau=0.05)) < entropy(p)


def test_soft_assign_rejects_bad_input():
    with pytest.raises(ValueError, match="same D"):
        soft_assign(torch.randn(4, 3), torch.randn(2, 5))
    with pytest.raises(ValueError, match="tau"):
        soft_assign(torch.randn(4, 3), torch.randn(2, 3), tau=0.0)


def test_soft_centroids_equals_a_hand_loop_and_has_gradients():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(6, 4, generator=g, requires_grad=True)
    p = torch.softmax(torch.randn(6, 3, generator=g), dim=1)
    centroids = soft_centroids(z, p, eps=1e-8)
    for j in range(3):
        num = sum(p[i, j] * z[i] for i in range(6))
        den = sum(p[i, j] for i in range(6)) + 1e-8
        assert torch.allclose(centroids[j], num / den, atol=1e-6)
    centroids.sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    # an unused cluster stays finite thanks to eps
    p0 = torch.cat([p, torch.zeros(6, 1)], dim=1)
    assert torch.isfinite(soft_centroids(z, p0)).all()
    with pytest.raises(ValueError, match="same N"):
        soft_centroids(torch.randn(5, 4), torch.rand(6, 3))
