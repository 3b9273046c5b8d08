"""The UCDIR losses: instance-wise, cluster-wise, self-entropy and distance-of-distance.

Each function is one equation of the paper (Hu & Lee, ECCV 2022; book chapters 2-5)
or of its official code, written with the book's symbols: ``z`` features, ``p`` soft assignments,
``centroids`` cluster centres, ``tau`` temperatures, ``epsilon`` the entropic OT
regulariser. Features are rows of shape ``(N, D)``, centroids ``(K, D)``.

Every loss returns a scalar tensor *averaged* over the batch (the paper writes sums; we
put ``1/N`` in front), so that a loss weight does not depend on the batch size.

References
----------
- C. Hu and G. H. Lee, "Feature Representation Learning for Unsupervised Cross-domain
  Image Retrieval", ECCV 2022, arXiv:2207.09721 (UCDIR).
- K. He et al., "Momentum Contrast for Unsupervised Visual Representation Learning",
  CVPR 2020, arXiv:1911.05722 (MoCo, InfoNCE with a memory of keys).
- Prannay Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020, arXiv:2004.11362.
- M. Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport",
  NeurIPS 2013 (the entropic OT used to match clusters).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ucdir_lite.clustering import cosine_logits

__all__ = [
    "instance_wise_loss",
    "cluster_wise_loss",
    "cluster_wise_supcon_loss",
    "prototype_confidence",
    "self_entropy_loss",
    "cross_domain_self_entropy_loss",
    "distance_of_distance_loss",
    "sample_distance_of_distance_loss",
]


# --------------------------------------------------------------------------- checks


def _check_matrix(name: str, x: torch.Tensor) -> None:
    """Raise ValueError unless ``x`` is a 2-D floating-point tensor with at least one row."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if x.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D (rows, features), got shape {tuple(x.shape)}; "
            "reshape it with .reshape(n, -1)."
        )
    if not x.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor, got dtype {x.dtype}; use .float()."
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); pass at least one row.")


def _check_features(**matrices: torch.Tensor) -> None:
    """Each of ``matrices`` a non-empty 2-D float tensor, all with the first one's number of
    columns (the feature dimension D)."""
    for name, x in matrices.items():
        _check_matrix(name, x)
    (first, x), *others = matrices.items()
    for name, y in others:
        _check_same_dim(first, x, name, y)


def _check_same_dim(name_x: str, x: torch.Tensor, name_y: str, y: torch.Tensor) -> None:
    """Raise ValueError unless ``x`` and ``y`` have the same feature dimension (dim 1)."""
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"feature dimensions differ: {name_x} has shape {tuple(x.shape)} and {name_y} "
            f"has shape {tuple(y.shape)}; both must have the same number of columns."
        )


def _check_same_rows(name_x: str, x: torch.Tensor, name_y: str, y: torch.Tensor) -> None:
    """Raise ValueError unless ``x`` and ``y`` have the same number of rows (dim 0)."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{name_x} has shape {tuple(x.shape)} and {name_y} has shape {tuple(y.shape)}; "
            "they must have the same number of rows (one per sample)."
        )


def _check_positive(name: str, value: float) -> None:
    """Raise ValueError unless ``value`` is a finite number > 0 (a temperature, epsilon)."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")


