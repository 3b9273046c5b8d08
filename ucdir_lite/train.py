"""The UCDIR training loop: warm-up on L_IW, then the cluster losses; checkpoints and resume.

One step sees a batch of each domain, two augmented views per image. With q = f_theta(view 1)
(query encoder) and k = f_theta_k(view 2) (momentum key encoder, ``model.momentum_update``),

    warm-up (epoch < warmup_epochs):  L = L_IW
    after:  L = w_IW L_IW + w_CW(e) L_CW + w_SE(e) L_SE + w_DD(e) L_DD        (book chapter 6)

where each per-domain term (L_IW, L_CW, in-domain L_SE) is the mean over the two domains,
as in the official code. At the start of every epoch after warm-up, k-means runs on each
domain's memory bank (one key feature per image, updated every step) and gives the epoch's
prototypes (L2-normalised centroids) and pseudo-labels; for the OT form of L_DD the two
domains' prototypes are matched once per epoch by Sinkhorn (``transport.match_clusters``),
and each step's L_DD compares the batch centroid estimates (``clustering.soft_centroids``,
through which gradients reach the encoder) under that matching. The trainer never reads a
class label: only ``evaluate`` does.

Determinism: the global generators, the loaders' shuffling and k-means are re-seeded from
(seed, epoch) at the start of every epoch, so a run resumed from its checkpoint ends exactly
where the uninterrupted run would (on the CPU).

Reference: Hu & Lee, ECCV 2022 (arXiv:2207.09721), and its official code.
"""

from __future__ import annotations

import copy
import json
import math
import os
import pickle
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ucdir_lite import datasets as ds_lib
from ucdir_lite import glyphs
from ucdir_lite._lock import folder_lock
from ucdir_lite._progress import tqdm
from ucdir_lite.clustering import kmeans, soft_assign, soft_centroids
from ucdir_lite.config import TrainConfig, get_preset
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
from ucdir_lite.metrics import retrieval_report
from ucdir_lite.model import Encoder, build_encoder, momentum_update, split_batch_norm
from ucdir_lite.transport import match_clusters
from ucdir_lite.utils import (
    PART_SUFFIX,
    atomic_torch_save,
    atomic_write_json,
    derive_seed,
    resolve_device,
    seed_everything,
)

CHECKPOINT = "checkpoint.pt"
FORMAT = "ucdir-lite-checkpoint-v1"
# What every ucdir-lite checkpoint holds besides its format tag ("scaler" may be empty).
CHECKPOINT_KEYS = ("epoch", "config", "data", "encoder_q", "encoder_k", "banks", "optimizer",
                   "history")
# Config fields that may change when resuming a run (they do not change what is learned).
RESUMABLE = ("epochs", "eval_every", "log_every", "device", "num_workers", "eval_batch_size", "ks")
# Config fields that a forked run (init_from) must share with its parent.
ARCH_FIELDS = ("arch", "feat_dim", "width", "hidden_dim", "small_input", "image_size")


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    """What ``train`` returns.

    - ``encoder``: the momentum (key) encoder in eval mode, the one evaluated (as the
      official code does).
    - ``history``: one dict per epoch (0-based "epoch", "phase", "lr", "weights", "losses",
      "time_s", and "metrics" when evaluated).
    - ``metrics``: the final ``evaluate`` report.
    - ``out_dir``: where config.json, history.json, metrics.json and checkpoint.pt live (or None).
    - ``config``: the run's TrainConfig.
    - ``datasets``: the two evaluation datasets (A, B), with eval transforms.
    """

    encoder: Encoder
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    out_dir: Path | None
    config: TrainConfig
    datasets: tuple[Dataset, Dataset] = field(repr=False, default=())


# ------------------------------------------------------------------------------- data


