"""Tests for ucdir_lite.losses: known values, invariances, gradients and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ucdir_lite.clustering import soft_assign, soft_centroids
from ucdir_lite.losses import (
    cluster_wise_loss,
    cluster_wise_supcon_loss,
    cross_domain_self_entropy_loss,
    distance_of_distance_loss,
    instance_wise_loss,
    prototype_confidence,
    sample_distance_of_distance_loss,
    self_entropy_loss,
)

DTYPE = torch.float64

# Tolerances. Most tests compare a float64 loss with a float64 Python loop: there pytest's
# default rel=1e-6 is ~1e9 times float64 rounding (gamma(n, U64) ~ 1e-15 for these few terms),
# so it absorbs only rounding, never a wrong formula. float32 hand values state their bound.


def unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    """n random L2-normalised rows of dimension d (float64, reproducible)."""
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=DTYPE), dim=1)


def separated_centroids(k: int, d: int, seed: int) -> torch.Tensor:
    """k well-separated centroids: orthonormal rows plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=DTYPE))
    return basis[:k] + 0.1 * torch.randn(k, d, generator=g, dtype=DTYPE)


def leaf(x: torch.Tensor) -> torch.Tensor:
    return x.clone().requires_grad_(True)


def assert_finite_nonzero_grad(x: torch.Tensor) -> None:
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


def log_sum_exp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def dot(u: torch.Tensor, v: torch.Tensor) -> float:
    return sum(float(a) * float(b) for a, b in zip(u, v, strict=True))


def cos(u: torch.Tensor, v: torch.Tensor) -> float:
    return dot(u, v) / math.sqrt(dot(u, u) * dot(v, v))


def softmax(values: list[float]) -> list[float]:
    lse = log_sum_exp(values)
    return [math.exp(v - lse) for v in values]


def entropy(p: list[float]) -> float:
    return -sum(x * math.log(x) for x in p if x > 0)


# --------------------------------------------------------------------------- instance-wise


def test_instance_wise_hand_value() -> None:
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[1.0, 0.0]])
    bank = torch.tensor([[0.0, 1.0], [5.0, 5.0]])  # slot 1 is the image's own: masked
    loss = instance_wise_loss(q, k, bank, torch.tensor([1]), tau=1.0)
    # logits [q.k, q.bank_0] = [1, 0]  ->  -log(e / (e + 1))
    # float32 on exact logits [1, 0]: one exp, one sum, one log: ~5 u32 = 3e-7 < rel 1e-6
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)


def test_instance_wise_matches_loop() -> None:
    q, k, bank = unit_rows(4, 3, 0), unit_rows(4, 3, 1), unit_rows(7, 3, 2)
    index = torch.tensor([5, 0, 3, 6])
    tau = 0.2
    expected = 0.0
    for b in range(4):
        logits = [dot(q[b], k[b]) / tau]
        logits += [dot(q[b], bank[n]) / tau for n in range(7) if n != int(index[b])]
        expected += (log_sum_exp(logits) - logits[0]) / 4
    assert instance_wise_loss(q, k, bank, index, tau=tau).item() == pytest.approx(expected)  # f64


def test_instance_wise_own_slot_is_not_a_negative() -> None:
    q, k, bank = unit_rows(3, 4, 3), unit_rows(3, 4, 4), unit_rows(6, 4, 5)
    index = torch.tensor([2, 4, 0])
    for b in range(3):  # one sample at a time: another sample's slot IS a negative
        own = int(index[b])
        with_key, with_opposite = bank.clone(), bank.clone()
        with_key[own] = k[b]
        with_opposite[own] = -k[b]
        args = (q[b : b + 1], k[b : b + 1])
        same = instance_wise_loss(*args, with_key, index[b : b + 1]).item()
        # float64, same shapes, only the masked slot differs: rel 1e-6 is far above rounding,
        # far below the O(1) change an unmasked slot (q.k vs -q.k, / tau) would make
        assert same == pytest.approx(
            instance_wise_loss(*args, with_opposite, index[b : b + 1]).item()
        )
    # ...whereas a slot that is not the sample's own is a negative and matters.
    other = bank.clone()
    other[1] = q[0]
    assert (
        instance_wise_loss(q, k, other, index).item() > instance_wise_loss(q, k, bank, index).item()
    )


