"""The encoder f_theta: a backbone, a 2-layer MLP head and L2 normalisation.

    z = f_theta(x) = g(h(x)) / ||g(h(x))||_2

h is the backbone (a small CNN for 32 px images on a CPU, or a torchvision ResNet),
g = Linear-ReLU-Linear is the projection head of MoCo v2 (128-d output by default), and z
is the L2-normalised feature used by every loss and by retrieval (the
book's notation).
The key encoder of the instance-wise loss is a copy of the query encoder updated by
``momentum_update`` (book chapter 2; He et al., "Momentum Contrast", CVPR 2020).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from ucdir_lite.config import TrainConfig

ARCHS = ("small_cnn", "resnet18", "resnet50")

# Key prefixes stripped from foreign checkpoints (DataParallel, MoCo, our own Encoder).
_PREFIXES = ("module.", "encoder_q.", "encoder.", "backbone.")
# Keys that belong to a classifier / projection head / MoCo key encoder, never to a backbone.
_DROPPED = ("fc.", "head.", "encoder_k.", "queue", "classifier.")


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU blocks (width, 2w, 4w, 8w channels), 2x2 max-pooling after the first
    three, global average pooling: a (B, 3, H, W) image batch -> (B, 8 * width) features.

    Sized for 32x32 images on a CPU (about 0.4 M parameters at width 32). A pooled block
    runs conv-BN-pool-ReLU: ReLU and max-pooling commute (both are monotone), so this is the
    same function with the same gradients, bit for bit, and the ReLU touches a quarter of the
    values.
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        channels = [3, width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [
                nn.Conv2d(channels[i], channels[i + 1], 3, padding=1, bias=False),
                nn.BatchNorm2d(channels[i + 1]),
            ]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
            layers.append(nn.ReLU(inplace=True))
        self.features = nn.Sequential(*layers)
        self.out_dim = channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


class Encoder(nn.Module):
    """Backbone + MLP head (Linear-ReLU-Linear) -> L2-normalised features z of shape (B, feat_dim).

    Args:
        backbone: a module mapping images to (B, in_dim) vectors.
        in_dim: the backbone's output width.
        feat_dim: the dimension D of z (128 in the paper).
        hidden_dim: the head's hidden width (default: in_dim, as in MoCo v2).
    """

    def __init__(
        self, backbone: nn.Module, in_dim: int, feat_dim: int = 128, hidden_dim: int | None = None
    ) -> None:
        super().__init__()
        if feat_dim < 1 or in_dim < 1:
            raise ValueError(f"in_dim and feat_dim must be positive, got {in_dim}, {feat_dim}")
        hidden_dim = in_dim if hidden_dim is None else hidden_dim
        self.backbone = backbone
        self.head = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, feat_dim)
        )
        self.in_dim, self.hidden_dim, self.feat_dim = in_dim, hidden_dim, feat_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.backbone(x)), dim=1)


def _resnet(arch: str, weights: str | None, small_input: bool) -> tuple[nn.Module, int]:
    import torchvision

    builder = getattr(torchvision.models, arch)
    # torchvision downloads only for weights="DEFAULT": we ask for it only on "imagenet".
    net = builder(weights="DEFAULT" if weights == "imagenet" else None)
    in_dim = net.fc.in_features
    net.fc = nn.Identity()
    if small_input:  # CIFAR-style stem: 3x3 stride-1 conv and no max-pool for 32 px images
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    return net, in_dim


def build_encoder(
    arch: str = "small_cnn",
    feat_dim: int = 128,
    weights: str | os.PathLike | None = None,
    small_input: bool = False,
    *,
    width: int = 32,
    hidden_dim: int | None = None,
) -> Encoder:
    """Build an ``Encoder`` for ``arch`` in {"small_cnn", "resnet18", "resnet50"}.

    Args:
        arch: the backbone.
        feat_dim: the dimension of z.
        weights: None -> random initialisation (never downloads); "imagenet" -> torchvision's
            ImageNet weights (downloads once into the torch hub cache; ResNets only); a path ->
            a local backbone checkpoint loaded by ``load_backbone_weights`` (e.g. MoCo v2).
        small_input: ResNets only: a 3x3 stride-1 stem without max-pool for 32 px images.
        width: SmallCNN's base width.
        hidden_dim: the head's hidden width (default: the backbone's output width).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if arch == "small_cnn":
        if weights == "imagenet":
            raise ValueError(
                "weights='imagenet' exists only for the ResNets; use arch='resnet18' or "
                "'resnet50', or pass a path to a small_cnn checkpoint"
            )
        backbone: nn.Module = SmallCNN(width)
        in_dim = backbone.out_dim
    else:
        backbone, in_dim = _resnet(arch, "imagenet" if weights == "imagenet" else None, small_input)
    encoder = Encoder(backbone, in_dim, feat_dim, hidden_dim)
    if weights is not None and weights != "imagenet":
        load_backbone_weights(encoder, weights)
    return encoder


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def _head_state(obj: object) -> dict[str, torch.Tensor]:
    """The projection head's tensors in a loaded checkpoint, keyed as ``Encoder.head``'s
    (``"0.weight"``...): MoCo v2's ``fc.0``/``fc.2`` MLP or a ucdir-lite ``head.*``; {} if it
    has none (a classifier's single ``fc.weight``/``fc.bias`` is not a projection head)."""
    state = {}
    for key, value in _state_dict(obj).items():
        if key.startswith(("module.encoder_k.", "encoder_k.")) or not isinstance(
                value, torch.Tensor):
            continue
        key = _strip(key)
        for prefix in ("fc.", "head."):
            if key.startswith(prefix) and key[len(prefix):].split(".")[0].isdigit():
                state[key[len(prefix):]] = value
    return state