def _check_index(name: str, index: torch.Tensor, length: int, upper: int) -> None:
    """Raise ValueError unless ``index`` is an integer vector of ``length`` values in [0, upper)."""
    if not isinstance(index, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of integers, got {type(index).__name__}.")
    if index.dtype in (torch.bool,) or index.is_floating_point() or index.is_complex():
        raise ValueError(f"{name} must hold integers, got dtype {index.dtype}; use .long().")
    if tuple(index.shape) != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {tuple(index.shape)}.")
    if length and (int(index.min()) < 0 or int(index.max()) >= upper):
        raise ValueError(
            f"{name} must lie in [0, {upper}), got values in "
            f"[{int(index.min())}, {int(index.max())}]."
        )


def _check_labels(name: str, labels: torch.Tensor, length: int) -> None:
    """Raise ValueError unless ``labels`` is an integer vector of ``length`` values."""
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of integers, got {type(labels).__name__}.")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"{name} must hold integers, got dtype {labels.dtype}; use .long().")
    if tuple(labels.shape) != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {tuple(labels.shape)}.")


# --------------------------------------------------------------------------- helpers


def _assign(z: torch.Tensor, centroids: torch.Tensor, tau: float) -> torch.Tensor:
    """``clustering.soft_assign`` without its checks (the calling loss checked its inputs)."""
    return torch.softmax(cosine_logits(z, centroids, tau), dim=1)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Mean row entropy ``(1/N) sum_i -sum_j p_ij log p_ij`` with ``0 log 0 = 0``.

    ``log`` sees ``max(p, tiny)``, so an exact zero gives the value 0 and a finite gradient.
    """
    tiny = torch.finfo(p.dtype).tiny
    return -(p * torch.log(p.clamp_min(tiny))).sum(dim=1).mean()


def _pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``||x_i - x_j||_2`` of the rows of ``x``: shape (K, K).

    Where a distance is 0 (the diagonal, coinciding rows) the square root is not taken,
    so the gradient there is 0 instead of ``sqrt'(0) = inf`` (which would give NaNs).
    """
    squared = (x[:, None, :] - x[None, :, :]).pow(2).sum(dim=-1)
    positive = squared > 0
    safe = torch.where(positive, squared, torch.ones_like(squared))
    return torch.where(positive, safe.sqrt(), torch.zeros_like(squared))


# --------------------------------------------------------------------------- §1 instance-wise


def instance_wise_loss(
    q: torch.Tensor,
    k: torch.Tensor,
    bank: torch.Tensor,
    index: torch.Tensor,
    tau: float = 0.2,
) -> torch.Tensor:
    r"""Instance-wise contrastive loss L_IW (InfoNCE against a memory bank); book chapter 2.

    .. math::
        \mathcal{L}_{IW} = -\frac{1}{B}\sum_{b=1}^{B}\log
        \frac{\exp(q_b\cdot k_b/\tau)}{\exp(q_b\cdot k_b/\tau)
        + \sum_{n\ne \mathrm{index}_b}\exp(q_b\cdot \mathrm{bank}_n/\tau)}

    The positive of query ``q_b`` is the key ``k_b`` of the other view of the same image;
    the negatives are every slot of this domain's bank except the image's own slot
    ``index[b]`` (that slot holds an older key of the same image, not a negative).

    Args:
        q: (B, D) query features from the encoder being trained (gradients flow here).
        k: (B, D) key features from the momentum encoder (treated as constants).
        bank: (N, D) memory bank of this domain, one slot per image (constant).
        index: (B,) integer bank slots of the batch images.
        tau: temperature (the paper protocol uses 0.2).

    Returns:
        Scalar tensor: cross-entropy with the positive at position 0, mean over the batch.

    References: MoCo (arXiv:1911.05722), eq. (1); UCDIR (arXiv:2207.09721), §3.1.
    """
    _check_features(q=q, k=k, bank=bank)
    _check_same_rows("q", q, "k", k)
    _check_index("index", index, q.shape[0], bank.shape[0])
    _check_positive("tau", tau)

    positive = (q * k.detach()).sum(dim=1, keepdim=True)  # (B, 1)
    negatives = q @ bank.detach().T  # (B, N)
    own_slot = F.one_hot(index.long().to(q.device), bank.shape[0]).bool()
    negatives = negatives.masked_fill(own_slot, float("-inf"))
    logits = torch.cat([positive, negatives], dim=1) / tau
    target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, target)


# --------------------------------------------------------------------------- §3 cluster-wise


