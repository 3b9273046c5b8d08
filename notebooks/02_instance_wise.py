# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2. The instance-wise contrastive baseline
#
# **Learning goals.** After this notebook you can
#
# - write the instance-wise contrastive loss $\mathcal{L}_{IW}$ (InfoNCE) and read
#   `ucdir_lite.losses.instance_wise_loss`;
# - say what the momentum (key) encoder and the memory bank are for, and where the training
#   loop updates them;
# - train the baseline through the run cache: the shared warm-up, then the `IW` arm of the
#   ablation;
# - read its precision at $K$ in both directions and within each domain, and see the *domain
#   gap* in a retrieval gallery and in a projection of the features.
#
# It trains two runs, once (they are cached); the time it took to build, and to train its runs,
# is printed at its end. With `UCDIR_SMOKE=1` in the environment it trains a tiny model on a
# tiny benchmark through the same code.

# %%
# Colab setup: on Google Colab, install ucdir-lite from its repository.
# Anywhere else this does nothing (`make install` has installed it).
import subprocess
import sys

PACKAGE = "git+https://github.com/ucdir-lite/ucdir-lite@main"
if "google.colab" in sys.modules:
    pip = [sys.executable, "-m", "pip", "install", "-q", PACKAGE]
    subprocess.run(pip, check=True)

# %%
# %matplotlib inline
import inspect
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Code, Markdown, display

from ucdir_lite import chapter, cli, datasets, losses, model, plots, train
from ucdir_lite.ablation import WARMUP, train_arms
from ucdir_lite.augment import BatchAugment
from ucdir_lite.config import book_config, smoke_mode
from ucdir_lite.utils import resolve_device

page_start = time.perf_counter()
device = resolve_device()  # cuda when present, else cpu
# The preset of the ablation (notebook 6): the pair clipart -> sketch, seed 0.
cfg = book_config()  # the cpu preset; smoke in smoke mode
print(f"device: {device}; smoke mode: {smoke_mode()}")
print(f"domains A -> B: {cfg.domains[0]} -> {cfg.domains[1]}; {cfg.num_classes} classes x "
      f"{cfg.images_per_class} images per domain; seed {cfg.seed}")

# %% [markdown]
# ## Learning without labels: tell the images apart
#
# Training sees images of domain $A$ and of domain $B$ but no labels. The oldest trick that
# still works is *instance discrimination*: treat every image as its own class. Two random
# augmentations of the same image $x_b$ (a crop, a flip, colour jitter, blur) give two
# *views*; the query encoder $f_\theta$ maps the first to $q_b$, a slowly moving copy of it,
# the key encoder $f_{\theta_k}$, maps the second to $k_b$. All features are L2-normalised,
# so $q\cdot k$ is the cosine similarity. The loss asks $q_b$ to pick $k_b$ out of the keys
# of every other image of the same domain, kept in a **memory bank** $m_1, \dots, m_N$ with
# one slot per image (UCDIR {cite}`hu2022ucdir` takes it from MoCo {cite}`he2020moco`):
#
# $$\mathcal{L}_{IW} = -\frac{1}{B}\sum_{b=1}^{B}\log
# \frac{\exp(q_b\cdot k_b/\tau)}{\exp(q_b\cdot k_b/\tau) + \sum_{n\ne i_b}\exp(q_b\cdot m_n/\tau)}$$
#
# where $i_b$ is the bank slot of image $b$ and $\tau$ is the temperature (`cfg.tau_iw`). As in
# the official code, the trainer writes the batch's keys into their slots *before* computing
# the loss, so slot $i_b$ holds $k_b$ itself (it is the positive, not a negative) and the
# negatives include the current keys of the other images of the batch. It is a cross-entropy
# over $N$ candidates with the positive at position 0. The loss is computed within each
# domain and averaged over the two; nothing in it connects $A$ to $B$.
#
# This is the function the trainer calls:

# %%
display(Code(inspect.getsource(losses.instance_wise_loss), language="python"))

# %% [markdown]
# Two checks on made-up features make the formula concrete. With a bank of $N$ random unit
# vectors, a query that knows nothing about its key scores about $\log N$ (a uniform guess
# among $N$ candidates); a query equal to its key scores far less, and the lower the
# temperature, the harder the loss pushes.

# %%
g = torch.Generator().manual_seed(0)
n_bank, dim = 512, 32
bank = torch.nn.functional.normalize(torch.randn(n_bank, dim, generator=g), dim=1)
index = torch.arange(8)  # the batch holds the images of bank slots 0..7
k = bank[index]  # their keys
q_random = torch.nn.functional.normalize(torch.randn(8, dim, generator=g), dim=1)
print(f"log N = {np.log(n_bank):.3f}")
for tau in (1.0, 0.2, 0.07):
    matched = losses.instance_wise_loss(k, k, bank, index, tau=tau)
    random = losses.instance_wise_loss(q_random, k, bank, index, tau=tau)
    print(f"tau = {tau:<4}: query = its key -> {matched:.3f};  random query -> {random:.3f}")