def test_instance_wise_gradients_reach_q_only() -> None:
    q, k, bank = leaf(unit_rows(4, 3, 6)), leaf(unit_rows(4, 3, 7)), leaf(unit_rows(9, 3, 8))
    instance_wise_loss(q, k, bank, torch.tensor([0, 1, 2, 3])).backward()
    assert_finite_nonzero_grad(q)
    assert k.grad is None and bank.grad is None  # keys and bank are constants


# --------------------------------------------------------------------------- cluster-wise


def test_cluster_wise_hand_value() -> None:
    z = torch.tensor([[3.0, 0.0]])
    centroids = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # cosine ignores the norms
    # logits [1, 0]; default target = argmax = 0. float32, but the cosines are exact here:
    # ~5 u32 (3e-7) of exp/sum/log rounding < rel 1e-6
    assert cluster_wise_loss(z, centroids, tau=1.0).item() == pytest.approx(
        math.log(1 + math.exp(-1)), rel=1e-6
    )
    assert cluster_wise_loss(z, centroids, tau=1.0, labels=torch.tensor([1])).item() == (
        pytest.approx(math.log(1 + math.e), rel=1e-6)
    )


def test_cluster_wise_matches_loop() -> None:
    z, centroids, tau = unit_rows(6, 5, 9) * 2.0, unit_rows(3, 5, 10), 0.1
    expected = 0.0
    for i in range(6):
        logits = [cos(z[i], c) / tau for c in centroids]
        expected += (log_sum_exp(logits) - max(logits)) / 6
    assert cluster_wise_loss(z, centroids, tau=tau).item() == pytest.approx(expected)  # f64
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    expected = 0.0
    for i in range(6):
        logits = [cos(z[i], c) / tau for c in centroids]
        expected += (log_sum_exp(logits) - logits[int(labels[i])]) / 6
    assert cluster_wise_loss(z, centroids, tau, labels).item() == pytest.approx(expected)  # f64


def test_cluster_wise_gradients() -> None:
    z, centroids = leaf(unit_rows(6, 5, 11)), leaf(unit_rows(3, 5, 12))
    cluster_wise_loss(z, centroids).backward()
    assert_finite_nonzero_grad(z)
    assert_finite_nonzero_grad(centroids)


def test_supcon_hand_value() -> None:
    q = torch.tensor([[1.0, 0.0]])
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    bank_labels, labels = torch.tensor([0, 0, 1]), torch.tensor([0])
    # log-softmax of [1, 0, -1]; positives are slots 0 and 1. float32 on exact logits: a few
    # u32 of exp/sum/log rounding (< 4e-7 relative) < rel 1e-6, here and below
    lse = log_sum_exp([1.0, 0.0, -1.0])
    expected = -((1.0 - lse) + (0.0 - lse)) / 2
    loss = cluster_wise_supcon_loss(q, labels, bank, bank_labels, tau=1.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # own slot 0 removed: positives {1}, denominator over slots {1, 2}
    loss = cluster_wise_supcon_loss(q, labels, bank, bank_labels, tau=1.0, index=torch.tensor([0]))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)


def test_supcon_matches_loop() -> None:
    q, bank, tau = unit_rows(5, 4, 13), unit_rows(9, 4, 14), 0.2
    labels = torch.tensor([0, 1, 2, 1, 0])
    bank_labels = torch.tensor([0, 1, 1, 2, 0, 2, 1, 0, 2])
    index = torch.tensor([0, 2, 3, 6, 8])
    keep = torch.tensor([True, True, False, True, True])
    per_sample = []
    for i in range(5):
        if not keep[i]:
            continue
        slots = [n for n in range(9) if n != int(index[i])]
        lse = log_sum_exp([dot(q[i], bank[n]) / tau for n in slots])
        positives = [n for n in slots if int(bank_labels[n]) == int(labels[i])]
        per_sample.append(-sum(dot(q[i], bank[n]) / tau - lse for n in positives) / len(positives))
    expected = sum(per_sample) / len(per_sample)
    loss = cluster_wise_supcon_loss(q, labels, bank, bank_labels, tau, keep=keep, index=index)
    assert loss.item() == pytest.approx(expected)  # float64: default rel far above rounding


