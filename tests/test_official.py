"""The official code's mechanics (conghuihu/UCDIR), each against a hand computation or a plain
loop written here: the L_DD scale, the bank written before the losses (SupCon's own slot),
k-means on fresh eval-mode features, MoCo v2 head loading, split batch norm, the epoch over
the larger domain, the CW ramp and the label-selected best epoch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import ucdir_lite.train as train_mod
from ucdir_lite import evaluation
from ucdir_lite.config import get_preset
from ucdir_lite.data import epoch_indices
from ucdir_lite.evaluation import label_selected_best
from ucdir_lite.losses import cluster_wise_supcon_loss, sample_distance_of_distance_loss
from ucdir_lite.model import (
    Encoder,
    SmallCNN,
    SplitBatchNorm,
    build_encoder,
    load_backbone_weights,
    split_batch_norm,
)
from ucdir_lite.train import shuffled_keys, train


@pytest.fixture(scope="module", autouse=True)
def data_env(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UCDIR_DATA", str(tmp_path_factory.mktemp("ucdir_data")))
        yield


def smoke(**overrides):
    return get_preset("smoke", **overrides)


# ----------------------------------------------------------------------- L_DD, official scale


def _loop_dod(z, c_a, c_b, tau):
    """M^x_ij = 1 - cos(p^x_i, p^x_j), p^x_i = softmax_j(z_i . c^x_j / tau), all in loops."""
    def soft(x, cs):
        e = [math.exp(sum(a * b for a, b in zip(x, c, strict=True)) / tau) for c in cs]
        return [v / sum(e) for v in e]

    def cos(u, v):
        dot = sum(a * b for a, b in zip(u, v, strict=True))
        return dot / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))

    rows = [x.tolist() for x in z]
    p_a = [soft(x, c_a.tolist()) for x in rows]
    p_b = [soft(x, c_b.tolist()) for x in rows]
    b = len(rows)
    sq = [[((1 - cos(p_a[i], p_a[j])) - (1 - cos(p_b[i], p_b[j]))) ** 2 for j in range(b)]
          for i in range(b)]
    official = sum(sum(row) for row in sq) / b  # sum over j, mean over i
    all_pairs = sum(sum(row) for row in sq) / b**2  # the package's former scale
    return official, all_pairs


def test_sample_dod_is_on_the_official_scale():
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(5, 3, generator=g, dtype=torch.float64), dim=1)
    c_a = F.normalize(torch.randn(4, 3, generator=g, dtype=torch.float64), dim=1)
    c_b = F.normalize(torch.randn(3, 3, generator=g, dtype=torch.float64), dim=1)
    official, all_pairs = _loop_dod(z, c_a, c_b, tau=0.5)
    loss = sample_distance_of_distance_loss(z, c_a, c_b, tau=0.5).item()
    # float64 on both sides: pytest's rel=1e-6 is far above their rounding differences
    assert loss == pytest.approx(official)
    assert loss == pytest.approx(5 * all_pairs)  # B = 5 times the mean over all B^2 entries


# ----------------------------------------------------------------------- bank written first


def test_supcon_with_the_bank_written_first_counts_the_own_slot():
    # one sample, label 0; its own slot (0) already holds its current key k = q
    q = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    bank_labels = torch.tensor([0, 0, 1])
    tau = 0.5
    logits = [1.0 / tau, 0.0 / tau, -1.0 / tau]  # q . bank_n / tau
    log_z = math.log(sum(math.exp(v) for v in logits))
    # positives: the own slot (0) and slot 1; the denominator runs over all three slots
    expected = -((logits[0] - log_z) + (logits[1] - log_z)) / 2
    loss = cluster_wise_supcon_loss(q, torch.tensor([0]), bank, bank_labels, tau=tau)
    assert loss.item() == pytest.approx(expected)  # float64 vs a Python float
    # removing the own slot (the package's former order) gives another value
    removed = cluster_wise_supcon_loss(q, torch.tensor([0]), bank, bank_labels, tau=tau,
                                       index=torch.tensor([0]))
    assert removed.item() == pytest.approx(-(logits[1] - math.log(
        math.exp(logits[1]) + math.exp(logits[2]))))
    assert abs(removed.item() - expected) > 0.1


def test_the_trainer_writes_the_keys_into_the_bank_before_the_losses(monkeypatch):
    seen = []
    real = train_mod.step_losses

    def spy(cfg, weights, q, k, index, banks, clusters):
        seen.append(all(torch.equal(banks[d][index[d]], k[d]) for d in (0, 1)))
        return real(cfg, weights, q, k, index, banks, clusters)

    monkeypatch.setattr(train_mod, "step_losses", spy)
    train(smoke(epochs=2, warmup_epochs=1), progress=False)
    assert seen and all(seen)


# ----------------------------------------------------------------------- k-means inputs


def test_kmeans_runs_on_fresh_eval_mode_features_of_every_image(monkeypatch):
    cfg = smoke(epochs=2, warmup_epochs=1, cluster_on="features", eval_batch_size=40)
    calls = []  # per encode call: the rows of each batch and the encoder's mode in forward
    real_encode = train_mod.encode

    def spy_encode(encoder, dataset, device, batch_size, num_workers=0):
        record = {"modes": [], "rows": [], "x": dataset.x if hasattr(dataset, "x") else None}

        def hook(module, args):
            record["modes"].append(module.training)
            record["rows"].append(args[0].shape[0])

        handle = encoder.register_forward_pre_hook(hook)
        try:
            return real_encode(encoder, dataset, device, batch_size, num_workers)
        finally:
            handle.remove()
            calls.append(record)

    clustered = []
    real_cluster = train_mod.cluster_features

    def spy_cluster(cfg_, features, epoch, match):
        clustered.append((epoch, [f.clone() for f in features], len(calls)))
        return real_cluster(cfg_, features, epoch, match)

    monkeypatch.setattr(train_mod, "encode", spy_encode)
    monkeypatch.setattr(evaluation, "encode", spy_encode)
    monkeypatch.setattr(train_mod, "cluster_features", spy_cluster)
    result = train(cfg, progress=False)
    n = [len(d) for d in result.datasets]
    assert [c[0] for c in clustered] == [1]  # only after the warm-up
    epoch, features, n_calls = clustered[0]
    fresh = calls[n_calls - 2:n_calls]  # the two passes just before the clustering
    for d, record in enumerate(fresh):
        assert record["modes"] and not any(record["modes"])  # eval mode throughout
        assert sum(record["rows"]) == n[d] == features[d].shape[0]  # every image, once
        assert record["rows"] == [40] * (n[d] // 40) + ([n[d] % 40] if n[d] % 40 else [])
    # un-augmented: the same pixels as the evaluation's, so the same features as a fresh pass
    # of the epoch-1 key encoder would give is checked through the inputs it was handed
    data = train_mod.build_data(cfg)
    for d, record in enumerate(fresh):
        assert torch.equal(record["x"], data[d].eval_data.x)


def test_cluster_on_bank_makes_no_extra_pass(monkeypatch):
    cfg = smoke(epochs=2, warmup_epochs=1, cluster_on="bank")
    passes = []
    real_encode = train_mod.encode

    def spy_encode(*args, **kwargs):
        passes.append(1)
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(train_mod, "encode", spy_encode)
    monkeypatch.setattr(evaluation, "encode", spy_encode)
    train(cfg, progress=False)
    assert len(passes) == 2 + 2  # the bank initialisation and the final evaluation


# ----------------------------------------------------------------------- MoCo v2 head


def _moco_checkpoint(path, width=4, hidden=32, dim=8):
    """A fake MoCo v2 checkpoint for a small_cnn(width) backbone: module.encoder_q.* keys,
    the MLP head as fc.0 / fc.2, a key encoder and a queue that must be ignored."""
    torch.manual_seed(0)
    backbone = SmallCNN(width)
    state = {f"module.encoder_q.{k}": v for k, v in backbone.state_dict().items()}
    state |= {f"module.encoder_k.{k}": torch.zeros_like(v)
              for k, v in backbone.state_dict().items()}
    head = {"fc.0.weight": torch.randn(hidden, 8 * width), "fc.0.bias": torch.randn(hidden),
            "fc.2.weight": torch.randn(dim, hidden), "fc.2.bias": torch.randn(dim)}
    state |= {f"module.encoder_q.{k}": v for k, v in head.items()}
    state["module.queue"] = torch.randn(dim, 10)
    torch.save({"epoch": 800, "state_dict": state}, path)
    return backbone, head


def test_moco_v2_head_loads_into_the_head(tmp_path):
    path = tmp_path / "moco_v2.pth.tar"
    backbone, head = _moco_checkpoint(path)
    encoder = build_encoder("small_cnn", feat_dim=8, width=4, hidden_dim=32, weights=path)
    assert isinstance(encoder, Encoder)
    for key, value in backbone.state_dict().items():
        assert torch.equal(encoder.backbone.state_dict()[key], value), key
    loaded = encoder.head.state_dict()
    for key, value in head.items():
        assert torch.equal(loaded[key.removeprefix("fc.")], value), key
    # both encoders of a run start from it: the key encoder is a copy, head included
    cfg = smoke(width=4, feat_dim=8, hidden_dim=32, weights=str(path))
    state = train_mod.new_state(cfg, torch.device("cpu"), amp=False, pretrained=True)
    for module in (state.encoder_q, state.encoder_k):
        assert torch.equal(module.head[2].weight, head["fc.2.weight"])


def test_moco_v2_head_of_other_shapes_is_a_clear_error(tmp_path):
    path = tmp_path / "moco_v2.pth.tar"
    _moco_checkpoint(path, hidden=32, dim=8)
    encoder = build_encoder("small_cnn", feat_dim=16, width=4, hidden_dim=32)
    with pytest.raises(ValueError, match=r"projection head of shapes.*feat_dim"):
        load_backbone_weights(encoder, path)


# ----------------------------------------------------------------------- split batch norm


def test_split_bn_normalises_each_group_with_its_own_statistics():
    # one channel, 4 samples: group 0 (samples 0, 1) holds 0 and 2, group 1 (2, 3) 10 and 12
    x = torch.tensor([0.0, 2.0, 10.0, 12.0]).view(4, 1, 1, 1)
    eps = 1e-12  # (x - mean) / sqrt(var + eps): within float32 rounding of eps = 0
    bn = SplitBatchNorm(1, num_splits=2, eps=eps)
    y = bn(x).flatten()
    # each group: mean 1 (or 11), biased variance 1 -> -1, +1
    assert torch.allclose(y, torch.tensor([-1.0, 1.0, -1.0, 1.0]), rtol=0, atol=1e-6)
    plain = torch.nn.BatchNorm2d(1, eps=eps)(x).flatten()  # mean 6, variance 26
    assert torch.allclose(plain, (torch.tensor([0.0, 2.0, 10.0, 12.0]) - 6) / math.sqrt(26))
    assert (plain - y).abs().max() > 0.5
    # running statistics: momentum 0.1 towards each group's, then averaged over the groups
    assert bn.running_mean.item() == pytest.approx(0.1 * (1 + 11) / 2)
    assert bn.running_var.item() == pytest.approx(0.9 + 0.1 * 2.0)  # unbiased var 2 per group
    bn.eval()  # eval mode: a plain BN with the running statistics
    assert torch.allclose(bn(x), (x - bn.running_mean) / bn.running_var.sqrt())


def test_the_key_encoder_uses_split_bn_and_shuffled_keys_come_back_in_order():
    cfg = smoke()
    state = train_mod.new_state(cfg, torch.device("cpu"), amp=False, pretrained=False)
    bns = [m for m in state.encoder_k.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(isinstance(m, SplitBatchNorm) and m.num_splits == 2 for m in bns)
    assert not any(isinstance(m, SplitBatchNorm) for m in state.encoder_q.modules())
    plain = train_mod.new_state(cfg.replace(key_bn_splits=1), torch.device("cpu"), amp=False,
                                 pretrained=False)
    assert not any(isinstance(m, SplitBatchNorm) for m in plain.encoder_k.modules())
    # in eval mode BN needs no batch statistics: shuffling must change nothing
    encoder = split_batch_norm(build_encoder("small_cnn", feat_dim=8, width=4)).eval()
    x = torch.randn(6, 3, 16, 16)
    torch.manual_seed(0)
    assert torch.allclose(shuffled_keys(encoder, x), encoder(x), atol=1e-6)


# ----------------------------------------------------------------------- epoch, ramp, best


def test_an_epoch_runs_over_the_larger_domain_and_resamples_the_smaller():
    small, large = epoch_indices([5, 12], seed=0, epoch=3)
    assert sorted(large.tolist()) == list(range(12))  # every image of the larger, once
    assert len(small) == 12 and int(small.max()) < 5 and int(small.min()) >= 0
    shared = large < 5  # positions the two domains draw from the same shuffled order
    assert torch.equal(small[shared], large[shared])
    again = epoch_indices([5, 12], seed=0, epoch=3)
    assert all(torch.equal(a, b) for a, b in zip(again, (small, large), strict=True))
    assert not torch.equal(epoch_indices([5, 12], seed=0, epoch=4)[1], large)


def test_uneven_domains_train_for_the_larger_domains_steps(tmp_path):
    from ucdir_lite import glyphs

    root = glyphs.generate_benchmark(tmp_path / "g", num_classes=4, images_per_class=8,
                                     domains=("clipart", "sketch"), progress=False)
    extra = sorted((root / "sketch").glob("*/*.png"))[:8]
    for i, path in enumerate(extra):  # sketch: 40 images, clipart: 32
        (path.parent / f"copy{i}.png").write_bytes(path.read_bytes())
    cfg = smoke(data_root=str(root), batch_size=8, num_clusters=4, epochs=2, warmup_epochs=1)
    result = train(cfg, progress=False)
    assert [e["steps"] for e in result.history] == [40 // 8, 40 // 8]


def test_label_selected_best_epoch_is_marked_and_chosen_by_both_directions():
    history = [
        {"epoch": 0},
        {"epoch": 1, "metrics": {"A->B": {"P@1": 50.0, "mAP": 1}, "B->A": {"P@1": 10.0}}},
        {"epoch": 2, "metrics": {"A->B": {"P@1": 30.0, "mAP": 9}, "B->A": {"P@1": 40.0}}},
        {"epoch": 3, "metrics": {"A->B": {"P@1": 40.0, "mAP": 9}, "B->A": {"P@1": 30.0}}},
    ]
    assert label_selected_best(history)["epoch"] == 2  # (30 + 40) / 2, the first of two ties
    assert label_selected_best([{"epoch": 0}]) is None