def cluster_wise_loss(
    z: torch.Tensor,
    centroids: torch.Tensor,
    tau: float = 0.1,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Cluster-wise contrastive loss L_CW (tutorial form); book chapter 3.

    .. math::
        \mathcal{L}_{CW} = -\frac{1}{N}\sum_{i=1}^{N}\log
        \frac{\exp(\mathrm{sim}(z_i,c_{y_i})/\tau)}{\sum_{j=1}^{K}\exp(\mathrm{sim}(z_i,c_j)/\tau)},
        \qquad y_i = \arg\max_j p_{ij}

    Pulls each sample towards its own cluster's centroid and away from the others. The
    paper's sum is divided by N. ``argmax_j p_ij`` equals the argmax of the logits, since
    ``p_ij`` is their softmax. The trainer passes detached centroids; nothing is detached
    here, so gradients reach ``centroids`` when they carry a graph.

    Args:
        z: (N, D) features (need not be normalised: ``sim`` is the cosine similarity).
        centroids: (K, D) cluster centroids ``c_j`` of the same domain.
        tau: temperature.
        labels: optional (N,) integer cluster targets ``y_i`` in [0, K) (e.g. k-means
            labels); by default ``y_i = argmax_j p_ij``.

    Returns:
        Scalar tensor, mean over the N samples.

    Reference: UCDIR (arXiv:2207.09721), §3.2, eq. (3).
    """
    _check_features(z=z, centroids=centroids)
    _check_positive("tau", tau)
    logits = cosine_logits(z, centroids, tau)
    if labels is None:
        target = logits.detach().argmax(dim=1)
    else:
        _check_index("labels", labels, z.shape[0], centroids.shape[0])
        target = labels.long().to(z.device)
    return F.cross_entropy(logits, target)


def cluster_wise_supcon_loss(
    q: torch.Tensor,
    labels: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    tau: float = 0.2,
    keep: torch.Tensor | None = None,
    index: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Cluster-wise loss, official-code variant: SupCon over the bank; book chapter 3.

    With ``P(i)`` the bank slots sharing sample i's cluster label (its own slot removed)
    and ``A(i)`` all bank slots except its own slot,

    .. math::
        \ell_i = -\frac{1}{|P(i)|}\sum_{p\in P(i)}\log
        \frac{\exp(q_i\cdot \mathrm{bank}_p/\tau)}
        {\sum_{n\in A(i)}\exp(q_i\cdot \mathrm{bank}_n/\tau)},
        \qquad \mathcal{L} = \frac{1}{|I|}\sum_{i\in I}\ell_i

    where ``I`` holds the kept samples (``keep[i]``) that have at least one positive.
    If ``I`` is empty the loss is a zero that still carries the graph of ``q``.

    Args:
        q: (B, D) query features (gradients flow here).
        labels: (B,) integer cluster labels of the batch (k-means labels, not classes).
        bank: (N, D) memory bank of this domain (constant).
        bank_labels: (N,) integer cluster labels of the bank slots.
        tau: temperature.
        keep: optional (B,) bool mask of the samples that enter the loss, e.g.
            ``prototype_confidence(k, centroids, labels) >= 0.2``.
        index: optional (B,) bank slots of the batch images; each sample's own slot is
            removed from its positives and from the denominator.

    Returns:
        Scalar tensor, mean over the samples in ``I``.

    References: SupCon (arXiv:2004.11362), eq. (2) ("L_out"); UCDIR official code.
    """
    _check_features(q=q, bank=bank)
    batch, slots = q.shape[0], bank.shape[0]
    _check_labels("labels", labels, batch)
    _check_labels("bank_labels", bank_labels, slots)
    _check_positive("tau", tau)
    if keep is None:
        keep = torch.ones(batch, dtype=torch.bool, device=q.device)
    elif not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool:
        raise ValueError(
            f"keep must be a bool tensor of shape ({batch},), e.g. (confidence >= 0.2)."
        )
    elif tuple(keep.shape) != (batch,):
        raise ValueError(f"keep must have shape ({batch},), got {tuple(keep.shape)}.")

    logits = q @ bank.detach().T / tau  # (B, N)
    positives = labels.to(q.device)[:, None] == bank_labels.to(q.device)[None, :]
    if index is not None:
        _check_index("index", index, batch, slots)
        own_slot = F.one_hot(index.long().to(q.device), slots).bool()
        positives = positives & ~own_slot
        # A finite fill (not -inf) keeps a row finite even if every slot is masked.
        logits = logits.masked_fill(own_slot, torch.finfo(logits.dtype).min)
    log_prob = F.log_softmax(logits, dim=1)
    n_positives = positives.sum(dim=1)
    selected = keep.to(q.device) & (n_positives > 0)
    if not bool(selected.any()):
        return q.sum() * 0.0
    positive_log_prob = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    per_sample = -positive_log_prob / n_positives.clamp_min(1)
    return per_sample[selected].mean()


def prototype_confidence(
    k: torch.Tensor,
    centroids: torch.Tensor,
    labels: torch.Tensor,
    tau: float = 0.2,
) -> torch.Tensor:
    r"""Confidence of each key in its own prototype (official-code sample filter); book chapter 3.

    .. math::
        \mathrm{conf}_b = \frac{\exp(\mathrm{sim}(k_b, c_{y_b})/\tau)}
        {\sum_{j=1}^{K}\exp(\mathrm{sim}(k_b, c_j)/\tau)}

    Args:
        k: (B, D) key features (momentum encoder).
        centroids: (K, D) prototypes of the same domain.
        labels: (B,) integer cluster labels ``y_b`` in [0, K).
        tau: temperature.

    Returns:
        (B,) probabilities in (0, 1]; the official code keeps samples with ``conf >= 0.2``.

    Reference: UCDIR official code (github.com/conghuihu/UCDIR).
    """
    _check_features(k=k, centroids=centroids)
    _check_index("labels", labels, k.shape[0], centroids.shape[0])
    _check_positive("tau", tau)
    return _assign(k, centroids, tau).gather(1, labels.long().to(k.device)[:, None]).squeeze(1)


# --------------------------------------------------------------------------- §4 self-entropy


def self_entropy_loss(p: torch.Tensor) -> torch.Tensor:
    r"""Self-entropy loss L_SE of soft assignments; book chapter 4.

    .. math::
        \mathcal{L}_{SE} = -\frac{1}{N}\sum_{i=1}^{N}\sum_{j=1}^{K} p_{ij}\log p_{ij}

    with ``0 log 0 = 0`` (value 0 and a finite gradient at ``p_ij = 0``). It is 0 for
    one-hot rows and ``log K`` for uniform rows; minimising it makes each sample commit
    to one cluster. The paper's sum is divided by N.

    Args:
        p: (N, K) soft assignments (non-negative rows summing to 1), e.g. ``soft_assign``.

    Returns:
        Scalar tensor, mean over the N rows.

    Reference: UCDIR (arXiv:2207.09721), §3.3.
    """
    _check_matrix("p", p)
    p_values = p.detach()
    if bool((p_values < 0).any()):
        raise ValueError(
            "p must be non-negative (probabilities), got a minimum of "
            f"{float(p_values.min()):.4g}; pass softmax outputs, not logits."
        )
    row_error = float((p_values.sum(dim=1) - 1).abs().max())
    if not row_error <= 1e-3:
        raise ValueError(
            f"each row of p must sum to 1 (within 1e-3), got an error of {row_error:.4g}; "
            "normalise with p / p.sum(dim=1, keepdim=True) or use a softmax over dim=1."
        )
    return _entropy(p)


def cross_domain_self_entropy_loss(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    centroids_a: torch.Tensor,
    centroids_b: torch.Tensor,
    tau: float = 0.05,
) -> torch.Tensor:
    r"""Self-entropy, official-code variant: own and other domain's prototypes; book chapter 4.

    .. math::
        \mathcal{L} = \frac{1}{4}\sum_{x\in\{A,B\}}\sum_{y\in\{A,B\}}
        \mathcal{L}_{SE}\big(\mathrm{softmax}_j(\mathrm{sim}(z^x_i, c^y_j)/\tau)\big)

    Each sample commits to one cluster of its own domain *and* of the other domain.

    Args:
        z_a: (N_a, D) features of domain A.
        z_b: (N_b, D) features of domain B.
        centroids_a: (K_a, D) prototypes of domain A.
        centroids_b: (K_b, D) prototypes of domain B.
        tau: temperature (low: 0.01-0.1 in the official code).

    Returns:
        Scalar tensor: the mean of the four (batch-averaged) entropies.

    Reference: UCDIR (arXiv:2207.09721), §3.3, and its official code.
    """
    _check_features(z_a=z_a, z_b=z_b, centroids_a=centroids_a, centroids_b=centroids_b)
    _check_positive("tau", tau)
    entropies = [
        _entropy(_assign(z, centroids, tau))
        for z in (z_a, z_b)
        for centroids in (centroids_a, centroids_b)
    ]
    return torch.stack(entropies).mean()


# ------------------------------------------------------------------- §5 distance of distance


def distance_of_distance_loss(
    centroids_a: torch.Tensor,
    centroids_b: torch.Tensor,
    matching: torch.Tensor | None = None,
    epsilon: float = 0.05,
) -> torch.Tensor:
    r"""Distance-of-distance loss L_DD between OT-matched clusters; book chapter 5.

    .. math::
        \mathcal{L}_{DD} = \frac{1}{K^2}\sum_{i,j}\Big|\,\|c^A_i-c^A_j\|_2
        - \|c^B_{\pi(i)}-c^B_{\pi(j)}\|_2\,\Big|

    ``pi`` is the one-to-one matching read off the entropic OT plan between the two
    centroid sets (``transport.match_clusters``: cost ``||c^A_i - c^B_j||^2``, regulariser
    ``epsilon`` relative to the cost's scale), computed on detached centroids. The paper's
    sum is divided by ``K^2`` (a mean over all pairs, the zero diagonal included). The
    value does not depend on how either domain numbers its clusters. Gradients flow to
    both centroid sets; zero distances (the diagonal) contribute a zero gradient, not NaN.

    Args:
        centroids_a: (K, D) centroids of domain A (e.g. batch estimates from
            ``soft_centroids``, so that gradients reach the encoder).
        centroids_b: (K, D) centroids of domain B.
        matching: optional (K,) permutation, ``matching[i]`` = the cluster of B matched
            to cluster i of A; by default from ``match_clusters``.
        epsilon: entropic regulariser of the Sinkhorn matching (ignored with ``matching``).

    Returns:
        Scalar tensor.

    References: UCDIR (arXiv:2207.09721), §3.4; Cuturi (NeurIPS 2013).
    """
    _check_matrix("centroids_a", centroids_a)
    _check_matrix("centroids_b", centroids_b)
    if centroids_a.shape != centroids_b.shape:
        raise ValueError(
            f"centroids_a has shape {tuple(centroids_a.shape)} and centroids_b has shape "
            f"{tuple(centroids_b.shape)}; both domains need the same number of clusters K "
            "and the same feature dimension D."
        )
    n_clusters = centroids_a.shape[0]
    if matching is None:
        _check_positive("epsilon", epsilon)
        from ucdir_lite.transport import match_clusters

        matching = match_clusters(centroids_a.detach(), centroids_b.detach(), epsilon=epsilon)
    else:
        _check_index("matching", matching, n_clusters, n_clusters)
        if torch.unique(matching).numel() != n_clusters:
            raise ValueError(
                f"matching must be a permutation of 0..{n_clusters - 1} (one-to-one), "
                f"got {matching.tolist()}."
            )
    distances_a = _pairwise_distances(centroids_a)
    distances_b = _pairwise_distances(centroids_b[matching.long().to(centroids_b.device)])
    return (distances_a - distances_b).abs().mean()


def sample_distance_of_distance_loss(
    z: torch.Tensor,
    centroids_a: torch.Tensor,
    centroids_b: torch.Tensor,
    tau: float = 0.01,
) -> torch.Tensor:
    r"""Distance-of-distance, official-code variant (no OT): sample level; book chapter 5.

    With ``p^x_i = softmax_j(sim(z_i, c^x_j)/tau)`` the soft assignment of sample i to the
    prototypes of domain ``x`` and ``M^x_{ij} = 1 - sim(p^x_i, p^x_j)`` the
    sample-by-sample cosine distance in that prototype space,

    .. math::
        \mathcal{L} = \frac{1}{B}\sum_{i=1}^{B}\sum_{j=1}^{B}\big(M^A_{ij} - M^B_{ij}\big)^2

    Two samples close in one domain's cluster structure should be close in the other's.
    No matching is needed: each matrix is indexed by samples, not by clusters. The
    trainer applies it to the batches of both domains. As in the official code, the squared
    differences are summed over j (the squared distance between row i of M^A and row i of
    M^B) and averaged over i: B times the mean over all B^2 entries, the scale on which the
    official weights (0.5 Office-Home, 0.1 DomainNet) were set.

    Args:
        z: (B, D) features of one domain's batch.
        centroids_a: (K_a, D) prototypes of domain A.
        centroids_b: (K_b, D) prototypes of domain B.
        tau: temperature of the soft assignments (0.01 in the official code).

    Returns:
        Scalar tensor, the mean over samples i of the sum over samples j.

    Reference: UCDIR official code (github.com/conghuihu/UCDIR).
    """
    _check_features(z=z, centroids_a=centroids_a, centroids_b=centroids_b)
    _check_positive("tau", tau)
    p_a = F.normalize(_assign(z, centroids_a, tau), dim=1)
    p_b = F.normalize(_assign(z, centroids_b, tau), dim=1)
    distances_a = 1 - p_a @ p_a.T
    distances_b = 1 - p_b @ p_b.T
    return (distances_a - distances_b).pow(2).sum(dim=1).mean()
