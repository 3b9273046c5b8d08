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
# # 3. The cluster-wise contrastive loss
#
# **Learning goals.** After this notebook you can
#
# - cluster each domain's features with k-means, as the trainer does at every epoch after
#   the warm-up (on fresh features of every image, as the official code), and judge the
#   clusters (prototypes) by their purity;
# - compute the soft assignments $p_{ij}$ and the soft centroids that notebook 5 uses, and
#   read `ucdir_lite.clustering.soft_assign` and `soft_centroids`;
# - write the paper's cluster-wise contrastive loss $\mathcal{L}_{CW}$
#   (`ucdir_lite.losses.cluster_wise_loss`) and read the form the `cpu` preset trains, the
#   official code's supervised contrastive loss over the memory bank
#   (`ucdir_lite.losses.cluster_wise_supcon_loss`) with its confidence filter;
# - train the `CW` row of the ablation from the shared warm-up and compare it with the
#   `IW` baseline of notebook 2: purity, features and precision at $K$.
#
# It trains one row (the warm-up and the `IW` row come from the run cache when notebook 2 has
# run); the time it took to build, and to train its runs, is printed at its end. With
# `UCDIR_SMOKE=1` it trains a tiny model through the same code.

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

import torch
from IPython.display import Code, Markdown, display

from ucdir_lite import chapter, cli, clustering, datasets, losses, plots, train
from ucdir_lite.ablation import ARMS, WARMUP, arm_config, train_arm, train_arms
from ucdir_lite.config import book_config, get_preset, smoke_mode
from ucdir_lite.diagnostics import purity
from ucdir_lite.utils import resolve_device

page_start = time.perf_counter()
device = resolve_device()  # cuda when present, else cpu
# The preset of the ablation (notebook 6): the pair clipart -> sketch, seed 0.
cfg = book_config()  # the cpu preset; smoke in smoke mode
a, b = cfg.domains
print(f"device: {device}; smoke mode: {smoke_mode()}; domains A -> B: {a} -> {b}")

# %% [markdown]
# ## From instances to clusters
#
# $\mathcal{L}_{IW}$ treats every image as its own class: two sketches of the same glyph are
# negatives of each other. The cluster-wise loss uses the structure the warm-up has found
# instead. It needs, per domain, $K$ groups of images that (we hope) share a class, found
# without labels: the k-means clusters of the key encoder's features.
#
# Let us start where the cluster losses start, from the shared warm-up of notebook 2 (from
# the run cache; trained now if notebook 2 has not run), and compute what the trainer
# clusters at the first epoch after it: the features of every image, without augmentation,
# from the key encoder in eval mode (`run.encoder`), in bank order.

# %%
warm = train_arm(cfg, WARMUP, progress=False)
data = train.build_data(cfg)  # each domain's images in bank order, as the trainer holds them


def fresh_features(run):
    """Each domain's eval-mode key features of every image, in bank order (as the trainer)."""
    return [train.extract_features(run.encoder, d.eval_data, device)[0] for d in data]


features = fresh_features(warm)
dataset_a, dataset_b = warm.datasets
labels = (dataset_a.labels, dataset_b.labels)  # for evaluation only: training never sees them
classes = dataset_a.classes
print(f"fresh features: {a} {tuple(features[0].shape)}, {b} {tuple(features[1].shape)}")

# %% [markdown]
# ## k-means on fresh features
#
# At the start of every epoch after the warm-up, the official code passes every image of
# each domain through the key encoder in eval mode and runs k-means on these features; the
# trainer does the same when `cluster_on="features"` (the default). The L2-normalised
# centroids are that epoch's **prototypes** $c_1, \dots, c_K$, with $K$ = `cfg.num_clusters`,
# and the k-means label of an image is its **pseudo-label** for the epoch. The cheaper
# alternative, `cluster_on="bank"`, clusters the memory bank instead: no extra pass over the
# data, but the bank holds keys of *augmented* views, written during the previous epoch by
# key encoders of different ages. This is the trainer's function that picks the epoch's
# points, and the function that clusters them (k-means seeded from the run's seed, the epoch
# and the domain):

# %%
display(Code(inspect.getsource(train.epoch_clusters), language="python"))
display(Code(inspect.getsource(train.cluster_features), language="python"))