# %% [markdown]
# ## The momentum encoder and the memory bank
#
# Apart from the batch's own keys, the bank holds keys computed at earlier steps. If the key
# encoder were the query encoder itself, those keys would come from many different versions
# of the network and the negatives would be inconsistent. MoCo's remedy is an encoder whose
# weights are an exponential moving average of the query encoder's,
#
# $$\theta_k \leftarrow m\,\theta_k + (1-m)\,\theta,$$
#
# so it changes slowly (`cfg.m`; MoCo uses 0.999, and 0.99 suits a few thousand images). It
# is never trained by gradient descent, and it is the encoder that is evaluated, as in the
# official code.

# %%
display(Code(inspect.getsource(model.momentum_update), language="python"))

# %% [markdown]
# The key encoder has one more detail from MoCo, *shuffling batch norm*: its batch-norm
# layers (`ucdir_lite.model.SplitBatchNorm`, `cfg.key_bn_splits` groups) normalise separate
# groups of the key batch, as if each sat on its own GPU, and the batch is shuffled before the
# pass and put back in order after it (`ucdir_lite.train.shuffled_keys`). A query and its key
# are then never normalised with the same batch statistics, which would let the encoder find
# its positive through them instead of through the image {cite}`he2020moco`. In eval mode,
# which is how the key encoder is evaluated, these layers are plain batch norm.

# %%
print(f"key encoder: batch norm in {cfg.key_bn_splits} group(s) of the shuffled key batch\n"
      f"(key_bn_splits = {cfg.key_bn_splits}; 1 is plain batch norm)")
display(Code(inspect.getsource(train.shuffled_keys), language="python"))

# %% [markdown]
# One training step, `ucdir_lite.train.train_step`, does all of it, in the order of the official
# code: the first views of a batch of each domain go through the query encoder and the second
# views through the key encoder (`shuffled_keys`); the keys are written into the batch's bank
# slots; then the loss terms of the epoch are computed against that bank and summed with their
# weights (here only $\mathcal{L}_{IW}$), the query encoder takes an optimiser step, and the
# key encoder follows it by `momentum_update`. Before the first step, the bank is filled by
# one pass of the key encoder over each domain.

# %%
display(Code(inspect.getsource(train.train_step), language="python"))

# %% [markdown]
# The views come from `ucdir_lite.augment.BatchAugment`, MoCo v2's augmentations applied to a
# whole batch at once. The two views of an image must be recognised as the same image, so
# whatever the augmentations change (colour, scale, position) is what the features learn to
# ignore:

# %% tags=["hide-input"]
root = train.data_root(cfg)  # the generated benchmark, made if missing
classes = datasets.common_classes(root, cfg.domains)


def raw_images(domain):
    """The images of a domain as stored on disk, uint8 (N, H, W, 3), in dataset order."""
    dataset = datasets.DomainDataset(root, domain, classes=classes)
    return np.stack([np.asarray(datasets.load_image(path)) for path, _ in dataset.samples])


images = {domain: raw_images(domain) for domain in cfg.domains}
augment = BatchAugment(cfg.image_size)
g = torch.Generator().manual_seed(0)
mean = torch.tensor(datasets.MEAN)[:, None, None]
std = torch.tensor(datasets.STD)[:, None, None]
fig, axes = plt.subplots(4, 6, figsize=(6.5, 4.6))
for row, domain in enumerate(cfg.domains):
    picks = np.linspace(0, len(images[domain]) - 1, 6).astype(int)
    x = torch.from_numpy(images[domain][picks]).permute(0, 3, 1, 2)
    views = (augment(x, g), augment(x, g))
    for v in range(2):
        for c in range(6):
            ax = axes[2 * row + v, c]
            ax.imshow((views[v][c] * std + mean).clamp(0, 1).permute(1, 2, 0))
            ax.set_xticks([])
            ax.set_yticks([])
        axes[2 * row + v, 0].set_ylabel(f"{domain}\nview {v + 1}", fontsize=9)
fig.suptitle("Two augmented views of six images per domain (a column is one image)")
plt.show()

# %% [markdown]
# ## Training the baseline
#
# Every run in this book follows the same schedule {cite}`hu2022ucdir`: a **warm-up** of `warmup_epochs`
# epochs on $\mathcal{L}_{IW}$ alone (clusters of random features would be meaningless),
# then `epochs - warmup_epochs` more epochs with the losses of the run. The runs of the book
# are the rows of the ablation (notebook 6), and they share the warm-up: it is trained once
# and every row continues from its checkpoint, so every row starts from the same weights and
# trains for the same number of epochs. The baseline row `IW` simply keeps training
# $\mathcal{L}_{IW}$ alone.
#
# `ucdir_lite.ablation.train_arm` trains through a run cache (`$UCDIR_RUNS`, by default
# `~/.cache/ucdir_lite/runs`), keyed by the config, the code and the data: running this
# notebook again, or the ablation, loads the finished runs instead of training them again.

