"""MoCo v2's augmentations, written once: per image (torchvision) and per batch (on the device).

``Augmentation`` holds the parameters (as in the official UCDIR code, sized for small images);
``train_transform`` builds the per-image torchvision pipeline from them (the loader path, for
real data) and ``BatchAugment`` applies the same draws to a whole uint8 batch at once (the fast
path for images already of the output size, ~50x faster on tiny images). Both end with
``normalize`` (ImageNet mean/std). The two paths draw from different generators and apply
colour jitter in a fixed order (torchvision shuffles it), so they agree in distribution, not
pixel for pixel.

Reference: X. Chen et al., "Improved Baselines with Momentum Contrastive Learning",
arXiv:2003.04297.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.transforms import v2

# ImageNet statistics: the convention of torchvision's pretrained backbones.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CROP_SCALE = (0.2, 1.0)
"""Area fraction of MoCo v2's random resized crop, as in the official UCDIR code."""


def normalize(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) floats in [0, 1] -> ImageNet-normalised, ``(x - MEAN) / STD``."""
    mean = torch.tensor(MEAN, device=x.device)[None, :, None, None]
    std = torch.tensor(STD, device=x.device)[None, :, None, None]
    return (x - mean) / std


@dataclass(frozen=True)
class Augmentation:
    """The parameters of one augmented view (both paths read these, nothing else)."""

    image_size: int = 32
    crop_scale: tuple[float, float] = CROP_SCALE
    """Area fraction of the random resized crop."""
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """Aspect ratio range of the crop."""
    hflip: bool = True
    """Random horizontal flip (p = 0.5); off for glyph sets with mirror pairs (b/d, p/q)."""
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    """Colour jitter strength: brightness, contrast, saturation, hue."""
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur: bool = True
    """Gaussian blur with probability ``blur_p``, sigma in ``blur_sigma``."""
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"image_size must be at least 8 pixels, got {self.image_size}")
        low, high = self.crop_scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(
                f"crop_scale must be (min, max) with 0 < min <= max <= 1, got {self.crop_scale}"
            )

    @property
    def blur_kernel(self) -> int:
        """The blur kernel's side: odd, about a tenth of the image, at least 3."""
        return max(3, int(0.1 * self.image_size) // 2 * 2 + 1)


def train_transform(
    image_size: int = 32,
    *,
    crop_scale: tuple[float, float] = CROP_SCALE,
    hflip: bool = True,
    blur: bool = True,
) -> v2.Compose:
    """MoCo-v2-style augmentation for one view (use ``datasets.TwoViews`` for a positive pair).

    RandomResizedCrop(``crop_scale``) -> horizontal flip -> ColorJitter(0.4, 0.4, 0.4, 0.1)
    with p=0.8 -> RandomGrayscale(0.2) -> GaussianBlur (p=0.5, kernel about a tenth of the
    image) -> float tensor in [0, 1] -> Normalize(ImageNet mean/std); the parameters are
    ``Augmentation``'s.

    The glyph benchmark's class list has no mirror pairs, so flips are safe on it. On other
    glyph or character sets, ``b``/``d``, ``p``/``q``, left/right arrows and the two crescents
    turn into each other under a flip: pass ``hflip=False`` there.
    """
    aug = Augmentation(image_size, crop_scale=crop_scale, hflip=hflip, blur=blur)
    steps: list = [
        v2.ToImage(),
        v2.RandomResizedCrop(image_size, scale=aug.crop_scale, ratio=aug.crop_ratio,
                             antialias=True),
    ]
    if aug.hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [
        v2.RandomApply([v2.ColorJitter(*aug.jitter)], p=aug.jitter_p),
        v2.RandomGrayscale(p=aug.gray_p),
    ]
    if aug.blur:
        steps.append(v2.RandomApply([v2.GaussianBlur(aug.blur_kernel, sigma=aug.blur_sigma)],
                                    p=aug.blur_p))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    return v2.Compose(steps)


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g, device=g.device) * (high - low) + low


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