# %% [markdown]
# The paper sets $K$ to the number of categories, and so do the `office-home` and
# `domainnet` presets (printed below). **The `cpu` preset does not**: it over-clusters, with
# twice as many clusters as classes: smaller clusters are purer, and in the preset's tuning
# (one seed, recorded in `bench/README.md`) K = 60 scored slightly higher than K = 30; a class then
# spreads over about two clusters, and the SupCon form below treats the images of those
# clusters as negatives of each other. We call the function exactly as the first cluster epoch
# of the `CW` row does.
#
# How good are the clusters? Labels may be used to *judge* them: a cluster's **purity** is the
# share of its images that have its most frequent class, and the purity of a clustering is the
# share of all images that have their cluster's majority class
# (`ucdir_lite.diagnostics.purity`): 100 % when every cluster is one class. Random clusters
# score more than $100/C$ % for $C$ classes, and the more so the smaller the clusters, so the
# cell also scores a random clustering with the same $K$: the floor to compare with.

# %%
cw_cfg = arm_config(cfg, "CW")
print(f"cluster_on = {cw_cfg.cluster_on!r}; K = {cw_cfg.num_clusters} for "
      f"{cfg.num_classes} classes ({cw_cfg.num_clusters / cfg.num_classes:g} x the classes); "
      f"k-means: {cw_cfg.kmeans_restarts} restart(s) x {cw_cfg.kmeans_iters} iterations")
for name in ("office-home", "domainnet"):
    print(f"{name} preset: K = {get_preset(name).num_clusters}")
clusters = train.cluster_features(cw_cfg, features, epoch=cfg.warmup_epochs, match=False)
display(Code(inspect.getsource(purity), language="python"))
g = torch.Generator().manual_seed(0)
random_purity = []
for d, name in enumerate(cfg.domains):
    shuffled = torch.randint(cw_cfg.num_clusters, (len(labels[d]),), generator=g)
    random_purity.append(purity(shuffled, labels[d]))
    print(f"{name}: K = {cw_cfg.num_clusters} clusters, purity "
          f"{purity(clusters.labels[d], labels[d]):.1f} %; random clusters with the same K "
          f"{random_purity[d]:.1f} %; 100/C = {100 / cfg.num_classes:.1f} %")

# %%
images = {name: [datasets.load_image(path) for path, _ in ds.samples]
          for name, ds in zip(cfg.domains, warm.datasets, strict=True)}
display(plots.cluster_montage(
    images[b], clusters.labels[1], labels[1], n_clusters=6, n_per_cluster=10,
    class_names=classes, title=f"The six largest k-means clusters of the {b} features after "
    "warm-up (green: the cluster's majority class)"))

# %% [markdown]
# ## Soft assignments and soft centroids
#
# A feature $z_i$ is assigned to every cluster with a probability that decreases with its
# angle to the prototype (the paper {cite}`hu2022ucdir`; temperature $\tau$ = `cfg.tau`):
#
# $$p_{ij} = \frac{\exp(\mathrm{sim}(z_i,c_j)/\tau)}{\sum_{k=1}^{K}\exp(\mathrm{sim}(z_i,c_k)/\tau)}$$

# %%
display(Code(inspect.getsource(clustering.soft_assign), language="python"))

# %% [markdown]
# The lower $\tau$, the closer $p_i$ is to the one-hot vector of the nearest prototype. Each
# row below is one image of $B$, each column a cluster:

# %%
rows = torch.linspace(0, len(features[1]) - 1, 12).long()
p_sharp = clustering.soft_assign(features[1][rows], clusters.centroids[1], tau=cw_cfg.tau)
p_soft = clustering.soft_assign(features[1][rows], clusters.centroids[1], tau=1.0)
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
# How close do the soft centroids of all the features come to the k-means prototypes, at a
# high and at the low temperature?

# %%
for tau in (1.0, cw_cfg.tau):
    p = clustering.soft_assign(features[1], clusters.centroids[1], tau=tau)
    soft = clustering.soft_centroids(features[1], p)
    cosine = torch.nn.functional.cosine_similarity(soft, clusters.centroids[1], dim=1)
    print(f"tau = {tau}: mean cosine similarity of soft centroids and prototypes "
          f"{cosine.mean():.3f}")

