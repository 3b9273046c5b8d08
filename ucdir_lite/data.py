"""The data a run trains on: the two domains, one epoch's batches, a frozen pass over a domain.

``build_data`` loads the two domains on the classes they share (``cfg.classes`` restricts
them). On the generated benchmark the decoded images are kept as one uint8 tensor and
augmented a whole batch at a time on the device (``augment.BatchAugment``), and so is real
data whose images already have the training size and fit in memory (``fits_fast_path``);
other real data goes through per-image transforms in DataLoaders. ``epoch_batches`` yields
each step's two views and bank slots per domain, with the official code's image order
(``epoch_indices``), seeded from (seed, epoch, domain). ``encode`` is one eval-mode pass of
an encoder over a dataset: it fills the memory banks and gives the points k-means clusters
(and evaluation reads it).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ucdir_lite import datasets as ds_lib
from ucdir_lite import glyphs
from ucdir_lite.augment import BatchAugment, normalize
from ucdir_lite.config import TrainConfig
from ucdir_lite.utils import derive_seed


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
        return TensorImages(normalize(self.images.float() / 255.0), self.eval_set.labels)


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


FAST_PATH_BYTES = 2 * 2**30
"""With ``batch_augment=None``, real data takes the fast path only if both domains' images,
decoded as uint8, take at most this many bytes (2 GiB)."""


def fits_fast_path(cfg: TrainConfig, root: Path, classes: Sequence[str]) -> bool:
    """Whether real data can be held as one uint8 tensor per domain and augmented a batch at a
    time (``batch_augment=None`` decides by this): every image already has the training size
    ``image_size x image_size`` and all of them fit in ``FAST_PATH_BYTES``. Reads only the
    image headers, and stops at the first image of another size."""
    sets = [ds_lib.DomainDataset(root, name, classes=classes) for name in cfg.domains]
    if sum(len(s) for s in sets) * 3 * cfg.image_size**2 > FAST_PATH_BYTES:
        return False
    size = (cfg.image_size, cfg.image_size)
    return all(ds_lib.image_size(path) == size for s in sets for path, _ in s.samples)


def build_data(cfg: TrainConfig, progress: bool = False) -> list[DomainData]:
    """The two domains' data on the classes both share (``cfg.classes`` restricts them)."""
    root = data_root(cfg, progress)
    classes = list(cfg.classes) if cfg.classes else ds_lib.common_classes(root, cfg.domains)
    fast = cfg.batch_augment
    if fast is None:  # the generated benchmark always; real data when it is small enough
        fast = cfg.data_root is None or fits_fast_path(cfg, root, classes)
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


def check_sizes(cfg: TrainConfig, data: Sequence[DomainData]) -> None:
    """Every domain fills a batch and, when a cluster loss trains, has at least K images."""
    for domain in data:
        n = len(domain)
        if n < cfg.batch_size:
            raise ValueError(
                f"domain {domain.name!r} has {n} images, fewer than batch_size="
                f"{cfg.batch_size}; lower batch_size to at most {n}"
            )
        if cfg.trains_clusters() and cfg.num_clusters > n:
            raise ValueError(
                f"num_clusters={cfg.num_clusters} exceeds the {n} images of domain "
                f"{domain.name!r}; lower num_clusters (K) below the number of images"
            )


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


Batch = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
"""One step's input: per domain (A, B), (view 1, view 2, bank slots)."""


def epoch_batches(cfg: TrainConfig, data: Sequence[DomainData], epoch: int,
                  device: torch.device, workers: int) -> Iterator[Batch]:
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


@torch.no_grad()
def encode(encoder: nn.Module, dataset: Dataset, device: torch.device, batch_size: int,
           num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, D) of every image of ``dataset`` in order (eval mode, on ``device``), and
    the labels the dataset yields (for evaluation only)."""
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
