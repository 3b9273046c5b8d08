"""Tests of ucdir_lite.model: encoder shapes, momentum update, backbone checkpoint loading."""

import copy

import pytest
import torch
import torchvision
from torch import nn

from ucdir_lite.model import (
    Encoder,
    SmallCNN,
    build_encoder,
    load_backbone_weights,
    momentum_update,
)


def _params(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_momentum_update_is_an_exponential_moving_average():
    torch.manual_seed(0)
    q, k = nn.Linear(4, 3), nn.Linear(4, 3)
    before_q, before_k = _params(q), _params(k)
    momentum_update(q, k, m=0.9)
    for pq, pk0, pk in zip(before_q, before_k, k.parameters(), strict=True):
        # float32 m a + (1 - m) b, a few roundings (and maybe an FMA) on each side: they differ
        # by <= 2 gamma(3) (0.9 |a| + 0.1 |b|) < 2e-7 (|weights| <= 0.5), under the float32
        # default of assert_close (atol 1e-5, rtol 1.3e-6)
        torch.testing.assert_close(pk, 0.9 * pk0 + 0.1 * pq)
        assert not pk.requires_grad or pk.grad is None
    for pq0, pq in zip(before_q, q.parameters(), strict=True):  # the query is untouched
        assert torch.equal(pq0, pq)  # never written to: bit-identical


def test_momentum_update_limits_and_bad_m():
    q, k = nn.Linear(2, 2), nn.Linear(2, 2)
    k_before = _params(k)
    # exact in IEEE arithmetic: k * 1 + 0 * q == k and k * 0 + 1 * q == q (finite values)
    momentum_update(q, k, m=1.0)
    assert all(torch.equal(a, b) for a, b in zip(k_before, k.parameters(), strict=True))
    momentum_update(q, k, m=0.0)
    assert all(torch.equal(a, b) for a, b in zip(q.parameters(), k.parameters(), strict=True))
    with pytest.raises(ValueError, match="momentum m"):
        momentum_update(q, k, m=1.5)
    with pytest.raises(ValueError, match="architectures"):
        momentum_update(q, nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))


def test_momentum_update_does_not_build_a_graph():
    q, k = nn.Linear(2, 2), nn.Linear(2, 2)
    momentum_update(q, k, m=0.5)
    assert all(p.grad_fn is None for p in k.parameters())


@pytest.mark.parametrize(
    "arch, kwargs", [("small_cnn", {"width": 8}), ("resnet18", {"small_input": True})]
)
def test_encoder_output_is_l2_normalised_and_differentiable(arch, kwargs):
    torch.manual_seed(0)
    encoder = build_encoder(arch, feat_dim=16, **kwargs)
    x = torch.randn(3, 3, 32, 32, requires_grad=True)
    z = encoder(x)
    assert z.shape == (3, 16)
    # float32 normalise then norm, d = 16: components err by gamma(d + 3) relative, the norm
    # adds gamma(d) / 2 + u: ~1.7e-6, under assert_close's float32 default (atol 1e-5)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3))
    z[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_small_cnn_width_and_head_sizes():
    net = SmallCNN(width=4)
    assert net.out_dim == 32
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 32)
    enc = Encoder(net, net.out_dim, feat_dim=8, hidden_dim=5)
    assert enc.head[0].out_features == 5 and enc.head[2].out_features == 8
    with pytest.raises(ValueError, match="width"):
        SmallCNN(width=0)


def test_small_cnn_pools_before_relu_with_the_same_values_and_gradients():
    """conv-BN-pool-ReLU is conv-BN-ReLU-pool bit for bit, forward and backward (ReLU and
    max-pooling commute), so the reorder changed no trained number; the state-dict keys stay."""
    torch.manual_seed(0)
    net = SmallCNN(width=4).to(memory_format=torch.channels_last)
    blocks, layers = [], list(net.features)
    while layers:  # regroup into conv, BN, [pool], ReLU and put ReLU back before the pool
        conv, bn, *rest = layers
        block = [conv, bn] + ([rest[0]] if isinstance(rest[0], nn.MaxPool2d) else [])
        layers = layers[len(block) + 1:]
        blocks += [conv, bn, nn.ReLU(), *block[2:]]
    reference = nn.Sequential(*blocks)
    assert [type(m) for m in net.features][:4] == [nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.ReLU]
    assert [type(m) for m in reference][:4] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    x = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    outs, grads = [], []
    for features in (net.features, reference):
        net.zero_grad()
        xi = x.clone().requires_grad_()
        y = features(xi)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs.append(y.detach())
        grads.append([xi.grad, *(p.grad.clone() for p in net.parameters())])
    assert torch.equal(outs[0], outs[1])
    assert all(torch.equal(a, b) for a, b in zip(grads[0], grads[1], strict=True))
    keys = net.state_dict()  # as before the reorder: conv 0, BN 1, conv 4, BN 5, ...
    assert "features.4.weight" in keys and "features.5.running_mean" in keys