# %% [markdown]
# ## The paper's cluster-wise loss (the tutorial form)
#
# With $y_i = \arg\max_j p_{ij}$ the cluster of sample $i$, the paper's loss pulls each
# feature towards its own prototype and away from the other $K-1$ (the paper
# {cite}`hu2022ucdir`; the library divides by $N$):
#
# $$\mathcal{L}_{CW} = -\sum_{i=1}^{N}\log\frac{\exp(\mathrm{sim}(z_i,c_{y_i})/\tau)}
# {\sum_{j=1}^{K}\exp(\mathrm{sim}(z_i,c_j)/\tau)}$$
#
# It is a cross-entropy in which the k-means clusters play the part of classes: images that
# k-means put together are pulled together, which $\mathcal{L}_{IW}$ never does. This is
# `cw_variant="prototype"`, the tutorial form: **the `cpu` preset does not train it** (the
# printout after the next section says which form each row of this run trains).

# %%
display(Code(inspect.getsource(losses.cluster_wise_loss), language="python"))

# %% [markdown]
# ## The form the `cpu` preset trains: supervised contrastive over the bank
#
# The official code, and the `cpu` preset with it (`cw_variant="supcon"`), uses a supervised
# contrastive loss {cite}`khosla2020supcon` over the memory bank in which the k-means labels
# play the part of classes (see {doc}`/book/differences`). For a query $q_i$ with
# pseudo-label $y_i$:
#
# - the **positives** $P(i)$ are the bank slots whose image has the same k-means label $y_i$.
#   The trainer writes the batch's keys into the bank before the losses (notebook 2), so
#   sample $i$'s own slot holds the key of its other view, and it is one of its positives,
#   as in the official code (the trainer does not pass `index`, which would remove it);
# - the denominator runs over every slot of the bank, so every image of another cluster is a
#   negative;
# - $\ell_i$ is the mean over the positives of $-\log$ their softmax probability, and the
#   loss the mean of $\ell_i$ over the kept samples, at temperature `tau_cw`.
#
# $$\ell_i = -\frac{1}{|P(i)|}\sum_{p\in P(i)}\log
# \frac{\exp(q_i\cdot \mathrm{bank}_p/\tau)}{\sum_{n}\exp(q_i\cdot \mathrm{bank}_n/\tau)}$$

# %%
display(Code(inspect.getsource(losses.cluster_wise_supcon_loss), language="python"))

# %% [markdown]
# A sample is **kept** only if its key $k_i$ gives its own prototype a softmax probability
# (temperature `tau_cw`) above `conf_threshold`, strictly, as in the official code:
# pseudo-labels that the sample itself is unsure of do not pull it into a group.

# %%
display(Code(inspect.getsource(losses.prototype_confidence), language="python"))

# %% [markdown]
# Which form does each row train? Printed from the configs of the rows (`arm_config`), so it
# is what this run trains:

# %%
CW_FORMS = {"prototype": losses.cluster_wise_loss, "supcon": losses.cluster_wise_supcon_loss}
for row in ARMS:
    row_cfg = arm_config(cfg, row)
    form = (f"cw_variant={row_cfg.cw_variant!r} -> losses."
            f"{CW_FORMS[row_cfg.cw_variant].__name__}" if row_cfg.cw_weight > 0 else "off")
    print(f"{row:>20}: L_CW {form}")

# %% [markdown]
# On the warm-up's clusters, what would the filter keep? The trainer computes the confidence
# of each batch's keys (augmented views); here it is computed on the fresh features of every
# image, an estimate. Purity on each side of the filter shows whether the kept images carry
# their cluster's class more often than the rest:

# %%
print(f"tau_cw = {cw_cfg.tau_cw}, conf_threshold = {cw_cfg.conf_threshold}")
for d, name in enumerate(cfg.domains):
    conf = losses.prototype_confidence(features[d], clusters.centroids[d], clusters.labels[d],
                                       tau=cw_cfg.tau_cw)
    kept = conf > cw_cfg.conf_threshold
    sizes = torch.bincount(clusters.labels[d], minlength=cw_cfg.num_clusters).float()
    text = f"{name}: kept {100 * kept.float().mean():.1f} % of the images"
    if kept.any():
        text += f" (purity {purity(clusters.labels[d][kept], labels[d][kept]):.1f} %"
        if (~kept).any():
            left = purity(clusters.labels[d][~kept], labels[d][~kept])
            text += f"; left out: {left:.1f} %"
        text += ")"
    print(text + f";\n    positives per sample (own slot included): "
          f"{sizes[clusters.labels[d]].mean():.1f} on average")

