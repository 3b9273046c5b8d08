# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: -all
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
# # 3. The cluster-wise contrastive loss
#
# **Learning goals.** After this notebook you can
#
# - cluster a domain's memory bank with k-means, as the trainer does at every epoch after
#   the warm-up, and judge the clusters (prototypes) by their purity;
# - compute the soft assignments $p_{ij}$ and the soft centroids of spec §2, and read
#   `ucdir_lite.clustering.soft_assign` and `soft_centroids`;
# - write the cluster-wise contrastive loss $\mathcal{L}_{CW}$ and read
#   `ucdir_lite.losses.cluster_wise_loss`;
# - train the `CW` row of the ablation from the shared warm-up and compare it with the
#   `IW` baseline of notebook 2: purity, features and precision at $K$.
#
# It trains for about a minute on a CPU (the warm-up and the `IW` row come from the run cache
# when notebook 2 has run). With `UCDIR_SMOKE=1` it trains a tiny model through the same code.

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
from pathlib import Path

import torch
from IPython.display import Code, display

from ucdir_lite import clustering, datasets, losses, plots, train
from ucdir_lite.ablation import ARMS, WARMUP, arm_config, train_arm
from ucdir_lite.config import get_preset, smoke_mode
from ucdir_lite.utils import resolve_device

device = resolve_device()  # cuda when present, else cpu
# The preset of the ablation (notebook 6): the pair clipart -> sketch, seed 0.
cfg = get_preset("smoke" if smoke_mode() else "cpu")
a, b = cfg.domains
print(f"device: {device}; smoke mode: {smoke_mode()}; domains A -> B: {a} -> {b}")

# %% [markdown]
# ## From instances to clusters
#
# $\mathcal{L}_{IW}$ treats every image as its own class: two sketches of the same glyph are
# negatives of each other. The cluster-wise loss uses the structure the warm-up has found
# instead. It needs, per domain, $K$ groups of images that (we hope) share a class, found
# without labels: the k-means clusters of the memory bank.
#
# Let us start where the cluster losses start, from the shared warm-up of notebook 2 (from
# the run cache; trained now if notebook 2 has not run).

# %%
start = time.perf_counter()
warm = train_arm(cfg, WARMUP, progress=False)
print(f"warm-up ({cfg.warmup_epochs} epochs): ready in {time.perf_counter() - start:.0f} s")
banks = train.load_checkpoint(warm.out_dir)["banks"]  # one key feature per image and domain
dataset_a, dataset_b = warm.datasets
labels = (dataset_a.labels, dataset_b.labels)  # for evaluation only: training never sees them
classes = dataset_a.classes
print(f"memory banks: {a} {tuple(banks[0].shape)}, {b} {tuple(banks[1].shape)}")

# %% [markdown]
# ## k-means on the memory bank
#
# At the start of every epoch after the warm-up, the trainer runs k-means on each domain's
# bank (seeded from the run's seed and the epoch) and keeps the L2-normalised centroids as
# that epoch's **prototypes** $c_1, \dots, c_K$, with $K$ = `cfg.num_clusters`. The paper
# sets $K$ to the number of categories; here too. This is the trainer's function:

# %%
display(Code(inspect.getsource(train.cluster_banks), language="python"))

# %% [markdown]
# We call it exactly as the first cluster epoch of the `CW` row does, on the warm-up's banks.
# How good are the clusters? Labels may be used to *judge* them: a cluster's **purity** is
# the share of its images that have its most frequent class, and the purity of a clustering
# is the share of all images that have their cluster's majority class (100 % when every
# cluster is one class; about $100/K$ % for random clusters of a balanced set).

# %%
cw_cfg = arm_config(cfg, "CW")
clusters = train.cluster_banks(cw_cfg, banks, epoch=cfg.warmup_epochs, match=False)


def purity(cluster_labels, class_labels):
    """Percentage of images whose cluster's most frequent class is their own class."""
    counts = torch.zeros(int(cluster_labels.max()) + 1, int(class_labels.max()) + 1)
    counts.index_put_((cluster_labels.cpu(), class_labels.cpu()),
                      torch.ones(len(cluster_labels)), accumulate=True)
    return 100 * counts.max(dim=1).values.sum().item() / len(cluster_labels)


for d, name in enumerate(cfg.domains):
    print(f"{name}: K = {cw_cfg.num_clusters} clusters, purity "
          f"{purity(clusters.labels[d], labels[d]):.1f} % (random clusters: about "
          f"{100 / cfg.num_classes:.0f} %)")

# %%
images = {name: [datasets.load_image(path) for path, _ in ds.samples]
          for name, ds in zip(cfg.domains, warm.datasets, strict=True)}
display(plots.cluster_montage(
    images[b], clusters.labels[1], labels[1], n_clusters=6, n_per_cluster=10,
    class_names=classes, title=f"The six largest k-means clusters of the {b} bank after "
    "warm-up (green: the cluster's majority class)"))