def test_supcon_skips_samples_without_positives_and_returns_graph_zero() -> None:
    q = leaf(unit_rows(2, 3, 15))
    bank, bank_labels = unit_rows(4, 3, 16), torch.tensor([0, 0, 1, 1])
    labels = torch.tensor([0, 5])  # label 5 has no positive in the bank
    only_first = cluster_wise_supcon_loss(q[:1], labels[:1], bank, bank_labels)
    both = cluster_wise_supcon_loss(q, labels, bank, bank_labels)
    assert both.item() == pytest.approx(only_first.item())  # f64, 1 vs 2 rows: rounding only
    keep = torch.tensor([False, True])
    nothing = cluster_wise_supcon_loss(q, labels, bank, bank_labels, keep=keep)
    assert nothing.item() == 0.0 and nothing.requires_grad  # q.sum() * 0.0: exactly 0
    nothing.backward()
    assert torch.equal(q.grad, torch.zeros_like(q))  # d(q.sum() * 0.0)/dq = 0.0: exact


def test_supcon_gradients_reach_q_only() -> None:
    q, bank = leaf(unit_rows(5, 4, 17)), leaf(unit_rows(8, 4, 18))
    labels, bank_labels = torch.tensor([0, 1, 0, 1, 1]), torch.tensor([0, 1] * 4)
    cluster_wise_supcon_loss(q, labels, bank, bank_labels, index=torch.arange(5)).backward()
    assert_finite_nonzero_grad(q)
    assert bank.grad is None


def test_prototype_confidence_hand_value() -> None:
    k = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    centroids = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    conf = prototype_confidence(k, centroids, torch.tensor([0, 1]), tau=1.0)
    # float32 softmax of exact logits [1, 0]: exp, sum, divide: ~3 u32 (2e-7) < rel 1e-6
    assert conf.tolist() == pytest.approx([math.e / (math.e + 1), 1 / (math.e + 1)], rel=1e-6)


# --------------------------------------------------------------------------- self-entropy


def test_self_entropy_one_hot_is_zero_and_uniform_is_log_k() -> None:
    one_hot = F.one_hot(torch.tensor([2, 0, 1, 2]), 4).to(DTYPE)
    assert self_entropy_loss(one_hot).item() == 0.0  # 1 * log 1 and 0 * log(tiny): exactly 0
    uniform = torch.full((3, 7), 1 / 7, dtype=DTYPE)
    assert self_entropy_loss(uniform).item() == pytest.approx(math.log(7))  # float64


def test_self_entropy_hand_value_and_safe_gradient_at_zero() -> None:
    p = leaf(torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [1.0, 0.0, 0.0]], dtype=DTYPE))
    expected = (math.log(2) + entropy([0.2, 0.3, 0.5]) + 0.0) / 3
    loss = self_entropy_loss(p)
    assert loss.item() == pytest.approx(expected)  # float64: default rel far above rounding
    loss.backward()
    assert torch.isfinite(p.grad).all()


def test_self_entropy_gradient_through_softmax() -> None:
    logits = leaf(torch.randn(5, 4, generator=torch.Generator().manual_seed(19), dtype=DTYPE))
    self_entropy_loss(F.softmax(logits, dim=1)).backward()
    assert_finite_nonzero_grad(logits)


def test_cross_domain_self_entropy_matches_loop() -> None:
    z_a, z_b = unit_rows(4, 3, 20), unit_rows(5, 3, 21)
    c_a, c_b, tau = unit_rows(3, 3, 22), unit_rows(3, 3, 23), 0.05
    expected = 0.0
    for z in (z_a, z_b):
        for c in (c_a, c_b):
            rows = [softmax([cos(x, cj) / tau for cj in c]) for x in z]
            expected += sum(entropy(p) for p in rows) / len(z) / 4
    loss = cross_domain_self_entropy_loss(z_a, z_b, c_a, c_b, tau=tau)
    assert loss.item() == pytest.approx(expected)  # float64: default rel far above rounding


def test_cross_domain_self_entropy_gradients() -> None:
    z_a, z_b = leaf(unit_rows(4, 3, 24)), leaf(unit_rows(5, 3, 25))
    c_a, c_b = leaf(unit_rows(3, 3, 26)), leaf(unit_rows(3, 3, 27))
    cross_domain_self_entropy_loss(z_a, z_b, c_a, c_b, tau=0.5).backward()
    for x in (z_a, z_b, c_a, c_b):
        assert_finite_nonzero_grad(x)


# --------------------------------------------------------------------------- distance of distance


