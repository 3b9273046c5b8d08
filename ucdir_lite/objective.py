"""What one UCDIR step minimises: the epoch's clusters and the step's loss terms.

At the start of every epoch after warm-up, k-means runs on each domain's points (one per
image, in bank order) and gives the epoch's prototypes (L2-normalised centroids) and
pseudo-labels; for the OT form of L_DD the two domains' prototypes are matched once per epoch
by Sinkhorn (``transport.match_clusters``). ``step_losses`` then computes, for one batch of
each domain, the terms of

    L = w_IW L_IW + w_CW(e) L_CW + w_SE(e) L_SE + w_DD(e) L_DD        (book chapter 6)

with a non-zero weight, each form picked by the config (``cw_variant``, ``se_variant``,
``dd_variant``); the per-domain terms (L_IW, L_CW, in-domain L_SE) are the mean over the two
domains, as in the official code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ucdir_lite.clustering import kmeans, soft_assign, soft_centroids
from ucdir_lite.config import TrainConfig
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
from ucdir_lite.transport import match_clusters
from ucdir_lite.utils import derive_seed


@dataclass
class Clusters:
    """One epoch's clustering of the two domains: prototypes (K, D) (L2-normalised k-means
    centroids), labels (N_d,) per image (= bank slot), and the OT matching (K,) of A's to B's
    clusters (None unless the OT L_DD is on)."""

    centroids: tuple[torch.Tensor, torch.Tensor]
    labels: tuple[torch.Tensor, torch.Tensor]
    matching: torch.Tensor | None


def cluster_features(cfg: TrainConfig, features: Sequence[torch.Tensor], epoch: int,
                     match: bool) -> Clusters:
    """k-means on each domain's features, one row per image in bank order (seeded from
    (seed, epoch, domain)); with ``match``, the Sinkhorn matching of the two prototype sets
    (computed once per epoch: the prototypes do not move within an epoch)."""
    results = [
        kmeans(x, cfg.num_clusters, n_iter=cfg.kmeans_iters, n_restarts=cfg.kmeans_restarts,
               seed=derive_seed(cfg.seed, epoch, 1000 + d))
        for d, x in enumerate(features)
    ]
    centroids = tuple(nn.functional.normalize(r.centroids, dim=1) for r in results)
    matching = match_clusters(*centroids, epsilon=cfg.ot_epsilon) if match else None
    return Clusters(centroids, tuple(r.labels for r in results), matching)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- one step


def step_losses(
    cfg: TrainConfig,
    weights: dict[str, float],
    q: Sequence[torch.Tensor],
    k: Sequence[torch.Tensor],
    index: Sequence[torch.Tensor],
    banks: Sequence[torch.Tensor],
    clusters: Clusters | None,
) -> dict[str, torch.Tensor]:
    """The loss terms with a non-zero weight, for one batch of each domain.

    q, k, index: per domain, the query features (B, D), key features (B, D), bank slots (B,).
    L_CW and L_SE compare q with the epoch's k-means prototypes (constants within the epoch);
    the OT L_DD compares the two domains' batch centroid estimates (book chapter 3), which carry the
    gradient, under the epoch's matching; the sample L_DD is applied to both domains' batches.
    """
    mean = _domain_mean
    terms = {"iw": mean(instance_wise_loss(q[d], k[d], banks[d], index[d], tau=cfg.tau_iw)
                        for d in (0, 1))}
    if clusters is None:
        return terms
    c = clusters.centroids
    if weights["cw"] > 0:
        if cfg.cw_variant == "prototype":
            terms["cw"] = mean(cluster_wise_loss(q[d], c[d], tau=cfg.tau) for d in (0, 1))
        else:
            parts = []
            for d in (0, 1):
                labels = clusters.labels[d][index[d]]
                keep = prototype_confidence(k[d], c[d], labels, tau=cfg.tau_cw)
                # the bank holds this batch's keys: each sample's own slot is a positive
                parts.append(cluster_wise_supcon_loss(
                    q[d], labels, banks[d], clusters.labels[d], tau=cfg.tau_cw,
                    keep=keep > cfg.conf_threshold))
            terms["cw"] = mean(parts)
    if weights["se"] > 0:
        if cfg.se_variant == "in_domain":
            terms["se"] = mean(self_entropy_loss(soft_assign(q[d], c[d], tau=cfg.tau))
                               for d in (0, 1))
        else:
            terms["se"] = cross_domain_self_entropy_loss(q[0], q[1], c[0], c[1], tau=cfg.tau_se)
    if weights["dd"] > 0:
        if cfg.dd_variant == "ot":
            batch_centroids = [soft_centroids(q[d], soft_assign(q[d], c[d], tau=cfg.tau))
                               for d in (0, 1)]
            terms["dd"] = distance_of_distance_loss(*batch_centroids, matching=clusters.matching)
        else:
            terms["dd"] = mean(sample_distance_of_distance_loss(q[d], c[0], c[1], tau=cfg.tau_dd)
                               for d in (0, 1))
    return terms


def _domain_mean(values: Iterable[torch.Tensor]) -> torch.Tensor:
    """The mean of a per-domain loss over the two domains (as the official code)."""
    return torch.stack(list(values)).mean()


__all__ = ["Clusters", "cluster_features", "step_losses"]