def data_root(cfg: TrainConfig, progress: bool = False) -> Path:
    """The dataset folder: ``cfg.data_root``, or the generated benchmark (made if missing)."""
    if cfg.data_root is not None:
        root = Path(cfg.data_root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(
                f"data_root {str(root)!r} does not exist; prepare it (e.g. `ucdir-lite data "
                "prepare office-home --root ...`) or leave out --data-root (data_root=None) for "
                "the generated benchmark"
            )
        return root
    unknown = [d for d in cfg.domains if d not in glyphs.DOMAINS]
    if unknown:
        raise ValueError(
            f"domain(s) {unknown} are not in the generated benchmark (it has "
            f"{', '.join(glyphs.DOMAINS)}); pick two of those or set data_root"
        )
    return Path(
        glyphs.ensure_benchmark(
            num_classes=cfg.num_classes,
            images_per_class=cfg.images_per_class,
            image_size=cfg.image_size,
            seed=cfg.data_seed,
            domain_gap=cfg.domain_gap,
            progress=progress,
        )
    )


@dataclass
class DomainData:
    """One domain's data: the evaluation dataset (eval transform, bank order = its order) and
    either a two-view training dataset (per-image transforms, loader path) or all images as
    one uint8 tensor (N, 3, S, S) for ``BatchAugment`` (fast path)."""

    name: str
    eval_set: ds_lib.DomainDataset
    train_set: Dataset | None = None
    images: torch.Tensor | None = None
    tensor_eval: bool = True

    def __len__(self) -> int:
        return len(self.eval_set)

    @property
    def eval_data(self) -> Dataset:
        """What the bank initialisation and evaluation read: with ``images``, the same
        pixels as ``eval_set`` already normalised in one tensor (no per-image transforms);
        ``eval_set`` itself when its transform resizes and crops (``tensor_eval`` False)."""
        if self.images is None or not self.tensor_eval:
            return self.eval_set
        mean = torch.tensor(ds_lib.MEAN, device=self.images.device)[None, :, None, None]
        std = torch.tensor(ds_lib.STD, device=self.images.device)[None, :, None, None]
        x = (self.images.float() / 255.0 - mean) / std
        return TensorImages(x, self.eval_set.labels)


class TensorImages(Dataset):
    """Transformed images held in one tensor: ``dataset[i] = (x[i], labels[i], i)``."""

    def __init__(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        if len(x) != len(labels):
            raise ValueError(f"{len(x)} images but {len(labels)} labels")
        self.x, self.labels = x, labels

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.labels[i], i


def _image_tensor(dataset: ds_lib.DomainDataset, size: int) -> torch.Tensor:
    """All images of an in-memory dataset (transform None) as one uint8 (N, 3, S, S) tensor."""
    arrays = []
    for i in range(len(dataset)):
        img = dataset[i][0]
        if img.size != (size, size):
            raise ValueError(
                f"batch_augment needs images of {size}x{size} pixels, but "
                f"{dataset.samples[i][0]} is {img.size[0]}x{img.size[1]}; set "
                "batch_augment=False (per-image transforms) for this data"
            )
        arrays.append(np.asarray(img))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def build_data(cfg: TrainConfig, progress: bool = False) -> list[DomainData]:
    """The two domains' data on the classes both share (``cfg.classes`` restricts them)."""
    root = data_root(cfg, progress)
    classes = list(cfg.classes) if cfg.classes else ds_lib.common_classes(root, cfg.domains)
    fast = cfg.data_root is None if cfg.batch_augment is None else cfg.batch_augment
    out = []
    for name in cfg.domains:
        base = ds_lib.DomainDataset(root, name, classes=classes, in_memory=fast)
        eval_set = copy.copy(base)  # shares the decoded images, if any
        eval_set.transform = ds_lib.eval_transform(cfg.image_size,
                                                   resize_ratio=cfg.eval_resize_ratio)
        if fast:
            out.append(DomainData(name, eval_set, images=_image_tensor(base, cfg.image_size),
                                  tensor_eval=cfg.eval_resize_ratio == 1.0))
        else:
            train_set = copy.copy(base)
            train_set.transform = ds_lib.TwoViews(ds_lib.train_transform(cfg.image_size))
            out.append(DomainData(name, eval_set, train_set=train_set))
    return out


def _check_sizes(cfg: TrainConfig, data: Sequence[DomainData]) -> None:
    for domain in data:
        n = len(domain)
        if n < cfg.batch_size:
            raise ValueError(
                f"domain {domain.name!r} has {n} images, fewer than batch_size="
                f"{cfg.batch_size}; lower batch_size to at most {n}"
            )
        uses_clusters = cfg.epochs > cfg.warmup_epochs and (cfg.cw or cfg.se or cfg.dd)
        if uses_clusters and cfg.num_clusters > n:
            raise ValueError(
                f"num_clusters={cfg.num_clusters} exceeds the {n} images of domain "
                f"{domain.name!r}; lower num_clusters (K) below the number of images"
            )


class BatchAugment:
    """MoCo v2 augmentation of a whole batch at once: the fast path of
    ``datasets.train_transform`` for images already of the output size.

    Per image: random resized crop (area fraction in ``crop_scale``, aspect ratio in
    [3/4, 4/3]) and horizontal flip (one bilinear ``grid_sample``); with probability 0.8
    colour jitter (brightness, contrast, saturation 0.4, hue 0.1; applied in this fixed order,
    the hue as a rotation in YIQ space); grayscale with probability 0.2; Gaussian blur
    (sigma in [0.1, 2]) with probability 0.5; ImageNet normalisation. All draws come from the
    ``generator`` passed in, so a seeded generator gives the same views on every run.
    """

    def __init__(self, image_size: int,
                 crop_scale: tuple[float, float] = ds_lib.CROP_SCALE) -> None:
        self.image_size = image_size
        self.crop_scale = crop_scale
        self.kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)  # as datasets.train_transform

    @staticmethod
    def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
        return torch.rand(n, generator=g, device=g.device) * (high - low) + low

    def _crop_and_flip(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        area = self._uniform(n, *self.crop_scale, g)
        ratio = torch.exp(self._uniform(n, math.log(3 / 4), math.log(4 / 3), g))
        w = torch.sqrt(area * ratio).clamp(max=1.0)  # fractions of the image side
        h = torch.sqrt(area / ratio).clamp(max=1.0)
        cx = (self._uniform(n, -1.0, 1.0, g)) * (1 - w)  # crop centre, in [-1, 1] coordinates
        cy = (self._uniform(n, -1.0, 1.0, g)) * (1 - h)
        flip = torch.where(torch.rand(n, generator=g, device=g.device) < 0.5, -1.0, 1.0)
        theta = torch.zeros(n, 2, 3, device=x.device)
        theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
        theta[:, 1, 1], theta[:, 1, 2] = h, cy
        size = (n, x.shape[1], self.image_size, self.image_size)
        grid = nn.functional.affine_grid(theta, size, align_corners=False)
        return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                                         align_corners=False)

    @staticmethod
    def _gray(x: torch.Tensor) -> torch.Tensor:
        return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])

    def _jitter(self, x: torch.Tensor, g: torch.Generator, p: float = 0.8) -> torch.Tensor:
        n = x.shape[0]
        on = (torch.rand(n, generator=g, device=g.device) < p).float()[:, None, None, None]
        def factor(low, high):
            return 1 + on * (self._uniform(n, low, high, g)[:, None, None, None] - 1)
        x = (x * factor(0.6, 1.4)).clamp(0, 1)  # brightness
        mean = self._gray(x).mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * factor(0.6, 1.4) + mean).clamp(0, 1)  # contrast
        gray = self._gray(x)
        x = ((x - gray) * factor(0.6, 1.4) + gray).clamp(0, 1)  # saturation
        angle = on.flatten() * self._uniform(n, -0.1, 0.1, g) * 2 * math.pi  # hue
        to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                               [0.211, -0.523, 0.312]], device=x.device)
        cos, sin = torch.cos(angle), torch.sin(angle)
        rot = torch.zeros(n, 3, 3, device=x.device)
        rot[:, 0, 0] = 1
        rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
        matrix = torch.linalg.inv(to_yiq) @ rot @ to_yiq  # (n, 3, 3)
        return torch.einsum("nij,njhw->nihw", matrix, x).clamp(0, 1)

    def _blur(self, x: torch.Tensor, g: torch.Generator, p: float = 0.5) -> torch.Tensor:
        n, c, hgt, wid = x.shape
        k = self.kernel
        on = torch.rand(n, generator=g, device=g.device) < p
        sigma = self._uniform(n, 0.1, 2.0, g)
        t = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
        kernel = torch.exp(-(t[None, :] ** 2) / (2 * sigma[:, None] ** 2))
        kernel = kernel / kernel.sum(dim=1, keepdim=True)
        delta = (t == 0).to(x.dtype).expand(n, k)
        kernel = torch.where(on[:, None], kernel, delta).repeat_interleave(c, dim=0)
        y = nn.functional.pad(x.reshape(1, n * c, hgt, wid), [k // 2] * 4, mode="reflect")
        y = nn.functional.conv2d(y, kernel[:, None, :, None], groups=n * c)
        y = nn.functional.conv2d(y, kernel[:, None, None, :], groups=n * c)
        return y.reshape(n, c, hgt, wid)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, 3, S, S) uint8 images -> (B, 3, S, S) float views, normalised."""
        x = images.float() / 255.0
        x = self._crop_and_flip(x, generator)
        x = self._jitter(x, generator)
        gray = torch.rand(x.shape[0], generator=generator, device=generator.device) < 0.2
        x = torch.where(gray[:, None, None, None], self._gray(x).expand_as(x), x)
        x = self._blur(x, generator)
        mean = torch.tensor(ds_lib.MEAN, device=x.device)[None, :, None, None]
        std = torch.tensor(ds_lib.STD, device=x.device)[None, :, None, None]
        return (x - mean) / std


def epoch_indices(sizes: Sequence[int], seed: int, epoch: int) -> list[torch.Tensor]:
    """Each domain's image order for one epoch, as the official code draws it: one shuffled
    order of ``range(max(sizes))`` shared by both domains; in a smaller domain a position past
    its size is replaced by a random image of that domain (resampling). Seeded from
    (seed, epoch)."""
    largest = max(sizes)
    order = torch.randperm(largest, generator=torch.Generator().manual_seed(
        derive_seed(seed, epoch)))
    out = []
    for d, n in enumerate(sizes):
        index = order.clone()
        over = index >= n
        draws = torch.Generator().manual_seed(derive_seed(seed, epoch, 20 + d))
        index[over] = torch.randint(n, (int(over.sum()),), generator=draws)
        out.append(index)
    return out


def _epoch_batches(cfg: TrainConfig, data: Sequence[DomainData], epoch: int,
                   device: torch.device, workers: int):
    """Yield, per step, [(view 1, view 2, bank index)] for domain A and B. An epoch runs over
    the larger domain (``epoch_indices``; incomplete batches are dropped); the augmentations
    are seeded from (seed, epoch, domain)."""
    orders = epoch_indices([len(domain) for domain in data], cfg.seed, epoch)
    steps = len(orders[0]) // cfg.batch_size
    if data[0].images is not None:
        augment = BatchAugment(cfg.image_size)
        gens = [torch.Generator(device).manual_seed(derive_seed(cfg.seed, epoch, 10 + d))
                for d in range(len(data))]
        for s in range(steps):
            batch = []
            for d, domain in enumerate(data):
                index = orders[d][s * cfg.batch_size:(s + 1) * cfg.batch_size].to(device)
                x = domain.images[index]
                batch.append((augment(x, gens[d]), augment(x, gens[d]), index))
            yield batch
    else:
        loaders = [ds_lib.make_loader(domain.train_set, cfg.batch_size, train=True,
                                      num_workers=workers, seed=derive_seed(cfg.seed, epoch, d),
                                      order=orders[d].tolist())
                   for d, domain in enumerate(data)]
        for batches in zip(*loaders, strict=True):
            yield [(views[0].to(device, non_blocking=True), views[1].to(device, non_blocking=True),
                    index.to(device)) for views, _, index in batches]


# ------------------------------------------------------------------------------- features


@torch.no_grad()
def _encode(encoder: nn.Module, dataset: Dataset, device: torch.device, batch_size: int,
            num_workers: int = 0):
    """Features of every image of ``dataset`` in order, and the labels the dataset yields."""
    was_training = encoder.training
    encoder.eval()
    feats, labels = [], []
    if isinstance(dataset, TensorImages):  # already transformed: slice, no loader
        batches = zip(dataset.x.split(batch_size), dataset.labels.split(batch_size), strict=True)
    else:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                            num_workers=num_workers, pin_memory=device.type == "cuda")
        batches = ((x, y) for x, y, _ in loader)
    for x, y in batches:
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        feats.append(encoder(x).float())
        labels.append(torch.as_tensor(y))
    encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def extract_features(
    encoder: nn.Module,
    dataset: Dataset,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    num_workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(feats (N, D) on the CPU, labels (N,)) of every image of ``dataset`` in order
    (eval mode, no augmentation: pass a dataset with ``eval_transform``)."""
    device = resolve_device(str(device))
    feats, labels = _encode(encoder, dataset, device, batch_size, num_workers)
    return feats.cpu(), labels.long()


def evaluate(
    encoder: nn.Module,
    dataset_a: Dataset,
    dataset_b: Dataset,
    ks: Sequence[int] = (50, 100, 200),
    device: str | torch.device = "cpu",
    in_domain: bool = True,
    batch_size: int = 256,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Cross-domain retrieval report (book chapter 1): P@K and mAP for A->B and B->A (and A->A,
    B->B when ``in_domain``), via ``metrics.retrieval_report``."""
    feats_a, labels_a = extract_features(encoder, dataset_a, device, batch_size, num_workers)
    feats_b, labels_b = extract_features(encoder, dataset_b, device, batch_size, num_workers)
    return retrieval_report(feats_a, labels_a, feats_b, labels_b, ks=tuple(ks), in_domain=in_domain)


def label_selected_best(history: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The evaluated epoch the official code would report: the highest mean over the two
    cross-domain directions of P@K at the first K (P@1 on Office-Home). The choice reads the
    labels of the very images it scores, so the figure is label-selected and optimistic; the
    package's own figure is the last epoch. None if no epoch was evaluated."""
    evaluated = [e for e in history if "metrics" in e]
    if not evaluated:
        return None

    def score(entry: dict[str, Any]) -> float:
        a_b, b_a = entry["metrics"]["A->B"], entry["metrics"]["B->A"]
        first = next(iter(a_b))
        return (a_b[first] + b_a[first]) / 2

    return max(evaluated, key=score)  # the first of equal scores, as the official strict '<'


# ------------------------------------------------------------------------------- schedule


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """lr at ``epoch``: constant, or cosine ``lr * (1 + cos(pi * epoch / epochs)) / 2``."""
    if not cfg.cosine:
        return cfg.lr
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))