def test_dod_hand_value() -> None:
    c_a = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    c_b = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    # |1 - 2| twice, |1 - 1| twice, |sqrt2 - sqrt5| twice, over K^2 = 9 pairs
    expected = (2 * 1.0 + 2 * (math.sqrt(5) - math.sqrt(2))) / 9
    loss = distance_of_distance_loss(c_a, c_b, matching=torch.arange(3))
    # float32: squared distances exact, two sqrt roundings per |sqrt2 - sqrt5| term, a 9-term
    # mean (gamma(8)): <= ~12 u32 = 7e-7 relative < rel 1e-6 (both asserts)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # matching reorders B: matching[i] is B's cluster for A's cluster i
    loss = distance_of_distance_loss(c_a, c_b[[2, 0, 1]], matching=torch.tensor([1, 2, 0]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("k", [5, 6, 7, 8])
def test_dod_invariant_to_cluster_numbering(k: int) -> None:
    c_a = separated_centroids(k, 16, seed=k)
    g = torch.Generator().manual_seed(100 + k)
    c_b = c_a + 0.1 * torch.randn(c_a.shape, generator=g, dtype=DTYPE)
    reference = distance_of_distance_loss(c_a, c_b, matching=torch.arange(k)).item()
    assert reference > 1e-3
    perm = torch.randperm(k, generator=g)
    # float64; the float64 OT matching must find the identity (c_b is c_a plus 0.1 noise, the
    # clusters ~1.4 apart: no near-tie). Default rel: far above reordering rounding (~1e-15)
    assert distance_of_distance_loss(c_a, c_b).item() == pytest.approx(reference)
    assert distance_of_distance_loss(c_a[perm], c_b).item() == pytest.approx(reference)
    assert distance_of_distance_loss(c_a, c_b[perm]).item() == pytest.approx(reference)


@pytest.mark.parametrize("k", [5, 8])
def test_dod_zero_for_permuted_rotated_copy(k: int) -> None:
    c_a = separated_centroids(k, 16, seed=200 + k)
    g = torch.Generator().manual_seed(300 + k)
    perm = torch.randperm(k, generator=g)
    inverse = torch.argsort(perm)  # B_j = A_perm[j], so A_i is matched to B_inverse[i]
    # any rotation, with the true matching given
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=DTYPE))
    c_b = (c_a @ rotation)[perm]
    # float64: a rotation keeps the distances up to ~gamma(16, U64) ~ 1e-15: abs 1e-6 is far
    # above (here and for the small rotation below)
    assert distance_of_distance_loss(c_a, c_b, matching=inverse).item() == pytest.approx(
        0.0, abs=1e-6
    )
    # a small rotation, with the default OT matching
    skew = torch.randn(16, 16, generator=g, dtype=DTYPE)
    small = torch.linalg.matrix_exp(0.02 * (skew - skew.T))
    c_b = (c_a @ small)[perm]
    assert distance_of_distance_loss(c_a, c_b).item() == pytest.approx(0.0, abs=1e-6)


def test_dod_gradients_finite_even_for_coinciding_centroids() -> None:
    c_a = leaf(separated_centroids(5, 8, seed=400))
    base = separated_centroids(5, 8, seed=401)
    base[3] = base[2]  # two coinciding centroids: a zero off-diagonal distance
    c_b = leaf(base)
    distance_of_distance_loss(c_a, c_b, matching=torch.arange(5)).backward()
    assert_finite_nonzero_grad(c_a)
    assert_finite_nonzero_grad(c_b)


def test_dod_gradients_reach_encoder_through_batch_centroids() -> None:
    g = torch.Generator().manual_seed(500)
    encoder = torch.nn.Linear(8, 4).double()
    x_a = torch.randn(32, 8, generator=g, dtype=DTYPE)
    x_b = torch.randn(32, 8, generator=g, dtype=DTYPE) + 0.5
    batch_centroids = []
    for x in (x_a, x_b):
        z = F.normalize(encoder(x), dim=1)
        p = soft_assign(z, z.detach()[:3], tau=0.1)
        batch_centroids.append(soft_centroids(z, p))
    loss = distance_of_distance_loss(*batch_centroids)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert_finite_nonzero_grad(encoder.weight)
    assert_finite_nonzero_grad(encoder.bias)