# %% [markdown]
# ## Soft assignments and soft centroids
#
# A feature $z_i$ is assigned to every cluster with a probability that decreases with its
# angle to the prototype (spec §2, temperature $\tau$ = `cfg.tau`):
#
# $$p_{ij} = \frac{\exp(\mathrm{sim}(z_i,c_j)/\tau)}{\sum_{k=1}^{K}\exp(\mathrm{sim}(z_i,c_k)/\tau)}$$

# %%
display(Code(inspect.getsource(clustering.soft_assign), language="python"))

# %% [markdown]
# The lower $\tau$, the closer $p_i$ is to the one-hot vector of the nearest prototype. Each
# row below is one image of $B$, each column a cluster:

# %%
rows = torch.linspace(0, len(banks[1]) - 1, 12).long()
p_sharp = clustering.soft_assign(banks[1][rows], clusters.centroids[1], tau=cw_cfg.tau)
p_soft = clustering.soft_assign(banks[1][rows], clusters.centroids[1], tau=1.0)
display(plots.heatmap([p_soft, p_sharp], [r"$p_{ij}$ with $\tau$ = 1", rf"$p_{{ij}}$ with "
                      rf"$\tau$ = {cw_cfg.tau} (cfg.tau)"], xlabel="cluster j",
                      ylabel="image i", colorbar_label="p", annotate=False))

# %% [markdown]
# Weighting each feature by its assignment gives the **soft centroid** of cluster $j$,
#
# $$c_j = \frac{\sum_{i=1}^{N} p_{ij}\, z_i}{\sum_{i=1}^{N} p_{ij} + \epsilon},$$
#
# which, unlike a k-means centroid, is a differentiable function of the features: computed on
# a batch, it is the batch estimate of the centroid through which the distance-of-distance
# loss of notebook 5 reaches the encoder.

# %%
display(Code(inspect.getsource(clustering.soft_centroids), language="python"))

# %% [markdown]
# Over the whole bank, with a low temperature, the soft centroids point almost exactly where
# the k-means prototypes do:

# %%
for tau in (1.0, cw_cfg.tau):
    p = clustering.soft_assign(banks[1], clusters.centroids[1], tau=tau)
    soft = clustering.soft_centroids(banks[1], p)
    cosine = torch.nn.functional.cosine_similarity(soft, clusters.centroids[1], dim=1)
    print(f"tau = {tau}: mean cosine similarity of soft centroids and prototypes "
          f"{cosine.mean():.3f}")

# %% [markdown]
# ## The cluster-wise contrastive loss
#
# With $y_i = \arg\max_j p_{ij}$ the cluster of sample $i$, the loss pulls each feature
# towards its own prototype and away from the other $K-1$ (spec §3; the library divides by
# $N$):
#
# $$\mathcal{L}_{CW} = -\sum_{i=1}^{N}\log\frac{\exp(\mathrm{sim}(z_i,c_{y_i})/\tau)}
# {\sum_{j=1}^{K}\exp(\mathrm{sim}(z_i,c_j)/\tau)}$$
#
# It is a cross-entropy in which the k-means clusters play the part of classes: images that
# k-means put together are pulled together, which $\mathcal{L}_{IW}$ never does.

# %%
display(Code(inspect.getsource(losses.cluster_wise_loss), language="python"))

# %% [markdown]
# The official code uses another form: a supervised contrastive loss {cite}`khosla2020supcon`
# over the memory bank with the k-means labels as classes, leaving out samples whose own
# prototype is not confident (`losses.cluster_wise_supcon_loss`, `cw_variant="supcon"`; see
# {doc}`/book/differences`). The trainer picks the form from the config, in
# `ucdir_lite.train.step_losses`, which sums the terms of every later notebook too:

# %%
display(Code(inspect.getsource(train.step_losses), language="python"))

# %% [markdown]
# ## Training the `CW` row
#
# The `CW` row forks the shared warm-up and trains $w_{IW}\mathcal{L}_{IW} +
# w_{CW}\mathcal{L}_{CW}$ for the remaining epochs, re-clustering the banks at every epoch.
# These are the overrides of the row and the settings it runs with:

# %%
print(f"overrides of the CW row: {ARMS['CW']}")
print(f"L_CW form: {cw_cfg.cw_variant}; w_CW = {cw_cfg.cw_weight} (ramped over "
      f"{cw_cfg.cw_ramp_epochs} epochs); w_IW after warm-up = {cw_cfg.iw_weight}; "
      f"tau = {cw_cfg.tau}; K = {cw_cfg.num_clusters}; "
      f"epochs {cw_cfg.warmup_epochs}..{cw_cfg.epochs - 1}")