def _state_dict(obj: object) -> Mapping:
    """The state dict inside a loaded checkpoint (plain, ``state_dict``, ``model``...)."""
    if isinstance(obj, Mapping):
        for name in ("state_dict", "model", "encoder_q"):
            if isinstance(obj.get(name), Mapping):
                obj = obj[name]
                break
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError("it holds no state dict (a mapping from parameter names to tensors)")
    return obj


def _backbone_state(obj: object) -> dict[str, torch.Tensor]:
    """Find the state dict inside a loaded checkpoint and keep the backbone's tensors."""
    state = {}
    for key, value in _state_dict(obj).items():
        if not isinstance(value, torch.Tensor) or not isinstance(key, str):
            continue
        if key.startswith(("module.encoder_k.", "encoder_k.", "module.queue")):
            continue
        key = _strip(key)
        if not key.startswith(_DROPPED):
            state[key] = value
    return state


def _guess_arch(state: Mapping[str, torch.Tensor]) -> str:
    """Name the architecture a backbone state dict looks like (for error messages)."""
    keys = set(state)
    if "conv1.weight" in keys and any(k.startswith("layer4.") for k in keys):
        blocks = {int(k.split(".")[1]) for k in keys if k.startswith("layer3.")}
        bottleneck = "layer1.0.conv3.weight" in keys
        names = {6: "resnet50", 23: "resnet101", 36: "resnet152"} if bottleneck else {
            2: "resnet18", 6: "resnet34"}
        name = names.get(len(blocks), "a ResNet")
        stem = " with a 3x3 small-input stem" if state["conv1.weight"].shape[-1] == 3 else ""
        return name + stem
    if "features.0.weight" in keys:
        return f"small_cnn(width={state['features.0.weight'].shape[0]})"
    return "no architecture ucdir-lite knows"