def loss_weights(cfg: TrainConfig, epoch: int) -> dict[str, float]:
    """The weights of L_IW, L_CW, L_SE, L_DD in force at ``epoch``."""
    return {
        "iw": cfg.iw_weight_at(epoch),
        "cw": cfg.cw_weight_at(epoch),
        "se": cfg.se_weight_at(epoch),
        "dd": cfg.dd_weight_at(epoch),
    }


# ------------------------------------------------------------------------------- clustering


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
                keep = prototype_confidence(k[d], c[d], labels, tau=cfg.supcon_tau)
                # the bank holds this batch's keys: each sample's own slot is a positive
                parts.append(cluster_wise_supcon_loss(
                    q[d], labels, banks[d], clusters.labels[d], tau=cfg.supcon_tau,
                    keep=keep > cfg.conf_threshold))
            terms["cw"] = mean(parts)
    if weights["se"] > 0:
        if cfg.se_variant == "in_domain":
            terms["se"] = mean(self_entropy_loss(soft_assign(q[d], c[d], tau=cfg.tau))
                               for d in (0, 1))
        else:
            terms["se"] = cross_domain_self_entropy_loss(q[0], q[1], c[0], c[1], tau=cfg.se_tau)
    if weights["dd"] > 0:
        if cfg.dd_variant == "ot":
            batch_centroids = [soft_centroids(q[d], soft_assign(q[d], c[d], tau=cfg.tau))
                               for d in (0, 1)]
            terms["dd"] = distance_of_distance_loss(*batch_centroids, matching=clusters.matching)
        else:
            terms["dd"] = mean(sample_distance_of_distance_loss(q[d], c[0], c[1], tau=cfg.dd_tau)
                               for d in (0, 1))
    return terms


