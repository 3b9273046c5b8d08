"""ucdir_lite.diagnostics against hand-made features whose answers are known."""

import math

import pytest
import torch

from ucdir_lite.diagnostics import (
    class_mean_dod,
    class_means,
    cross_domain_cosine,
    diagnose,
    matched_majority_share,
    purity,
)


def test_class_means_and_cross_domain_cosine():
    z = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 1])
    means = class_means(z, labels, [0, 1])
    assert means.tolist() == [[2.0, 0.0], [0.0, 2.0]]
    rotated = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # each class's mean turned by 90 degrees
    assert cross_domain_cosine(means, means) == pytest.approx(1.0)
    assert cross_domain_cosine(means, rotated) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="class 5"):
        class_means(z, labels, [0, 5])


def test_class_mean_dod_true_and_wrong_matching():
    a = torch.eye(3)
    b = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])  # c2 moved
    # pairwise distances: A all sqrt(2); B: d01 = sqrt(2), d02 = d12 = 1 after normalising c2
    # to (1, 1, 0) / sqrt(2): |c0 - c2| = sqrt((1 - 1/sqrt2)^2 + 1/2)
    d = math.sqrt((1 - 1 / math.sqrt(2)) ** 2 + 0.5)
    expected = 4 * abs(math.sqrt(2) - d) / 9  # 4 of the 9 ordered pairs differ
    assert class_mean_dod(a, b) == pytest.approx(expected, rel=1e-6)
    assert class_mean_dod(a, a[[2, 0, 1]]) == pytest.approx(0.0, abs=1e-7)  # equidistant


def test_purity_and_matched_majority_share():
    clusters = torch.tensor([0, 0, 0, 1, 1, 2])
    classes = torch.tensor([5, 5, 6, 6, 6, 7])
    assert purity(clusters, classes) == pytest.approx(100 * 5 / 6)
    # B's cluster 1 has majority 5, cluster 0 majority 6, cluster 2 majority 8
    clusters_b = torch.tensor([1, 1, 0, 2])
    classes_b = torch.tensor([5, 5, 6, 8])
    right = torch.tensor([1, 0, 2])  # A0 (5) - B1 (5), A1 (6) - B0 (6), A2 (7) - B2 (8)
    assert matched_majority_share(clusters, classes, clusters_b, classes_b, right) == (
        pytest.approx(100 * 2 / 3))
    wrong = torch.tensor([0, 1, 2])
    assert matched_majority_share(clusters, classes, clusters_b, classes_b, wrong) == 0.0


def test_diagnose_on_planted_classes():
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=1)
    labels = torch.arange(4).repeat_interleave(25)
    za = centres[labels] + 0.05 * torch.randn(100, 16, generator=g)
    zb = centres[labels] + 0.05 * torch.randn(100, 16, generator=g)
    out = diagnose(za, labels, zb, labels, num_clusters=4, seed=0)
    assert out["purity_A"] == out["purity_B"] == 100.0
    assert out["matched_same"] == 100.0
    assert out["cross_cos"] > 0.95 and out["dod_true"] < out["dod_random"]
