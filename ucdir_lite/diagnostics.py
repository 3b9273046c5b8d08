"""Diagnostics of a trained encoder that read the class labels (to measure, never to train).

What the cluster and alignment losses are meant to change, measured on the features of
every image of the two domains:

- ``cross_domain_cosine``: the cosine between the two domains' mean features of the same
  class, averaged over classes (1: the domains' class means coincide in direction);
- ``class_mean_dod``: the distance-of-distance of the class means under the *true* matching
  (class c of A with class c of B), the quantity L_DD lowers for clusters; beside it, the
  same under random matchings, its chance level;
- ``purity``: the share of each k-means cluster's images that carry its majority class;
- ``matched_majority_share``: the share of OT-matched cluster pairs (``match_clusters``)
  whose two clusters have the same majority class: is the matching L_DD uses right?

References: C. Hu and G. H. Lee, ECCV 2022 (UCDIR), §3.4 (distance-of-distance).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ucdir_lite.clustering import kmeans
from ucdir_lite.losses import distance_of_distance_loss
from ucdir_lite.transport import match_clusters

__all__ = [
    "class_mean_dod",
    "class_means",
    "cross_domain_cosine",
    "diagnose",
    "matched_majority_share",
    "purity",
]


def class_means(z: Tensor, labels: Tensor, classes: Sequence[int]) -> Tensor:
    """(C, D) mean feature of each class in ``classes`` (rows of ``z`` with that label)."""
    rows = []
    for c in classes:
        members = z[labels == c]
        if members.shape[0] == 0:
            raise ValueError(f"class {c} has no image in this domain; pass the shared classes")
        rows.append(members.mean(0))
    return torch.stack(rows)


def cross_domain_cosine(means_a: Tensor, means_b: Tensor) -> float:
    """Mean over classes of ``cos(mu^A_c, mu^B_c)`` (rows in the same class order)."""
    return float(F.cosine_similarity(means_a, means_b, dim=1).mean())


def class_mean_dod(means_a: Tensor, means_b: Tensor, matching: Tensor | None = None) -> float:
    """``mean_{i,j} | ||mu^A_i - mu^A_j|| - ||mu^B_m(i) - mu^B_m(j)|| |`` on L2-normalised
    class means, under ``matching`` (default: the true one, class i with class i)."""
    a, b = F.normalize(means_a, dim=1), F.normalize(means_b, dim=1)
    if matching is None:
        matching = torch.arange(a.shape[0])
    return float(distance_of_distance_loss(a, b, matching=matching))


def purity(cluster_labels: Tensor, class_labels: Tensor) -> float:
    """Percentage of images whose cluster's majority class is their own class."""
    cluster_labels, class_labels = cluster_labels.long(), class_labels.long()
    majority = 0
    for j in cluster_labels.unique():
        majority += int(torch.bincount(class_labels[cluster_labels == j]).max())
    return 100.0 * majority / len(class_labels)


def _majority(cluster_labels: Tensor, class_labels: Tensor, k: int) -> Tensor:
    """(k,) majority class of each cluster (-1 for an empty one)."""
    out = torch.full((k,), -1, dtype=torch.long)
    for j in range(k):
        members = class_labels[cluster_labels == j].long()
        if members.numel():
            out[j] = torch.bincount(members).argmax()
    return out


def matched_majority_share(clusters_a: Tensor, classes_a: Tensor, clusters_b: Tensor,
                           classes_b: Tensor, matching: Tensor) -> float:
    """Percentage of matched pairs (cluster i of A, cluster ``matching[i]`` of B) whose two
    clusters have the same majority class."""
    k = matching.shape[0]
    major_a = _majority(clusters_a, classes_a, k)
    major_b = _majority(clusters_b, classes_b, k)[matching.long()]
    return 100.0 * float(((major_a == major_b) & (major_a >= 0)).float().mean())


def diagnose(feats_a: Tensor, labels_a: Tensor, feats_b: Tensor, labels_b: Tensor, *,
             num_clusters: int, seed: int = 0, epsilon: float = 0.05,
             random_matchings: int = 20) -> dict[str, float]:
    """Every diagnostic above for one pair of domains' features (rows: images, in any order).

    k-means (``num_clusters``, seeded) runs on each domain's L2-normalised features and the
    two sets of normalised centroids are matched by ``match_clusters`` as the trainer does.
    Returns cross-domain cosine, class-mean DoD (true matching and the mean over
    ``random_matchings`` seeded random ones), purity of A and of B, matched majority share.
    """
    classes = sorted(set(labels_a.tolist()) & set(labels_b.tolist()))
    if len(classes) < 2:
        raise ValueError("the two domains share fewer than 2 classes; nothing to compare")
    za, zb = F.normalize(feats_a.float(), dim=1), F.normalize(feats_b.float(), dim=1)
    means_a, means_b = class_means(za, labels_a, classes), class_means(zb, labels_b, classes)
    g = torch.Generator().manual_seed(seed)
    random_dod = [class_mean_dod(means_a, means_b, torch.randperm(len(classes), generator=g))
                  for _ in range(random_matchings)]
    ka = kmeans(za, num_clusters, seed=seed)
    kb = kmeans(zb, num_clusters, seed=seed + 1)
    matching = match_clusters(F.normalize(ka.centroids, dim=1), F.normalize(kb.centroids, dim=1),
                              epsilon=epsilon)
    return {
        "cross_cos": cross_domain_cosine(means_a, means_b),
        "dod_true": class_mean_dod(means_a, means_b),
        "dod_random": sum(random_dod) / len(random_dod),
        "purity_A": purity(ka.labels, labels_a),
        "purity_B": purity(kb.labels, labels_b),
        "matched_same": matched_majority_share(ka.labels, labels_a, kb.labels, labels_b,
                                               matching),
    }