def test_small_input_stem():
    big = build_encoder("resnet18", feat_dim=8)
    small = build_encoder("resnet18", feat_dim=8, small_input=True)
    assert big.backbone.conv1.kernel_size == (7, 7)
    assert small.backbone.conv1.kernel_size == (3, 3)
    assert isinstance(small.backbone.maxpool, nn.Identity)


def test_build_encoder_rejects_bad_arch_and_weights():
    with pytest.raises(ValueError, match="unknown arch 'vgg'.*small_cnn"):
        build_encoder("vgg")
    with pytest.raises(ValueError, match="only for the ResNets"):
        build_encoder("small_cnn", weights="imagenet")


def _small(width=4, seed=0):
    torch.manual_seed(seed)
    return build_encoder("small_cnn", feat_dim=8, width=width)


def _same_backbone(a: Encoder, b: Encoder) -> bool:
    """Bit-identity: loading copies tensors, no arithmetic (also for the asserts below)."""
    sa, sb = a.backbone.state_dict(), b.backbone.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "encoder"])
def test_load_plain_and_wrapped_state_dicts(tmp_path, wrap):
    source, target = _small(seed=1), _small(seed=2)
    head_before = copy.deepcopy(target.head.state_dict())
    assert not _same_backbone(source, target)
    if wrap == "plain":
        obj = source.backbone.state_dict()
    elif wrap == "state_dict":
        obj = {"state_dict": source.backbone.state_dict(), "epoch": 3}
    else:  # a whole Encoder's state dict: backbone.* keys, and head.* keys for the head
        obj = source.state_dict()
    path = tmp_path / "w.pt"
    torch.save(obj, path)
    load_backbone_weights(target, path)
    assert _same_backbone(source, target)
    # a bare backbone leaves the head at its init; an Encoder's head loads (as the official
    # code loads MoCo v2's head)
    head_after = source.head.state_dict() if wrap == "encoder" else head_before
    for key, value in target.head.state_dict().items():
        assert torch.equal(value, head_after[key])  # init kept or copied: bit-identical


def test_load_moco_v2_format_into_resnet18(tmp_path):
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None)
    state = {}
    for key, value in resnet.state_dict().items():
        if key.startswith("fc."):
            continue
        state[f"module.encoder_q.{key}"] = value
        state[f"module.encoder_k.{key}"] = torch.zeros_like(value)
    # MoCo v2's queue must be ignored; its MLP head (fc.0, fc.2) loads into the head
    state["module.encoder_q.fc.0.weight"] = torch.randn(512, 512)
    state["module.encoder_q.fc.0.bias"] = torch.randn(512)
    state["module.encoder_q.fc.2.weight"] = torch.randn(16, 512)
    state["module.encoder_q.fc.2.bias"] = torch.randn(16)
    state["module.queue"] = torch.randn(128, 10)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    path = tmp_path / "moco_v2.pth.tar"
    torch.save({"epoch": 800, "arch": "resnet18", "state_dict": state, "optimizer": {}}, path)

    encoder = build_encoder("resnet18", feat_dim=16, weights=path)
    # loaded weights are copies, no arithmetic: bit-identical (here and in the loop below)
    assert torch.equal(encoder.head[2].weight, state["module.encoder_q.fc.2.weight"])
    loaded = encoder.backbone.state_dict()
    for key, value in resnet.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key


def test_load_errors_are_clear(tmp_path):
    target = _small()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backbone_weights(target, tmp_path / "missing.pt")
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        load_backbone_weights(target, text)
    no_tensors = tmp_path / "empty.pt"
    torch.save({"epoch": 1}, no_tensors)
    with pytest.raises(ValueError, match="no state dict"):
        load_backbone_weights(target, no_tensors)
    # a width-8 small_cnn does not fit a width-4 one: says how many matched and what it is
    wider = tmp_path / "wide.pt"
    torch.save(_small(width=8).backbone.state_dict(), wider)
    with pytest.raises(ValueError, match=r"4 of 24 tensors match.*small_cnn\(width=8\)"):
        load_backbone_weights(target, wider)


def test_load_error_names_resnet_arch(tmp_path):
    path = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match=r"0 of \d+ tensors match.*looks like resnet18"):
        load_backbone_weights(_small(), path)