# %% [markdown]
# The trainer picks the form from the config, in `ucdir_lite.train.step_losses`, which sums
# the terms of every later notebook too:

# %%
display(Code(inspect.getsource(train.step_losses), language="python"))

# %% [markdown]
# ## Training the `CW` row
#
# The `CW` row forks the shared warm-up and trains $w_{IW}\mathcal{L}_{IW} +
# w_{CW}\mathcal{L}_{CW}$ for the remaining epochs, clustering again at every epoch. These
# are the overrides of the row and the settings it runs with:

# %%
ramp = (f"ramped up over {cw_cfg.cw_ramp_epochs} epochs" if cw_cfg.cw_ramp_epochs
        else "at full weight from the first epoch after the warm-up")
print(f"overrides of the CW row: {chapter.format_overrides(ARMS['CW'])}")
print(f"L_CW form: cw_variant={cw_cfg.cw_variant!r} "
      f"(losses.{CW_FORMS[cw_cfg.cw_variant].__name__})")
print(f"  w_CW = {cw_cfg.cw_weight:g}, {ramp}; w_IW after the warm-up = {cw_cfg.iw_weight:g}")
print(f"  tau = {cw_cfg.tau}, tau_cw = {cw_cfg.tau_cw}, "
      f"conf_threshold = {cw_cfg.conf_threshold}")
print(f"  K = {cw_cfg.num_clusters}, cluster_on = {cw_cfg.cluster_on!r}, "
      f"epochs {cw_cfg.warmup_epochs}..{cw_cfg.epochs - 1}")
runs = train_arms(cfg, ("IW", "CW"))

# %%
display(plots.training_curves(runs["CW"].history, title="The CW row: loss terms per epoch"))

# %% [markdown]
# ## Before and after
#
# Did the clusters get purer? Cluster each row's fresh features at the end, the way the
# trainer would at the next epoch, and compare with the clusters the rows started from:

# %%
final = {}
for name, run in runs.items():
    final[name] = train.cluster_features(cw_cfg, fresh_features(run), epoch=cfg.epochs,
                                         match=False)
print(f"cluster purity (%) {a:>12} {b:>12}")
print(f"{'warm-up':>18} " + " ".join(f"{purity(clusters.labels[d], labels[d]):12.1f}"
                                      for d in (0, 1)))
for name in runs:
    print(f"{name + ' (end)':>18} " + " ".join(
        f"{purity(final[name].labels[d], labels[d]):12.1f}" for d in (0, 1)))

# %%
display(plots.cluster_montage(
    images[b], final["CW"].labels[1], labels[1], n_clusters=6, n_per_cluster=10,
    class_names=classes, title=f"The six largest clusters of the {b} features after the CW row"))

# %% [markdown]
# And retrieval, the number that counts (A→B: $A$ queries $B$; A→A: within $A$):

# %%
k = cfg.ks[0]
directions = ("A->B", "B->A", "A->A", "B->B")
reports = {"warm-up": warm.metrics, "IW": runs["IW"].metrics, "CW": runs["CW"].metrics}
print(cli.format_comparison(reports, f"P@{k}", cfg.domains, directions))
print("CW minus IW: " + "  ".join(
    f"{d} {reports['CW'][d][f'P@{k}'] - reports['IW'][d][f'P@{k}']:+.1f}" for d in directions))
display(plots.precision_bars(reports, f"P@{k}", directions=directions,
                             reference=100 / cfg.num_classes,
                             title=f"P@{k}: A = {a}, B = {b}"))

# %% [markdown]
# The printout is the evidence: the last line compares the `CW` row with the `IW` row, which
# trained for as many epochs from the same warm-up. Pulling images towards the images (or
# the prototype) of their cluster is meant to tighten the classes *within* each domain (the
# A→A and B→B columns); whether that also helps *across* domains is what the A→B and B→A
# columns say. One seed cannot separate a small effect from the noise of training: notebook 6
# repeats the comparison over several seeds. The clusters of $A$ and of $B$ are still found
# and used separately: nothing yet tells a sketch cluster which clip-art cluster it
# corresponds to. The projection shows where the two domains stand:

# %%
feats_a, labels_a = train.extract_features(runs["CW"].encoder, dataset_a, device)
feats_b, labels_b = train.extract_features(runs["CW"].encoder, dataset_b, device)
display(plots.embedding_projection(
    feats_a, feats_b, labels_a, labels_b, method="tsne", domain_names=cfg.domains,
    class_names=classes, max_points=600, title="CW features (t-SNE)"))

