"""Loading ``root/<domain>/<class>/<image>`` folders: one dataset class for real and generated data.

Office-Home (``Art``, ``Clipart``, ``Product``, ``Real World``), a DomainNet subset and the
package's generated glyph benchmark (:mod:`ucdir_lite.glyphs`) all reduce to this layout
(book chapter 1). A sample is ``(x, label, index)``: ``index`` is the image's slot in the memory
bank (book chapter 2); ``label`` is for evaluation only, the trainer never reads it.

The training augmentations (``train_transform``, re-exported here) live in
:mod:`ucdir_lite.augment` beside their batched form; this module holds the evaluation transform.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from ucdir_lite.augment import CROP_SCALE, MEAN, STD, train_transform

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")

_HINT = "run `ucdir-lite data generate` for the built-in benchmark, or check --data-root"
_SKIP_HINT = "in Python, DomainDataset(..., skip_bad_images=True) drops unreadable images"
_DECODE_ERRORS = (
    OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError
)


def _subdirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _domain_dir(root: str | os.PathLike, domain: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist; {_HINT}")
    folder = root / domain
    if not folder.is_dir():
        raise FileNotFoundError(
            f"domain folder {folder} does not exist (domains under {root}: "
            f"{_subdirs(root)}); check the domain name, or {_HINT}"
        )
    return folder


_GREY_16 = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    """Grey levels in [0, 255] (float; out-of-range values clipped), rounded, as RGB."""
    levels = np.floor(np.clip(grey, 0.0, 255.0) + 0.5).astype(np.uint8)
    return Image.fromarray(np.repeat(levels[..., None], 3, axis=-1), "RGB")


def _on_white(img: Image.Image) -> Image.Image:
    """Composite onto white: a channel c of opacity a becomes 255 - (255 - c) a / 255."""
    rgba = np.asarray(img.convert("RGBA"), dtype=np.float64)
    alpha = rgba[..., 3:] / 255.0
    rgb = 255.0 - (255.0 - rgba[..., :3]) * alpha
    return Image.fromarray(np.floor(rgb + 0.5).astype(np.uint8), "RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB without losing its levels.

    16-bit grey (``I;16*``, and ``I``, read as 16-bit) is scaled by 255/65535, float grey
    (``F``) is read as [0, 1] and scaled by 255 (both clipped to their range), and
    transparent pixels (RGBA, LA, PA, palette with transparency) are composited onto white.
    Every other mode (CMYK, L, P, 1, YCbCr, ...) uses PIL's conversion."""
    if img.mode == "RGB":
        return img
    if img.mode in _GREY_16:
        return _grey_to_rgb(np.asarray(img, dtype=np.float64) / 257.0)
    if img.mode == "F":
        return _grey_to_rgb(np.asarray(img, dtype=np.float64) * 255.0)
    if img.mode in _ALPHA or (img.mode == "P" and "transparency" in img.info):
        return _on_white(img)
    return img.convert("RGB")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode the image at ``path`` fully, as RGB; a corrupt file raises ``OSError`` naming it."""
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except _DECODE_ERRORS as e:
        raise OSError(
            f"cannot decode image {path}: {e}; delete or replace the file ({_SKIP_HINT})"
        ) from e


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of the image at ``path``, from its header (no pixels decoded)."""
    try:
        with Image.open(path) as img:
            return img.size
    except _DECODE_ERRORS as e:
        raise OSError(
            f"cannot read image {path}: {e}; delete or replace the file ({_SKIP_HINT})"
        ) from e


def _check_image(path: Path, full: bool) -> str | None:
    """None if ``path`` is a readable image, else the reason (``full``: decode every pixel)."""
    try:
        with Image.open(path) as img:
            if full:
                img.load()
            else:
                img.verify()
    except _DECODE_ERRORS as e:
        return f"{type(e).__name__}: {e}"
    return None