class BatchAugment:
    """``train_transform`` on a whole batch at once, for images already of the output size.

    Per image: random resized crop and horizontal flip (one bilinear ``grid_sample``); with
    probability ``jitter_p`` colour jitter (brightness, contrast, saturation, hue; applied in
    this fixed order, the hue as a rotation in YIQ space); grayscale with probability
    ``gray_p``; Gaussian blur with probability ``blur_p``; ImageNet normalisation. All draws
    come from the ``generator`` passed in, so a seeded generator gives the same views on
    every run.
    """

    def __init__(self, image_size: int | Augmentation,
                 crop_scale: tuple[float, float] = CROP_SCALE) -> None:
        self.aug = (image_size if isinstance(image_size, Augmentation)
                    else Augmentation(image_size, crop_scale=crop_scale))
        self.image_size = self.aug.image_size
        self.kernel = self.aug.blur_kernel

    def _crop_and_flip(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        area = _uniform(n, *self.aug.crop_scale, g)
        low, high = self.aug.crop_ratio
        ratio = torch.exp(_uniform(n, math.log(low), math.log(high), g))
        w = torch.sqrt(area * ratio).clamp(max=1.0)  # fractions of the image side
        h = torch.sqrt(area / ratio).clamp(max=1.0)
        cx = _uniform(n, -1.0, 1.0, g) * (1 - w)  # crop centre, in [-1, 1] coordinates
        cy = _uniform(n, -1.0, 1.0, g) * (1 - h)
        flip = torch.where(torch.rand(n, generator=g, device=g.device) < 0.5, -1.0, 1.0)
        if not self.aug.hflip:  # drawn all the same: the other draws stay as they are
            flip = torch.ones_like(flip)
        theta = torch.zeros(n, 2, 3, device=x.device)
        theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
        theta[:, 1, 1], theta[:, 1, 2] = h, cy
        size = (n, x.shape[1], self.image_size, self.image_size)
        grid = nn.functional.affine_grid(theta, size, align_corners=False)
        return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                                         align_corners=False)

    def _jitter(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        brightness, contrast, saturation, hue = self.aug.jitter
        on = (torch.rand(n, generator=g, device=g.device) < self.aug.jitter_p).float()
        on = on[:, None, None, None]

        def factor(strength: float) -> torch.Tensor:
            return 1 + on * (_uniform(n, 1 - strength, 1 + strength, g)[:, None, None, None] - 1)

        x = (x * factor(brightness)).clamp_(0, 1)  # then in place: the same values, fewer copies
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        x.sub_(mean).mul_(factor(contrast)).add_(mean).clamp_(0, 1)
        gray = _gray(x)
        x.sub_(gray).mul_(factor(saturation)).add_(gray).clamp_(0, 1)
        angle = on.flatten() * _uniform(n, -hue, hue, g) * 2 * math.pi
        to_yiq = torch.tensor(_TO_YIQ, device=x.device)
        cos, sin = torch.cos(angle), torch.sin(angle)
        rot = torch.zeros(n, 3, 3, device=x.device)
        rot[:, 0, 0] = 1
        rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
        matrix = torch.linalg.inv(to_yiq) @ rot @ to_yiq  # (n, 3, 3)
        return torch.einsum("nij,njhw->nihw", matrix, x).clamp_(0, 1)

    def _blur(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, c, hgt, wid = x.shape
        k = self.kernel
        on = torch.rand(n, generator=g, device=g.device) < self.aug.blur_p
        sigma = _uniform(n, *self.aug.blur_sigma, g)
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
        gray = torch.rand(x.shape[0], generator=generator, device=generator.device)
        x = torch.where((gray < self.aug.gray_p)[:, None, None, None], _gray(x).expand_as(x), x)
        if self.aug.blur:
            x = self._blur(x, generator)
        return normalize(x)


__all__ = ["CROP_SCALE", "MEAN", "STD", "Augmentation", "BatchAugment", "normalize",
           "train_transform"]