# %% [markdown]
# ## Summary

# %% tags=["remove-input"]
cw_minus_iw = {d: reports["CW"][d][f"P@{k}"] - reports["IW"][d][f"P@{k}"] for d in directions}
purity_end = {name: [purity(final[name].labels[d], labels[d]) for d in (0, 1)] for name in runs}
display(Markdown(chapter.numbered([
    f"k-means on the warm-up's fresh features gives clusters of purity "
    f"{purity(clusters.labels[0], labels[0]):.1f} % ({a}) and "
    f"{purity(clusters.labels[1], labels[1]):.1f} % ({b}), against "
    f"{random_purity[0]:.1f} % and {random_purity[1]:.1f} % for random clusters with the same "
    f"K = {cw_cfg.num_clusters}.",
    f"The `cpu` preset trains the official SupCon form of L_CW (`cw_variant="
    f"{cw_cfg.cw_variant!r}`) with weight {cw_cfg.cw_weight:g} and K = {cw_cfg.num_clusters} "
    f"= {cw_cfg.num_clusters / cfg.num_classes:g} x the classes; the paper's prototype form is "
    "shown, not trained.",
    f"After the row, purity is {purity_end['CW'][0]:.1f} / {purity_end['CW'][1]:.1f} % "
    f"({a} / {b}) with L_CW and {purity_end['IW'][0]:.1f} / {purity_end['IW'][1]:.1f} % "
    "without it (the `IW` row, same epochs).",
    chapter.step_sentence([cw_minus_iw["A->B"]], f"`CW` minus `IW`, P@{k} {a}→{b}")
    + f"; {b}→{a}: {cw_minus_iw['B->A']:+.1f}, in-domain {cw_minus_iw['A->A']:+.1f} "
    f"({a}) and {cw_minus_iw['B->B']:+.1f} ({b}). Notebook 6 applies the rule "
    "over three seeds and two pairs.",
])))

# %% [markdown]
# ## Exercises
#
# 1. Train the paper's form of the loss, `train_arm(get_preset("cpu", cw_variant="prototype"),
#    "CW")`, and compare its P@K and purity with the SupCon row of this page.
# 2. Set $K$ to the number of classes, `get_preset("cpu", num_clusters=30)`: does purity at
#    the start of the row rise or fall, and why does the random-cluster floor move too?
# 3. Cluster the memory bank instead of fresh features, `get_preset("cpu",
#    cluster_on="bank")`, and measure what the saved pass over the data costs in P@K.

# %% tags=["remove-input"]
display(Markdown(chapter.runtime_note(page_start, [run.out_dir for run in runs.values()])))

# %% [markdown]
# ## Going further on a GPU
#
# The paper's protocol uses the official form of $\mathcal{L}_{CW}$ (`cw_variant="supcon"`,
# its weight ramped up after the warm-up): the `domainnet` and `office-home` presets set it.
# This page does not run the code below (it needs the prepared data, notebook 1, the MoCo v2
# weights and a GPU):

# %%
real_cw = arm_config(get_preset("domainnet"), "CW")
print(f"domainnet CW row: cw_variant={real_cw.cw_variant}, cw_weight={real_cw.cw_weight:g}, "
      f"ramped up over {real_cw.cw_ramp_epochs} epochs\n  after a {real_cw.warmup_epochs}-epoch "
      f"warm-up; K={real_cw.num_clusters}, tau_cw={real_cw.tau_cw}, "
      f"conf_threshold={real_cw.conf_threshold}, cluster_on={real_cw.cluster_on}")

# %% [markdown]
# ```bash
# ucdir-lite ablate --preset domainnet --data-root data/domainnet \
#     --pairs clipart:sketch \
#     --seeds 0 --arms CW --set weights=moco_v2_800ep_pretrain.pth.tar \
#     --out results/domainnet-cw
# ```
#
# or, in Python, `train_arm(get_preset("domainnet", weights="moco_v2_800ep_pretrain.pth.tar"),
# "CW")`. The paper's prototype form is one override away on either preset:
# `cw_variant="prototype"`.

# %% [markdown]
# **Next:** notebook 4 adds the self-entropy loss, which makes each image commit to one
# cluster, of its own domain and of the other.