class DomainDataset(Dataset):
    """The images of one domain, ``root/<domain>/<class>/<image>``, with integer labels.

    Args:
        root: the data root (one folder per domain).
        domain: the domain folder name (may contain spaces, e.g. ``"Real World"``).
        classes: class folder names; the label of an image is the index of its class in this
            list, so two domains built with the same list share label ids. Default: the sorted
            class folders of this domain (see :func:`common_classes` for two domains).
        transform: applied to the RGB PIL image (e.g. :func:`train_transform`, :class:`TwoViews`).
        skip_bad_images: drop unreadable images (one warning lists them) instead of raising.
            Every image is then fully decoded once at construction.
        in_memory: decode every image once at construction and keep it (small data sets).
        check_images: at construction, run PIL's cheap ``verify()`` on every file (catches
            non-images and most corrupt files early; a truncated JPEG is caught at load time).

    Attributes: ``root``, ``domain``, ``classes``, ``class_to_idx``, ``samples`` (list of
    ``(path, label)``), ``labels`` (LongTensor). ``dataset[i]`` is ``(transform(img), label, i)``.
    Files whose extension is not an image extension (:data:`IMG_EXTENSIONS`) are skipped with
    one warning; hidden files (``.DS_Store``) silently.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        domain: str,
        classes: Sequence[str] | None = None,
        transform: Callable | None = None,
        skip_bad_images: bool = False,
        *,
        in_memory: bool = False,
        check_images: bool = True,
    ) -> None:
        folder = _domain_dir(root, domain)
        self.root = Path(root).expanduser()
        self.domain = domain
        self.transform = transform
        found = _subdirs(folder)
        if classes is None:
            classes = found
        classes = list(classes)
        missing = [c for c in classes if c not in found]
        if missing:
            raise ValueError(
                f"class folders {missing} not found in {folder}; pass classes present in "
                f"every domain (ucdir_lite.datasets.common_classes(root, domains))"
            )
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes contains duplicates: {classes}")
        if len(classes) < 2:
            raise ValueError(
                f"{folder} has {len(classes)} class folder(s) {classes}; retrieval needs at "
                f"least 2 classes (expected {folder}/<class>/<image>); {_HINT}"
            )
        self.classes = classes
        self.class_to_idx = {c: i for i, c in enumerate(classes)}

        samples, skipped = [], []
        for label, name in enumerate(classes):
            for entry in sorted(os.scandir(folder / name), key=lambda e: e.name):
                if entry.name.startswith(".") or not entry.is_file():
                    continue
                if os.path.splitext(entry.name)[1].lower() in IMG_EXTENSIONS:
                    samples.append((Path(entry.path), label))
                else:
                    skipped.append(entry.path)
        if skipped:
            warnings.warn(
                f"skipped {len(skipped)} non-image file(s) in {folder}: {skipped}",
                UserWarning,
                stacklevel=2,
            )
        if check_images or skip_bad_images:
            samples = self._drop_or_raise_bad(samples, full=skip_bad_images, skip=skip_bad_images)
        if not samples:
            raise ValueError(
                f"no images ({', '.join(IMG_EXTENSIONS)}) found in {folder}/<class>/; {_HINT}"
            )
        self.samples: list[tuple[Path, int]] = samples
        self.labels = torch.tensor([label for _, label in samples], dtype=torch.long)
        self._images = [load_image(p) for p, _ in samples] if in_memory else None

    @staticmethod
    def _drop_or_raise_bad(samples, *, full: bool, skip: bool):
        kept, bad = [], []
        for path, label in samples:
            reason = _check_image(path, full)
            if reason is None:
                kept.append((path, label))
            elif skip:
                bad.append(str(path))
            else:
                raise OSError(
                    f"corrupt or unreadable image {path} ({reason}); delete or replace the "
                    f"file ({_SKIP_HINT})"
                )
        if bad:
            warnings.warn(f"skipped {len(bad)} unreadable image(s): {bad}", UserWarning,
                          stacklevel=3)
        return kept

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        img = self._images[index] if self._images is not None else load_image(path)
        x = self.transform(img) if self.transform is not None else img
        return x, label, index

    def __repr__(self) -> str:
        return (
            f"DomainDataset(domain={self.domain!r}, images={len(self)}, "
            f"classes={len(self.classes)}, root={str(self.root)!r})"
        )


def common_classes(root: str | os.PathLike, domains: Sequence[str]) -> list[str]:
    """The sorted class folders present in every domain; warns listing what each domain loses."""
    if isinstance(domains, str) or len(domains) == 0:
        raise ValueError(f"domains must be a non-empty list of domain names, got {domains!r}")
    per_domain = {d: set(_subdirs(_domain_dir(root, d))) for d in domains}
    shared = set.intersection(*per_domain.values())
    dropped = {d: sorted(c - shared) for d, c in per_domain.items() if c - shared}
    if dropped:
        warnings.warn(
            f"classes not shared by all of {list(domains)} are dropped: {dropped}",
            UserWarning,
            stacklevel=2,
        )
    if len(shared) < 2:
        raise ValueError(
            f"domains {list(domains)} under {root} share {len(shared)} class folder(s); "
            f"retrieval needs at least 2 common classes; {_HINT}"
        )
    return sorted(shared)


# --------------------------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------------------------
def eval_transform(image_size: int = 32, *, resize_ratio: float = 1.0) -> v2.Compose:
    """Deterministic: resize the shorter side to ``image_size * resize_ratio``, center-crop
    ``image_size``, float tensor, Normalize(ImageNet mean/std). Use ``resize_ratio=256/224`` for
    the usual ImageNet-style evaluation of real photographs."""
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 pixels, got {image_size}")
    if resize_ratio < 1.0:
        raise ValueError(f"resize_ratio must be >= 1 (resize, then crop), got {resize_ratio}")
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(round(image_size * resize_ratio), antialias=True),
        v2.CenterCrop(image_size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(MEAN, STD),
    ])


class TwoViews:
    """Two independent augmentations of one image: ``TwoViews(t)(img) == (t(img), t(img))``.

    The query and key views of the instance-wise loss (book chapter 2).
    """

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, img):
        return self.transform(img), self.transform(img)

    def __repr__(self) -> str:
        return f"TwoViews({self.transform!r})"


# --------------------------------------------------------------------------------------------
# loaders
# --------------------------------------------------------------------------------------------
def _seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in a worker from the seed torch gave it (itself seeded)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def default_workers(device_type: str) -> int:
    """Loader worker processes when none are asked for: as many as the CPUs, at most 8 with
    CUDA and 4 on the CPU. Per-image transforms in the training process itself ran 2.7x (one
    worker) to 3.4x (two) slower per epoch on 2 cores (``bench/bench_real_data.py``)."""
    return min(8 if device_type == "cuda" else 4, os.cpu_count() or 1)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    seed: int = 0,
    num_workers: int | None = None,
    pin_memory: bool | None = None,
    order: Sequence[int] | None = None,
) -> DataLoader:
    """A DataLoader for training (shuffled with a seeded generator, ``drop_last``) or evaluation.

    ``order``: the dataset indices to visit, in this order (repeats allowed), instead of a
    shuffle (e.g. ``train.epoch_indices``).

    ``num_workers`` defaults to ``default_workers()`` persistent worker processes.
    The shuffle order depends only on ``seed`` (and advances from epoch to epoch); worker
    processes are seeded from it too. With ``num_workers=0`` random augmentations draw from
    torch's global generator: seed it once (``torch.manual_seed``) for repeatable views.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = len(dataset) if order is None else len(order)
    if train and n < batch_size:
        name = getattr(dataset, "domain", type(dataset).__name__)
        raise ValueError(
            f"domain {name!r} has {n} images, fewer than batch_size={batch_size}, and training "
            f"drops incomplete batches; lower the batch size (--batch-size) to at most {n} or "
            f"generate more images per class"
        )
    cuda = torch.cuda.is_available()
    if num_workers is None:
        num_workers = default_workers("cuda" if cuda else "cpu")
    if pin_memory is None:
        pin_memory = cuda
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and order is None,
        sampler=None if order is None else list(order),
        drop_last=train,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        generator=generator,
    )


__all__ = [
    "CROP_SCALE",
    "IMG_EXTENSIONS",
    "MEAN",
    "STD",
    "DomainDataset",
    "TwoViews",
    "common_classes",
    "default_workers",
    "eval_transform",
    "image_size",
    "load_image",
    "make_loader",
    "to_rgb",
    "train_transform",
]