def test_sample_dod_matches_loop() -> None:
    z, c_a, c_b, tau = unit_rows(4, 3, 600), unit_rows(3, 3, 601), unit_rows(5, 3, 602), 0.5
    p_a = [softmax([cos(x, c) / tau for c in c_a]) for x in z]
    p_b = [softmax([cos(x, c) / tau for c in c_b]) for x in z]

    def cos_lists(u: list[float], v: list[float]) -> float:
        return cos(torch.tensor(u, dtype=DTYPE), torch.tensor(v, dtype=DTYPE))  # no f32 step

    expected = (
        sum(
            ((1 - cos_lists(p_a[i], p_a[j])) - (1 - cos_lists(p_b[i], p_b[j]))) ** 2
            for i in range(4)
            for j in range(4)
        )
        / 4  # summed over j, averaged over the B = 4 samples i (the official scale)
    )
    loss = sample_distance_of_distance_loss(z, c_a, c_b, tau=tau)
    assert loss.item() == pytest.approx(expected)  # float64: default rel far above rounding


def test_sample_dod_zero_for_renumbered_prototypes_and_gradients() -> None:
    z, c_a = leaf(unit_rows(6, 4, 603)), leaf(unit_rows(3, 4, 604))
    renumbered = c_a.detach()[[2, 0, 1]]
    # float64: p_b is p_a with its columns permuted, the M entries differ by reordered 3-term
    # sums (~1e-16), their squared differences by ~1e-32: abs 1e-12 is far above
    assert sample_distance_of_distance_loss(z, c_a, renumbered, tau=0.1).item() == (
        pytest.approx(0.0, abs=1e-12)
    )
    c_b = leaf(unit_rows(3, 4, 605))
    sample_distance_of_distance_loss(z, c_a, c_b, tau=0.5).backward()
    for x in (z, c_a, c_b):
        assert_finite_nonzero_grad(x)


# --------------------------------------------------------------------------- bad input


def test_feature_dimension_mismatch_names_both_shapes() -> None:
    z, c = torch.zeros(4, 3), torch.zeros(2, 5)
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(2, 5\)"):
        cluster_wise_loss(z, c)
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(2, 5\)"):
        instance_wise_loss(z, z, c, torch.arange(4))
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(2, 5\)"):
        sample_distance_of_distance_loss(z, torch.zeros(2, 3), c)
    with pytest.raises(ValueError, match="feature dimensions differ"):
        cross_domain_self_entropy_loss(z, z, torch.zeros(2, 3), c)


@pytest.mark.parametrize(
    "index, message",
    [
        (torch.tensor([0, 1, 9]), r"\[0, 6\)"),
        (torch.tensor([0.0, 1.0, 2.0]), "integers"),
        (torch.tensor([0, 1]), r"shape \(3,\)"),
    ],
)
def test_instance_wise_bad_index(index: torch.Tensor, message: str) -> None:
    q = unit_rows(3, 2, 700)
    with pytest.raises(ValueError, match=message):
        instance_wise_loss(q, q, unit_rows(6, 2, 701), index)


def test_bad_tau_and_shapes() -> None:
    z, c = unit_rows(4, 3, 702), unit_rows(2, 3, 703)
    with pytest.raises(ValueError, match="tau"):
        cluster_wise_loss(z, c, tau=0.0)
    with pytest.raises(ValueError, match="2-D"):
        cluster_wise_loss(z[0], c)
    with pytest.raises(ValueError, match="labels"):
        cluster_wise_loss(z, c, labels=torch.tensor([0, 1, 2, 0]))  # 2 is not a cluster
    with pytest.raises(ValueError, match="keep"):
        cluster_wise_supcon_loss(
            z,
            torch.zeros(4, dtype=torch.long),
            c,
            torch.zeros(2, dtype=torch.long),
            keep=torch.ones(4),
        )


@pytest.mark.parametrize(
    "p, message",
    [
        (torch.tensor([[0.5, 0.6]]), "sum to 1"),
        (torch.tensor([[1.5, -0.5]]), "non-negative"),
        (torch.tensor([0.5, 0.5]), "2-D"),
    ],
)
def test_self_entropy_rejects_non_probabilities(p: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        self_entropy_loss(p)


def test_dod_bad_input() -> None:
    c = unit_rows(4, 3, 704)
    with pytest.raises(ValueError, match="same number of clusters"):
        distance_of_distance_loss(c, unit_rows(5, 3, 705))
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(4, 6\)"):
        distance_of_distance_loss(c, unit_rows(4, 6, 706))
    with pytest.raises(ValueError, match="permutation"):
        distance_of_distance_loss(c, c, matching=torch.tensor([0, 0, 1, 2]))
    with pytest.raises(ValueError, match="epsilon"):
        distance_of_distance_loss(c, c, epsilon=-1.0)