# %%
print(f"warm-up: {cfg.warmup_epochs} epochs of L_IW; the IW row: "
      f"{cfg.epochs - cfg.warmup_epochs} more epochs of L_IW")
print(f"encoder: {cfg.arch} (width {cfg.width}), {cfg.feat_dim}-d features; "
      f"batch {cfg.batch_size} per domain;\n{cfg.optimizer} lr {cfg.lr}; "
      f"tau_iw {cfg.tau_iw}; m {cfg.m}")
runs = train_arms(cfg, (WARMUP, "IW"))

# %% [markdown]
# The history of a row includes the warm-up it forked (shaded). Left: $\mathcal{L}_{IW}$, the
# mean over each epoch's steps; right: the precision at $K$ (defined in notebook 1), measured
# at the end of the warm-up and at the end of the row.

# %%
iw = runs["IW"]
display(plots.training_curves(iw.history, title="The IW row: L_IW per epoch"))

# %% [markdown]
# ## How well does it retrieve?
#
# The trainer ends every run with `ucdir_lite.evaluation.evaluate`: the precision at $K$ (see
# notebook 1) of $A$ querying $B$ ($A\to B$), of $B$ querying $A$, and, for reference, of each domain
# querying itself (the query left out). An encoder with random weights gives the starting
# point.

# %%
untrained = train.build_model(cfg).to(device)
dataset_a, dataset_b = iw.datasets
reports = {
    "untrained": train.evaluate(untrained, dataset_a, dataset_b, ks=cfg.ks, device=device),
    "warm-up": runs[WARMUP].metrics,
    "IW": iw.metrics,
}
k = cfg.ks[0]
a, b = cfg.domains
print(f"P@{k} (chance: {100 / cfg.num_classes:.1f})")
print(cli.format_comparison(reports, f"P@{k}", cfg.domains))
for d in ("A->B", "B->A"):
    lift = reports["IW"][d][f"P@{k}"] - reports["untrained"][d][f"P@{k}"]
    print(f"IW minus untrained, {d}: {lift:+.1f} points of P@{k}")

# %%
display(plots.precision_bars(reports, f"P@{k}", directions=("A->B", "B->A", "A->A", "B->B"),
                             reference=100 / cfg.num_classes,
                             title=f"P@{k}: A = {a}, B = {b}"))

# %%
gap = {d: iw.metrics[d][f"P@{k}"] for d in ("A->B", "B->A", "A->A", "B->B")}
for own, cross, x, y in (("A->A", "A->B", a, b), ("B->B", "B->A", b, a)):
    print(f"IW, {x} queries: P@{k} {gap[own]:.1f} in {x}, {gap[cross]:.1f} in {y}, "
          f"difference {gap[own] - gap[cross]:+.1f}")

# %% [markdown]
# The last two lines say what training without a single label has bought over the untrained
# encoder, and the table how far each row stands from chance. The in-domain columns are the
# reference for the cross-domain ones: nothing in $\mathcal{L}_{IW}$ asks a sketch to land
# near the clip art of its class, since each domain is trained against its own bank, so no
# term of the loss acts on the **domain gap**, whatever separates the two domains in feature
# space. The in-domain minus cross-domain differences printed above measure it in P@K; they
# need not be positive: a query can find its class more easily in the *other* domain when
# that domain's images are easier to rank (a negative difference), and the gap shows up
# instead as the domains' separate clouds in the projections at the end of this notebook.
#
# ## Looking at the retrievals
#
# Each row: a query from $A$ and the eight images of $B$ it ranks highest, by the cosine
# similarity of the `IW` features (green: same class, red: another class).

# %%
feats_a, labels_a = train.extract_features(iw.encoder, dataset_a, device)
feats_b, labels_b = train.extract_features(iw.encoder, dataset_b, device)
display(plots.retrieval_gallery(
    images[a], images[b], feats_a, feats_b, labels_a, labels_b, n_queries=6, k=8,
    class_names=classes, title=f"IW features: {a} queries, their top 8 {b} images"))

# %% [markdown]
# ## The domain gap, seen
#
# A t-SNE projection of both domains' features (`ucdir_lite.plots.embedding_projection`),
# first for the untrained encoder, then for the `IW` row. Left, coloured by domain: where the
# two domains are aligned, their points mix; where they are not, each domain forms its own
# cloud. Right, coloured by class (circles: $A$, triangles: $B$): a tight group holding both
# markers is a class that is retrieved well across the domains.