def load_backbone_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a local checkpoint into ``model`` (an ``Encoder`` or a bare backbone).

    Accepts a plain state dict, ``{"state_dict": ...}`` (also ``{"model": ...}``), MoCo v2
    checkpoints (``module.encoder_q.*`` keys; the key encoder and the queue are dropped) and
    ucdir-lite checkpoints. Every backbone tensor must be found with the right shape. Into an
    ``Encoder``, a projection head in the checkpoint (MoCo v2's ``fc.0``/``fc.2`` MLP, or a
    ucdir-lite ``head.*``) is loaded too, as the official UCDIR code loads MoCo v2's backbone
    and head into both encoders; its shapes must match the encoder's head. A checkpoint
    without a head (a bare backbone) leaves the head at its initialisation. Returns ``model``.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(
            f"backbone weights file {str(path)!r} is a folder, not a checkpoint file; pass the "
            "path of the .pth/.pt file (--set weights=PATH)"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone weights file {str(path)!r} does not exist; pass the path of a local "
            "checkpoint (e.g. MoCo v2's moco_v2_800ep_pretrain.pth.tar) or weights=None"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors come in many types
        raise ValueError(
            f"{str(path)!r} is not a PyTorch checkpoint that loads with weights_only=True "
            f"({type(err).__name__}); pass a .pth/.pt file saved with torch.save"
        ) from err
    try:
        state = _backbone_state(obj)
    except ValueError as err:
        raise ValueError(f"{str(path)!r} is not a usable checkpoint: {err}") from None
    target = model.backbone if isinstance(model, Encoder) else model
    expected = target.state_dict()
    fits = {k: v for k, v in state.items() if k in expected and v.shape == expected[k].shape}
    missing = [k for k in expected if k not in fits]
    if missing:
        raise ValueError(
            f"checkpoint {str(path)!r} does not fit this backbone: {len(fits)} of "
            f"{len(expected)} tensors match (first missing or mis-shaped: {missing[0]!r}); "
            f"the checkpoint looks like {_guess_arch(state)}: build the encoder with that arch "
            "(and small_input as it was trained)"
        )
    target.load_state_dict(fits)
    head = _head_state(obj) if isinstance(model, Encoder) else {}
    if head:
        _load_head(model, head, path)
    return model


def _load_head(model: Encoder, head: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.head.state_dict()
    shapes = {k: tuple(v.shape) for k, v in head.items()}
    wanted = {k: tuple(v.shape) for k, v in expected.items()}
    if shapes != wanted:
        raise ValueError(
            f"checkpoint {str(path)!r} has a projection head of shapes {shapes}, but the "
            f"encoder's head has {wanted}; build the encoder with the checkpoint's feat_dim "
            f"and hidden_dim (MoCo v2: feat_dim=128, hidden_dim = the backbone's width)"
        )
    model.head.load_state_dict(head)


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d that, in training, normalises ``num_splits`` equal, consecutive groups of
    the batch separately, as if each group sat on its own GPU.

    MoCo's key encoder uses such per-GPU batch statistics, with the batch shuffled before the
    split, so that a query and its key are never normalised with the same statistics (which
    would let the encoder "cheat" through BN; He et al., CVPR 2020, §3.3 "Shuffling BN"). The
    official UCDIR code does this on one GPU with two splits of the shuffled key batch (see
    ``train.shuffled_keys``): each group is then a random subset. Each group's statistics
    update the running mean and variance, which are then averaged over the groups; in eval
    mode this is a plain BatchNorm2d with those running statistics.
    """

    def __init__(self, num_features: int, num_splits: int = 2, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        if num_splits < 1:
            raise ValueError(f"num_splits must be >= 1, got {num_splits!r}")
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.num_splits
        if not self.training or s == 1:
            return super().forward(x)
        if x.shape[0] % s:
            raise ValueError(f"a batch of {x.shape[0]} cannot be split into {s} equal BN groups")
        outs, means, variances = [], [], []
        for group in x.chunk(s):  # consecutive rows: each group keeps x's memory format
            mean, var = self.running_mean.clone(), self.running_var.clone()
            outs.append(F.batch_norm(group, mean, var, self.weight, self.bias, True,
                                     self.momentum, self.eps))
            means.append(mean)
            variances.append(var)
        self.running_mean.copy_(torch.stack(means).mean(0))
        self.running_var.copy_(torch.stack(variances).mean(0))
        return torch.cat(outs)


def split_batch_norm(module: nn.Module, num_splits: int = 2) -> nn.Module:
    """Replace, in place, every BatchNorm2d of ``module`` by a ``SplitBatchNorm`` holding the
    same parameters and running statistics (the state-dict keys do not change). Returns it."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SplitBatchNorm):
            split = SplitBatchNorm(child.num_features, num_splits, eps=child.eps,
                                   momentum=child.momentum, affine=child.affine,
                                   track_running_stats=child.track_running_stats)
            split.load_state_dict(child.state_dict())
            split.to(device=child.weight.device if child.affine else None)
            setattr(module, name, split)
        else:
            split_batch_norm(child, num_splits)
    return module


@torch.no_grad()
def momentum_update(encoder_q: nn.Module, encoder_k: nn.Module, m: float = 0.999) -> None:
    r"""Exponential moving average of the key encoder's parameters, in place:

    .. math::
        \theta_k \leftarrow m\,\theta_k + (1 - m)\,\theta_q

    m: the momentum in [0, 1] (MoCo: 0.999; 0.99 for tiny data). Buffers (BatchNorm running
    statistics) are left alone: each encoder keeps its own. He et al., CVPR 2020, Eq. (2).
    """
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum m must lie in [0, 1], got {m!r}")
    params_q, params_k = list(encoder_q.parameters()), list(encoder_k.parameters())
    if len(params_q) != len(params_k):
        raise ValueError("encoder_q and encoder_k have different architectures")
    for p_q, p_k in zip(params_q, params_k, strict=True):
        p_k.mul_(m).add_(p_q.detach(), alpha=1.0 - m)


def build_model(cfg: TrainConfig) -> Encoder:
    """The query encoder described by ``cfg`` (random head; backbone from ``cfg.weights``)."""
    small_input = cfg.image_size <= 64 if cfg.small_input is None else cfg.small_input
    return build_encoder(cfg.arch, cfg.feat_dim, weights=cfg.weights, small_input=small_input,
                         width=cfg.width, hidden_dim=cfg.hidden_dim)