def _domain_mean(values) -> torch.Tensor:
    """The mean of a per-domain loss over the two domains (as the official code)."""
    return torch.stack(list(values)).mean()


def _check_finite(terms: dict[str, torch.Tensor], epoch: int, step: int, ckpt: str) -> list[float]:
    values = torch.stack([t.detach().float() for t in terms.values()]).tolist()
    for name, value in zip(terms, values, strict=True):
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"loss term {name!r} became {value} at epoch {epoch} (step {step}); training "
                f"stopped. {ckpt} Lower lr or the weight/temperature of {name!r}, then resume "
                "or start again."
            )
    return values


# ------------------------------------------------------------------------------- state


@dataclass
class _State:
    encoder_q: Encoder
    encoder_k: Encoder
    banks: list[torch.Tensor]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def build_model(cfg: TrainConfig) -> Encoder:
    """The query encoder described by ``cfg`` (random head; backbone from ``cfg.weights``)."""
    small_input = cfg.image_size <= 64 if cfg.small_input is None else cfg.small_input
    return build_encoder(cfg.arch, cfg.feat_dim, weights=cfg.weights, small_input=small_input,
                         width=cfg.width, hidden_dim=cfg.hidden_dim)


def _new_state(cfg: TrainConfig, device: torch.device, amp: bool, pretrained: bool) -> _State:
    """Encoders (key = copy of query), optimizer and scaler; the banks are filled later."""
    seed_everything(cfg.seed)
    # channels_last: 2-3x faster convolutions on the CPU, and the tensor-core layout on cuda
    encoder_q = build_model(cfg if pretrained else cfg.replace(weights=None))
    encoder_q = encoder_q.to(device, memory_format=torch.channels_last)
    encoder_k = copy.deepcopy(encoder_q)  # the same weights, head included (official code)
    if cfg.key_bn_splits > 1:
        split_batch_norm(encoder_k, cfg.key_bn_splits)
    encoder_k.requires_grad_(False)
    params = encoder_q.parameters()
    if cfg.optimizer == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=cfg.lr)
    else:
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
    _set_hyperparameters(optimizer, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    return _State(encoder_q, encoder_k, [], optimizer, scaler)


def _set_hyperparameters(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> None:
    """The config's weight decay and momentum (a loaded optimizer state carries its own)."""
    for group in optimizer.param_groups:
        group["weight_decay"] = cfg.weight_decay
        if cfg.optimizer == "sgd":
            group["momentum"] = cfg.momentum


def _data_summary(cfg: TrainConfig, data: Sequence[DomainData]) -> dict[str, Any]:
    return {
        "domains": list(cfg.domains),
        "classes": [list(d.eval_set.classes) for d in data],
        "sizes": [len(d) for d in data],
        "data_root": cfg.data_root,
        "generated": None if cfg.data_root else {
            "num_classes": cfg.num_classes, "images_per_class": cfg.images_per_class,
            "image_size": cfg.image_size, "data_seed": cfg.data_seed},
    }


def _checkpoint(cfg: TrainConfig, state: _State, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "epoch": state.epoch,
        "config": cfg.to_dict(),
        "data": data,
        "encoder_q": state.encoder_q.state_dict(),
        "encoder_k": state.encoder_k.state_dict(),
        "banks": [b.detach().cpu() for b in state.banks],
        "optimizer": state.optimizer.state_dict(),
        "scaler": state.scaler.state_dict(),
        "history": state.history,
    }


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a ucdir-lite ``checkpoint.pt`` (tensors and plain containers only:
    ``torch.load(weights_only=True)``). Raises FileNotFoundError / ValueError with the fix."""
    path = Path(path).expanduser()
    if path.is_dir():
        if not (path / CHECKPOINT).is_file():
            raise FileNotFoundError(
                f"{str(path)!r} is a folder without a {CHECKPOINT}; pass a run folder (the "
                f"--out of a train) or its {CHECKPOINT}"
            )
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {str(path)!r} does not exist; pass a run folder or its checkpoint.pt"
        )
    ckpt = _safe_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a ucdir-lite training checkpoint (no format {FORMAT!r}); "
            "for backbone weights use --set weights=PATH (TrainConfig(weights=path)) instead"
        )
    missing = [key for key in CHECKPOINT_KEYS if key not in ckpt]
    if missing:
        raise ValueError(
            f"checkpoint {str(path)!r} is incomplete (no {', '.join(missing)}): it is damaged "
            "or was not written by ucdir-lite train; pass the checkpoint.pt a run wrote"
        )
    return ckpt


def _safe_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers, nothing that runs."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # torch's text would advise loading it unsafely
        raise ValueError(
            f"{str(path)!r} was refused: it holds Python objects, which loading would run, "
            "not only tensors; it is not a ucdir-lite checkpoint, and only a file you trust "
            "should ever be loaded that way"
        ) from err
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else ""
        raise ValueError(
            f"{str(path)!r} is not a loadable checkpoint ({type(err).__name__}: {first})"
        ) from err


def _load_weights(module: nn.Module, state: dict[str, Any], path: str | os.PathLike,
                  cfg: TrainConfig) -> None:
    """``module.load_state_dict(state)``; a mismatch is a ValueError naming ``path``."""
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0] if lines else "")[:300].rstrip(".")
        raise ValueError(
            f"checkpoint {str(path)!r} does not fit the model its config describes "
            f"(arch={cfg.arch}, width={cfg.width}, feat_dim={cfg.feat_dim}): {detail}; it is "
            "damaged or was edited: pass the checkpoint.pt a run wrote"
        ) from err


def _check_fits(ckpt: dict[str, Any], cfg: TrainConfig, path: str | os.PathLike) -> None:
    """The checkpoint's encoders load into the model ``cfg`` builds (before any data)."""
    with torch.random.fork_rng(devices=[]):
        model = build_model(cfg.replace(weights=None))
    for name in ("encoder_q", "encoder_k"):
        _load_weights(model, ckpt[name], path, cfg)


def _restore(state: _State, ckpt: dict[str, Any], device: torch.device, *, optimizer: bool) -> None:
    state.encoder_q.load_state_dict(ckpt["encoder_q"])
    state.encoder_k.load_state_dict(ckpt["encoder_k"])
    state.banks = [b.to(device) for b in ckpt["banks"]]
    state.epoch = int(ckpt["epoch"])
    state.history = list(ckpt["history"])
    if optimizer:
        state.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            state.scaler.load_state_dict(ckpt["scaler"])


def load_run(path: str | os.PathLike, device: str = "cpu") -> tuple[Encoder, TrainConfig]:
    """The evaluated (key) encoder of a saved run and its config (for ``ucdir-lite evaluate``)."""
    ckpt = load_checkpoint(path)
    cfg = TrainConfig.from_dict(ckpt["config"])
    encoder = build_model(cfg.replace(weights=None))
    _load_weights(encoder, ckpt["encoder_k"], path, cfg)
    # the memory format training used: convolutions then sum in the same order
    return encoder.to(resolve_device(device), memory_format=torch.channels_last).eval(), cfg


def _differences(a: dict[str, Any], b: dict[str, Any], keys: Sequence[str]) -> list[str]:
    return [f"{k}={a.get(k)!r} there vs {b.get(k)!r} here" for k in keys if a.get(k) != b.get(k)]


def _check_resume(ckpt: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    keys = [k for k in cfg.to_dict() if k not in RESUMABLE]
    diffs = _differences(ckpt["config"], cfg.to_dict(), keys)
    if diffs:
        raise ValueError(
            f"cannot resume {str(path)!r} with a different config: {'; '.join(diffs)}. Resume "
            "with the same config (only " + ", ".join(RESUMABLE) + " may change), or start a "
            "new run from it with --init-from (init_from=)"
        )


def _check_fork(ckpt: dict[str, Any], cfg: TrainConfig, data: dict[str, Any], path: Path) -> None:
    diffs = _differences(ckpt["config"], cfg.to_dict(), ARCH_FIELDS)
    diffs += _differences(ckpt["data"], data, ("domains", "classes", "sizes", "data_root",
                                               "generated"))
    if diffs:
        raise ValueError(
            f"--init-from (init_from=) checkpoint {str(path)!r} is incompatible with this config: "
            f"{'; '.join(diffs)}. Fork only from a run on the same data and model"
        )
    if int(ckpt["epoch"]) >= cfg.epochs:
        raise ValueError(
            f"--init-from (init_from=) checkpoint {str(path)!r} has already trained "
            f"{ckpt['epoch']} epochs; set epochs larger than that (got epochs={cfg.epochs})"
        )


# ------------------------------------------------------------------------------- train


def _train_epoch(cfg: TrainConfig, state: _State, data: Sequence[DomainData],
                 device: torch.device, amp: bool, workers: int, ckpt_note: str) -> dict[str, Any]:
    """One epoch (state.epoch): re-seed, set lr and weights, cluster, step."""
    epoch = state.epoch
    seed_everything(derive_seed(cfg.seed, epoch))
    lr = learning_rate(cfg, epoch)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    weights = loss_weights(cfg, epoch)
    clusters = None
    if any(weights[t] > 0 for t in ("cw", "se", "dd")):
        match = weights["dd"] > 0 and cfg.dd_variant == "ot"
        if cfg.cluster_on == "features":  # the official code: fresh eval-mode key features
            points = [_encode(state.encoder_k, d.eval_data, device, cfg.eval_batch_size,
                              workers)[0] for d in data]
        else:
            points = state.banks
        clusters = cluster_features(cfg, points, epoch, match=match)
    sums: dict[str, float] = {}
    steps = 0
    state.encoder_q.train()
    state.encoder_k.train()
    for batch in _epoch_batches(cfg, data, epoch, device, workers):
        (xq_a, xk_a, index_a), (xq_b, xk_b, index_b) = batch
        n_a = xq_a.shape[0]
        x_q = torch.cat([xq_a, xq_b]).contiguous(memory_format=torch.channels_last)
        x_k = torch.cat([xk_a, xk_b]).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            z_q = state.encoder_q(x_q)  # one pass for both domains, as the official code
            z_k = shuffled_keys(state.encoder_k, x_k)
        q, k = z_q.float().split(n_a), z_k.float().split(n_a)
        index = (index_a, index_b)
        with torch.no_grad():  # as the official code: the batch's keys enter the bank first
            for d in (0, 1):
                state.banks[d][index[d]] = k[d]
        terms = step_losses(cfg, weights, q, k, index, state.banks, clusters)
        terms["total"] = sum(weights[name] * value for name, value in terms.items())
        values = _check_finite(terms, epoch, steps, ckpt_note)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(terms["total"]).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        momentum_update(state.encoder_q, state.encoder_k, cfg.m)
        for name, value in zip(terms, values, strict=True):
            sums[name] = sums.get(name, 0.0) + value
        steps += 1
    return {
        "epoch": epoch,
        "phase": "warmup" if epoch < cfg.warmup_epochs else "cluster",
        "lr": lr,
        "weights": weights,
        "losses": {name: total / max(steps, 1) for name, total in sums.items()},
        "steps": steps,
    }


@torch.no_grad()
def shuffled_keys(encoder_k: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Key features of a batch passed through the key encoder in a random order and put back
    in order: with split batch norm (``model.SplitBatchNorm``) each BN group is then a random
    half of the batch, MoCo's shuffling BN. Draws from torch's global generator (seeded per
    epoch by the trainer)."""
    perm = torch.randperm(x.shape[0]).to(x.device)
    z = encoder_k(x[perm])
    return torch.empty_like(z).index_copy_(0, perm, z)


def _summary(entry: dict[str, Any]) -> str:
    losses = " ".join(f"{k}={v:.4f}" for k, v in entry["losses"].items())
    text = f"epoch {entry['epoch']} [{entry['phase']}] {losses} ({entry['time_s']:.1f}s)"
    if "metrics" in entry:
        ab = entry["metrics"].get("A->B", {})
        text += " A->B " + " ".join(f"{k}={v:.1f}" for k, v in ab.items())
    return text


def train(
    cfg: TrainConfig | str,
    out_dir: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    init_from: str | os.PathLike | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train the UCDIR encoder pair on ``cfg.domains`` and evaluate cross-domain retrieval.

    Args:
        cfg: a TrainConfig (or a preset name).
        out_dir: folder for checkpoint.pt (every epoch, atomically), config.json,
            history.json and metrics.json; None keeps everything in memory. One run at a
            time: the folder is locked (``.lock``) while the run writes to it.
        resume: continue the run saved in ``out_dir`` (to the same result as an uninterrupted
            run); a finished run is returned as it is (re-evaluated only if ``ks`` changed);
            with no checkpoint there, start fresh. Without ``resume``, an ``out_dir`` that
            holds a checkpoint is an error (nothing is overwritten).
        init_from: start a NEW run (written to ``out_dir``) from another run's checkpoint:
            its weights, banks, epoch counter, history and (same optimizer type) optimizer
            state, trained on to ``cfg.epochs`` with ``cfg`` (e.g. ablation arms forking a
            shared warm-up). Model and data must match the parent's.
        progress: show a tqdm bar over epochs.

    Raises:
        TrainingDiverged: a loss became NaN/inf (the last good checkpoint is kept).
        ValueError / FileNotFoundError / FileExistsError: bad config, data or out_dir.
        FolderInUse: another process is running in ``out_dir`` (its PID is named).
        PermissionError: ``out_dir`` is not writable and the run is not finished.
    """
    if isinstance(cfg, str):
        cfg = get_preset(cfg)
    if resume and init_from is not None:
        raise ValueError("pass either --resume (resume=True) or --init-from (init_from=), "
                         "not both")
    out = Path(out_dir).expanduser() if out_dir is not None else None
    if resume and out is None:
        raise ValueError("--resume (resume=True) needs the folder of the run to continue: "
                         "--out (out_dir=)")
    if out is None:
        return _train(cfg, None, resume, init_from, progress)
    if out.is_dir() and not os.access(out, os.W_OK):  # only a finished run can be read here
        return _train(cfg, out, resume, init_from, progress, read_only=True)
    with folder_lock(out, what="run folder",
                     hint="wait for it to finish, or choose another --out (out_dir=)"):
        _remove_stale_parts(out)
        return _train(cfg, out, resume, init_from, progress)


def _remove_stale_parts(out: Path) -> None:
    """Delete the temporary files of atomic writes that a killed run left in ``out`` (called
    under the folder's lock: no other writer is at work there)."""
    for part in out.glob(f".*{PART_SUFFIX}"):
        if part.is_file():
            part.unlink()


def _train(cfg: TrainConfig, out: Path | None, resume: bool,
           init_from: str | os.PathLike | None, progress: bool,
           read_only: bool = False) -> TrainResult:
    """``train`` once its arguments are checked (and ``out``, if any, locked)."""
    ckpt_path = out / CHECKPOINT if out is not None else None
    if ckpt_path is not None and ckpt_path.exists() and not resume:
        raise FileExistsError(
            f"{str(out)!r} already holds a run (checkpoint.pt); pass --resume (resume=True) to "
            "continue it, or choose another --out (out_dir=)"
        )
    ckpt, old_ks = None, None
    if resume and ckpt_path is not None and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        started = ckpt["config"].setdefault("threads", cfg.threads)  # None: an older run
        if cfg.threads is None:  # a resumed run keeps the thread count it started with
            cfg = cfg.replace(threads=started)
        _check_resume(ckpt, cfg, ckpt_path)
        _check_fits(ckpt, cfg, ckpt_path)
        old_ks = tuple(ckpt["config"]["ks"])
    if read_only and not (ckpt is not None and ckpt["epoch"] >= cfg.epochs
                          and old_ks == tuple(cfg.ks)):
        raise PermissionError(
            f"run folder {str(out)!r} is not writable; make it writable (chmod u+w) or "
            "choose another --out (out_dir=)"
        )

    device = resolve_device(cfg.device)
    amp = cfg.amp and device.type == "cuda"
    workers = cfg.num_workers if cfg.num_workers is not None else (
        0 if device.type == "cpu" else min(8, os.cpu_count() or 1))
    data = build_data(cfg, progress=progress)
    _check_sizes(cfg, data)
    for domain in data:
        if domain.images is not None:
            domain.images = domain.images.to(device)
    summary = _data_summary(cfg, data)

    if ckpt is None and init_from is not None:
        ckpt = load_checkpoint(init_from)
        _check_fork(ckpt, cfg, summary, Path(init_from))
        _check_fits(ckpt, cfg, init_from)
    if cfg.threads is None:
        cfg = cfg.replace(threads=torch.get_num_threads())
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, out, ckpt, old_ks, init_from, data, summary, device, amp, workers,
                    progress)
    finally:
        torch.set_num_threads(previous_threads)


def _record(obj: Any, path: Path) -> None:
    """Write ``obj`` as JSON to ``path`` unless the file holds it already (resuming a
    finished run rewrites nothing)."""
    try:
        if json.loads(path.read_text()) == json.loads(json.dumps(obj)):
            return
    except (OSError, ValueError):
        pass
    atomic_write_json(obj, path)


def _run(cfg: TrainConfig, out: Path | None, ckpt: dict[str, Any] | None,
         old_ks: tuple[int, ...] | None, init_from: str | os.PathLike | None,
         data: Sequence[DomainData], summary: dict[str, Any], device: torch.device, amp: bool,
         workers: int, progress: bool) -> TrainResult:
    """The body of ``train`` once the config, data and checkpoint are known (on
    ``cfg.threads`` threads)."""
    ckpt_path = out / CHECKPOINT if out is not None else None
    eval_data = (data[0].eval_data, data[1].eval_data)
    state = _new_state(cfg, device, amp, pretrained=ckpt is None)
    if ckpt is None:  # the banks start as a key-encoder pass over each domain (official code)
        state.banks = [_encode(state.encoder_k, d, device, cfg.eval_batch_size, workers)[0]
                       for d in eval_data]
    else:
        _restore(state, ckpt, device, optimizer=ckpt["config"]["optimizer"] == cfg.optimizer)
        _set_hyperparameters(state.optimizer, cfg)
        if init_from is not None:
            for entry in state.history:
                entry.setdefault("inherited_from", str(init_from))
    trains = state.epoch < cfg.epochs  # else a finished run: nothing is rewritten
    if out is not None and trains:
        atomic_write_json(cfg.to_dict(), out / "config.json")

    def run_evaluation() -> dict[str, Any]:
        return evaluate(state.encoder_k, *eval_data, ks=cfg.ks, device=device,
                        batch_size=cfg.eval_batch_size, num_workers=workers)

    metrics: dict[str, Any] = {}
    bar = tqdm(total=cfg.epochs, initial=state.epoch, disable=not progress, desc="train",
               unit="epoch", dynamic_ncols=True)
    while state.epoch < cfg.epochs:
        start = time.perf_counter()
        if ckpt_path is not None and ckpt_path.exists():
            note = f"The last good checkpoint ({state.epoch} epochs) is kept: {ckpt_path}."
        else:
            note = "No checkpoint had been written yet."
        entry = _train_epoch(cfg, state, data, device, amp, workers, note)
        entry["time_s"] = time.perf_counter() - start
        state.epoch += 1
        last = state.epoch == cfg.epochs
        if last or (cfg.eval_every and state.epoch % cfg.eval_every == 0):
            start = time.perf_counter()
            metrics = entry["metrics"] = run_evaluation()
            entry["eval_s"] = time.perf_counter() - start
        state.history.append(entry)
        if out is not None:
            atomic_torch_save(_checkpoint(cfg, state, summary), ckpt_path)
            atomic_write_json(state.history, out / "history.json")
        bar.update(1)
        bar.set_postfix(loss=f"{entry['losses']['total']:.3f}")
        if cfg.log_every and (state.epoch % cfg.log_every == 0 or last):
            bar.write(_summary(entry))
    bar.close()

    if not metrics:  # nothing left to train: reuse the last report unless ks changed
        evaluated = [e["metrics"] for e in state.history if "metrics" in e]
        reuse = evaluated and (old_ks is None or old_ks == tuple(cfg.ks))
        metrics = evaluated[-1] if reuse else run_evaluation()
        if out is not None and not reuse:  # re-evaluated with other ks: record them
            atomic_write_json(cfg.to_dict(), out / "config.json")
    if out is not None:
        _record(metrics, out / "metrics.json")
    state.encoder_k.eval()
    eval_sets = (data[0].eval_set, data[1].eval_set)
    return TrainResult(state.encoder_k, state.history, metrics, out, cfg, eval_sets)