# %%
untrained_a, _ = train.extract_features(untrained, dataset_a, device)
untrained_b, _ = train.extract_features(untrained, dataset_b, device)
display(plots.embedding_projection(
    untrained_a, untrained_b, labels_a, labels_b, method="tsne", domain_names=cfg.domains,
    class_names=classes, max_points=600, title="Untrained encoder (t-SNE)"))

# %%
display(plots.embedding_projection(
    feats_a, feats_b, labels_a, labels_b, method="tsne", domain_names=cfg.domains,
    class_names=classes, max_points=600, title="IW features (t-SNE)"))

# %% [markdown]
# Compare the two left panels. An encoder that responds to style (a flat colour fill versus
# pencil strokes on paper) puts each domain in its own region. Instance
# discrimination had to ignore colour, scale and position to match two views of an image;
# how much of the separation by domain survives it is what the second projection shows, and
# the right panels show which classes come together across the domains.

# %% [markdown]
# ## Summary

# %% tags=["remove-input"]
lift = {d: reports["IW"][d][f"P@{k}"] - reports["untrained"][d][f"P@{k}"] for d in ("A->B", "B->A")}
warm_step = [reports["IW"][d][f"P@{k}"] - reports["warm-up"][d][f"P@{k}"] for d in ("A->B", "B->A")]
display(Markdown(chapter.numbered([
    "L_IW asks each image's query feature to pick its own key out of a memory "
    "bank of one key per image; the key encoder is a momentum copy of the query encoder.",
    f"Without a label, the `IW` row lifts cross-domain P@{k} from {reports['untrained']['A->B'][f'P@{k}']:.1f} "
    f"to {reports['IW']['A->B'][f'P@{k}']:.1f} ({a}→{b}, {lift['A->B']:+.1f} points) and from "
    f"{reports['untrained']['B->A'][f'P@{k}']:.1f} to {reports['IW']['B->A'][f'P@{k}']:.1f} "
    f"({b}→{a}, {lift['B->A']:+.1f}); chance is {100 / cfg.num_classes:.1f}.",
    f"The {cfg.epochs - cfg.warmup_epochs} epochs after the warm-up changed P@{k} by "
    f"{warm_step[0]:+.1f} ({a}→{b}) and {warm_step[1]:+.1f} ({b}→{a}) on this seed; one seed "
    "says nothing about whether such a change is reproducible: the book's rule "
    "(`ablation.RULE`, notebook 6) needs several.",
    f"In-domain minus cross-domain P@{k}: {gap['A->A'] - gap['A->B']:+.1f} for {a} queries, "
    f"{gap['B->B'] - gap['B->A']:+.1f} for {b} queries. No term of L_IW acts "
    "on the gap between the domains; chapters 4 and 5 add the terms that do.",
])))

# %% [markdown]
# ## Exercises
#
# 1. Train the `IW` row with another seed, `train_arm(get_preset("cpu", seed=1), "IW")`, and
#    compare its P@K with seed 0's: how large is the seed-to-seed change next to the lift over
#    the untrained encoder?
# 2. Lower the InfoNCE temperature, `get_preset("cpu", tau_iw=0.07)`, and train the `IW` row
#    again (a new warm-up: the temperature is part of the run key). Does retrieval improve?
# 3. Set `key_bn_splits=1` (plain batch norm in the key encoder) and explain, with the
#    paragraph on shuffling BN above, what the query could exploit.

# %% tags=["remove-input"]
display(Markdown(chapter.runtime_note(page_start, [run.out_dir for run in runs.values()])))

# %% [markdown]
# ## Going further on a GPU
#
# The same call trains the baseline of the paper's protocol on real data. This page does not
# run it: it needs the prepared data and hours on a GPU. Prepare the data once (notebook 1),
# download the MoCo v2 checkpoint (notebook 1 says where from), then:
#
# ```bash
# ucdir-lite data prepare domainnet --root data/domainnet --domains clipart sketch
# ucdir-lite ablate --preset domainnet --data-root data/domainnet \
#     --pairs clipart:sketch \
#     --seeds 0 --arms IW --set weights=moco_v2_800ep_pretrain.pth.tar \
#     --out results/domainnet-iw
# ```
#
# or, in Python,
#
# ```python
# real = get_preset("domainnet", weights="moco_v2_800ep_pretrain.pth.tar")
# real_iw = train_arm(real, "IW")   # the shared warm-up, then the IW row, through the run cache
# print(real_iw.metrics)
# ```
#
# The `domainnet` preset trains a ResNet-50 for 200 epochs, 20 of them warm-up, with batches
# of 64 images per domain; `get_preset("domainnet")` prints every setting.

# %% [markdown]
# **Next:** notebook 3 adds the cluster-wise contrastive loss, which groups the images of each
# domain into clusters and pulls each image towards its cluster's centroid.