runs = {}
for name in ("IW", "CW"):
    start = time.perf_counter()
    runs[name] = train_arm(cfg, name, progress=False)
    print(f"{name}: ready in {time.perf_counter() - start:.0f} s")

# %%
display(plots.training_curves(runs["CW"].history, title="The CW row: loss terms per epoch"))

# %% [markdown]
# ## Before and after
#
# Did the clusters get purer? Cluster the final banks of both rows the way the trainer would
# at the next epoch, and compare with the clusters the rows started from:

# %%
final = {}
for name, run in runs.items():
    final_banks = train.load_checkpoint(run.out_dir)["banks"]
    final[name] = train.cluster_banks(cw_cfg, final_banks, epoch=cfg.epochs, match=False)
print(f"cluster purity (%) {a:>12} {b:>12}")
print(f"{'warm-up':>18} " + " ".join(f"{purity(clusters.labels[d], labels[d]):12.1f}"
                                      for d in (0, 1)))
for name in runs:
    print(f"{name + ' (end)':>18} " + " ".join(
        f"{purity(final[name].labels[d], labels[d]):12.1f}" for d in (0, 1)))

# %%
display(plots.cluster_montage(
    images[b], final["CW"].labels[1], labels[1], n_clusters=6, n_per_cluster=10,
    class_names=classes, title=f"The six largest clusters of the {b} bank after the CW row"))

# %% [markdown]
# And retrieval, the number that counts (A→B: $A$ queries $B$; A→A: within $A$):

# %%
k = cfg.ks[0]
reports = {"warm-up": warm.metrics, "IW": runs["IW"].metrics, "CW": runs["CW"].metrics}
for name, report in reports.items():
    print(f"{name:>8}: " + "  ".join(f"{d} P@{k} = {report[d][f'P@{k}']:5.1f}"
                                     for d in ("A->B", "B->A", "A->A", "B->B")))
display(plots.precision_bars(reports, f"P@{k}", directions=("A->B", "B->A", "A->A", "B->B"),
                             reference=100 / cfg.num_classes,
                             title=f"P@{k}: A = {a}, B = {b}"))

# %% [markdown]
# The printout is the evidence: compare the `CW` row with the `IW` row, which trained for
# as many epochs from the same warm-up. Pulling images towards their cluster's prototype is
# meant to tighten the classes *within* each domain (the A→A and B→B columns); whether that
# also helps *across* domains is what the A→B and B→A columns say. Notebook 6 repeats the
# comparison over several seeds to tell an effect from noise. The clusters of $A$ and of $B$ are still found and
# used separately: nothing yet tells a sketch cluster which clip-art cluster it corresponds
# to. The projection shows where the two domains stand:

# %%
feats_a, labels_a = train.extract_features(runs["CW"].encoder, dataset_a, device)
feats_b, labels_b = train.extract_features(runs["CW"].encoder, dataset_b, device)
display(plots.embedding_projection(
    feats_a, feats_b, labels_a, labels_b, method="tsne", domain_names=cfg.domains,
    class_names=classes, max_points=600, title="CW features (t-SNE)"))

# %% [markdown]
# ## Going further on a GPU
#
# The paper's protocol uses the official form of $\mathcal{L}_{CW}$ (`cw_variant="supcon"`,
# its weight ramped up over 80 epochs after a 20-epoch warm-up): the `domainnet` and
# `office-home` presets set it. Prepare the data (notebook 1), set `RUN_REAL = True` on a GPU,
# and the same call trains the `CW` row there (`ucdir-lite ablate --preset domainnet --pairs
# clipart:sketch --seeds 0 --arms CW` on the command line). The `cpu` preset trained above
# uses the official form too (the "L_CW form" printed above): on the
# glyphs, tuning on the default ablation found the tutorial (prototype) form gained little.
# The tutorial form is one line away: `get_preset("cpu", cw_variant="prototype")`.

# %%
RUN_REAL = False  # set to True on a GPU machine with the data prepared
MOCO_V2 = None  # the path of MoCo v2's moco_v2_800ep_pretrain.pth.tar, if you have it
real = get_preset("domainnet", weights=MOCO_V2)  # or get_preset("office-home", ...)
real_cw = arm_config(real, "CW")
print(f"domainnet CW row: cw_variant={real_cw.cw_variant}, cw_weight={real_cw.cw_weight}, "
      f"ramp {real_cw.cw_ramp_epochs} epochs, K={real_cw.num_clusters}, "
      f"supcon_tau={real_cw.supcon_tau}, conf_threshold={real_cw.conf_threshold}")
if RUN_REAL and Path(real.data_root).is_dir():
    print(train_arm(real, "CW").metrics)
else:
    print("skipped: set RUN_REAL = True on a GPU with the data prepared")

# %% [markdown]
# **Next:** notebook 4 adds the self-entropy loss, which makes each image commit to one
# cluster, of its own domain and of the other.
