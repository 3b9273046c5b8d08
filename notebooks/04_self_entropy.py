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
# # 4. The self-entropy loss
#
# **Learning goals.** After this notebook you can
#
# - measure how firmly a sample is assigned to a cluster by the entropy of its soft
#   assignment, and write the paper's self-entropy loss $\mathcal{L}_{SE}$ (the tutorial
#   form, `ucdir_lite.losses.self_entropy_loss`);
# - read the form the `cpu` preset trains, the official code's cross-domain
#   `cross_domain_self_entropy_loss` at temperature `tau_se`, and say what it adds;
# - train the `CW+SE` row of the ablation and compare the entropy of the assignments and the
#   precision at $K$ with the `CW` row of notebook 3.
#
# It trains one row (the earlier rows come from the run cache); the time it took to build, and
# to train its runs, is printed at its end. With `UCDIR_SMOKE=1` it trains a tiny model through
# the same code.

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
import math
import time

import torch
from IPython.display import Code, Markdown, display

from ucdir_lite import chapter, cli, clustering, datasets, losses, plots, train
from ucdir_lite.ablation import ARMS, arm_config, train_arms
from ucdir_lite.config import book_config, get_preset, smoke_mode
from ucdir_lite.utils import resolve_device

page_start = time.perf_counter()
device = resolve_device()  # cuda when present, else cpu
# The preset of the ablation (notebook 6): the pair clipart -> sketch, seed 0.
cfg = book_config()  # the cpu preset; smoke in smoke mode
a, b = cfg.domains
print(f"device: {device}; smoke mode: {smoke_mode()}; domains A -> B: {a} -> {b}")

# %% [markdown]
# ## How sure is an assignment?
#
# A soft assignment $p_i = (p_{i1}, \dots, p_{iK})$ (notebook 3) is a probability
# distribution over the $K$ clusters. Its entropy
#
# $$H_i = -\sum_{j=1}^{K} p_{ij}\log p_{ij}$$
#
# is 0 when the sample belongs to one cluster only and $\log K$, its largest value, when it
# is spread evenly over all of them. The paper's self-entropy loss is its mean over the
# samples, with $p_{ij}$ the assignment to the prototypes of the sample's *own* domain (the
# paper {cite}`hu2022ucdir` writes the sum, the library divides by $N$):
#
# $$\mathcal{L}_{SE} = -\sum_{i=1}^{N}\sum_{j=1}^{K} p_{ij}\log p_{ij}$$
#
# Minimising it sharpens the assignments: each sample commits to one cluster, and the
# prototypes move apart. This in-domain form (`se_variant="in_domain"`, temperature
# `cfg.tau`) is the tutorial form: **the `cpu` preset does not train it**. Its building block,
# the mean entropy of a set of assignments, is the library function below, and the form the
# preset trains (next section) is made of it.

# %%
display(Code(inspect.getsource(losses.self_entropy_loss), language="python"))

# %%
K = cfg.num_clusters
one_hot = torch.eye(K)[:3]
uniform = torch.full((3, K), 1 / K)
print(f"K = {K}: one-hot rows -> L_SE = {losses.self_entropy_loss(one_hot) + 0.0:.4f}; "
      f"uniform rows -> {losses.self_entropy_loss(uniform):.4f} (log K = {math.log(K):.4f})")

# %% [markdown]
# ## The form the `cpu` preset trains: commit in both domains
#
# The official code, and the `cpu` preset with it (`se_variant="cross_domain"`), computes the
# entropy of each domain's features against the prototypes of *both* domains, with a low
# temperature $\tau$ = `tau_se`, and averages the four terms (see {doc}`/book/differences`):
#
# $$\mathcal{L}_{SE}^{\text{official}} = \frac14\sum_{x\in\{A,B\}}\sum_{y\in\{A,B\}}
# \mathcal{L}_{SE}\Big(\mathrm{softmax}_j\big(\mathrm{sim}(z^x_i, c^y_j)/\tau\big)\Big)$$
#
# A sketch must then be close to *one* clip-art prototype as well as to one sketch prototype:
# the term pulls every sample towards a cluster of the other domain, an alignment signal that
# the in-domain form does not give. This is the function the trainer calls for
# `se_variant="cross_domain"`, on the query features of a batch of each domain and the
# epoch's prototypes (`ucdir_lite.train.step_losses`, shown in notebook 3):

# %%
display(Code(inspect.getsource(losses.cross_domain_self_entropy_loss), language="python"))

# %% [markdown]
# Which form does each row train, at which temperature? Printed from the configs of the rows
# (`arm_config`), so it is what this run trains:

# %%
SE_FORMS = {"in_domain": losses.self_entropy_loss,
            "cross_domain": losses.cross_domain_self_entropy_loss}


def se_temperature(row_cfg):
    """The temperature of the L_SE form a config trains (as train.step_losses reads it)."""
    return row_cfg.tau_se if row_cfg.se_variant == "cross_domain" else row_cfg.tau


for row in ARMS:
    row_cfg = arm_config(cfg, row)
    form = (f"{SE_FORMS[row_cfg.se_variant].__name__}, tau = {se_temperature(row_cfg)}"
            if row_cfg.se_weight > 0 else "off")
    print(f"{row:>20}: L_SE {form}")
se_cfg = arm_config(cfg, "CW+SE")
print(f"overrides of the CW+SE row: {chapter.format_overrides(ARMS['CW+SE'])}")
print(f"L_SE form: se_variant={se_cfg.se_variant!r}; lambda_SE = {se_cfg.se_weight};\n"
      f"temperature {se_temperature(se_cfg)}; from epoch "
      f"{se_cfg.se_start if se_cfg.se_start is not None else se_cfg.warmup_epochs}")

# %% [markdown]
# ## Training the `CW+SE` row
#
# The row forks the same warm-up as the others and adds $\lambda_{SE}\mathcal{L}_{SE}$ to the
# `CW` row's loss. The `CW` row (notebook 3) comes from the cache, or is trained now.

# %%
runs = train_arms(cfg, ("IW", "CW", "CW+SE"))

# %%
display(plots.training_curves(runs["CW+SE"].history, title="The CW+SE row: loss terms per epoch"))

# %% [markdown]
# ## Entropy before and after
#
# For each row, cluster its fresh features at the end (every image, without augmentation,
# through the row's key encoder in eval mode) as the trainer would at the next epoch, and
# compute the entropy of every image's assignment at the temperature of the trained
# $\mathcal{L}_{SE}$: to the prototypes of its own domain, and to those of the other
# domain. "Before" is the `CW` row, trained without $\mathcal{L}_{SE}$; "after" the `CW+SE`
# row. The histograms show the range of entropies that occur, with a logarithmic count axis,
# so that a handful of samples in a bin stays visible next to a crowded one.

# %%
tau_se = se_temperature(se_cfg)
data = train.build_data(cfg)  # each domain's images in bank order, as the trainer holds them
assignments = {}
for name in ("CW", "CW+SE"):
    feats = [train.extract_features(runs[name].encoder, d.eval_data, device)[0] for d in data]
    clusters = train.cluster_features(se_cfg, feats, epoch=cfg.epochs, match=False)
    assignments[name] = {
        "own": clustering.soft_assign(feats[1], clusters.centroids[1], tau=tau_se),
        "other": clustering.soft_assign(feats[1], clusters.centroids[0], tau=tau_se),
    }
    print(f"{name:>6}: mean entropy of the {b} images: own prototypes "
          f"{losses.self_entropy_loss(assignments[name]['own']):.3f}, {a} prototypes "
          f"{losses.self_entropy_loss(assignments[name]['other']):.3f}")
print(f"(largest possible: log K = {math.log(K):.3f})")

# %%
for side, prototypes in (("own", b), ("other", a)):
    display(plots.entropy_histogram(
        assignments["CW"][side], assignments["CW+SE"][side], labels=("CW", "CW+SE"),
        full_range=False, log_counts=True,
        title=f"{b} images vs {prototypes} prototypes (tau = {tau_se})"))

# %% [markdown]
# ## Retrieval
#
# Sharper assignments are only a means. What the rows retrieve (all from the same warm-up,
# with the same number of epochs):

# %%
k = cfg.ks[0]
reports = {name: run.metrics for name, run in runs.items()}
print(cli.format_comparison(reports, f"P@{k}", cfg.domains))
print("CW+SE minus CW: " + "  ".join(
    f"{d} {reports['CW+SE'][d][f'P@{k}'] - reports['CW'][d][f'P@{k}']:+.1f}"
    for d in ("A->B", "B->A", "A->A", "B->B")))
display(plots.precision_bars(reports, f"P@{k}", directions=("A->B", "B->A", "A->A", "B->B"),
                             reference=100 / cfg.num_classes,
                             title=f"P@{k}: A = {a}, B = {b}"))

# %% [markdown]
# Read the cross-domain columns. In its cross-domain form (the form printed above for this
# run's row), the entropy term is the first one in the book that connects the two domains;
# the last line of the printout is what adding it to the `CW` row changed on this seed, and
# notebook 6 repeats the comparison over several seeds. Here is what the `CW+SE` features
# retrieve:

# %%
dataset_a, dataset_b = runs["CW+SE"].datasets
feats_a, labels_a = train.extract_features(runs["CW+SE"].encoder, dataset_a, device)
feats_b, labels_b = train.extract_features(runs["CW+SE"].encoder, dataset_b, device)
images_a = [datasets.load_image(path) for path, _ in dataset_a.samples]
images_b = [datasets.load_image(path) for path, _ in dataset_b.samples]
display(plots.retrieval_gallery(
    images_a, images_b, feats_a, feats_b, labels_a, labels_b, n_queries=6, k=8,
    class_names=dataset_a.classes, title=f"CW+SE features: {a} queries, top 8 {b} images"))

# %% [markdown]
# ## Summary

# %% tags=["remove-input"]
entropy = {name: {side: float(losses.self_entropy_loss(p)) for side, p in sides.items()}
           for name, sides in assignments.items()}
se_minus_cw = {d: reports["CW+SE"][d][f"P@{k}"] - reports["CW"][d][f"P@{k}"]
               for d in ("A->B", "B->A", "A->A", "B->B")}
display(Markdown(chapter.numbered([
    f"The `cpu` preset trains the official cross-domain form of L_SE (`se_variant="
    f"{se_cfg.se_variant!r}`, weight {se_cfg.se_weight:g}, temperature {tau_se}), which asks "
    "each image to commit to one cluster of its own domain and one of the other; the paper's "
    "in-domain form is shown, not trained.",
    f"Mean entropy of the {b} images' assignments, `CW` → `CW+SE`: own prototypes "
    f"{entropy['CW']['own']:.3f} → {entropy['CW+SE']['own']:.3f}, {a} prototypes "
    f"{entropy['CW']['other']:.3f} → {entropy['CW+SE']['other']:.3f} (largest possible "
    f"log K = {math.log(K):.3f}).",
    chapter.step_sentence([se_minus_cw["A->B"]], f"`CW+SE` minus `CW`, P@{k} {a}→{b}")
    + f"; {b}→{a}: {se_minus_cw['B->A']:+.1f}, in-domain {se_minus_cw['A->A']:+.1f} ({a}) "
    f"and {se_minus_cw['B->B']:+.1f} ({b}). Notebook 6 applies the rule over three seeds.",
])))

# %% [markdown]
# ## Exercises
#
# 1. Train the paper's in-domain form, `train_arm(get_preset("cpu", se_variant="in_domain"),
#    "CW+SE")`, and compare the entropy against the *other* domain's prototypes with this
#    page's row: which form aligns the domains?
# 2. Raise the weight, `get_preset("cpu", se_weight=2.0)`, and watch the loss curves and the
#    cluster sizes: what happens when every image commits to a few large clusters?
# 3. Change the temperature `tau_se` (0.01, 0.2) and explain from the formula why the entropy
#    of the assignments, before any training, changes with it.

# %% tags=["remove-input"]
display(Markdown(chapter.runtime_note(page_start, [run.out_dir for run in runs.values()])))

# %% [markdown]
# ## Going further on a GPU
#
# In the paper's protocol the self-entropy term, in the official cross-domain form, starts
# later than the other cluster terms: the `domainnet` and `office-home` presets hold its
# weight, temperature and first epoch:

# %%
for name in ("domainnet", "office-home"):
    row = arm_config(get_preset(name), "CW+SE")
    print(f"{name} CW+SE row: se_variant={row.se_variant}, se_weight={row.se_weight:g}, "
          f"tau_se={row.tau_se}, from epoch {row.se_start} of {row.epochs}")

# %% [markdown]
# This page does not run the training (it needs the prepared data, notebook 1, the MoCo v2
# weights and a GPU):
#
# ```bash
# ucdir-lite ablate --preset domainnet --data-root data/domainnet \
#     --pairs clipart:sketch \
#     --seeds 0 --arms CW+SE --set weights=moco_v2_800ep_pretrain.pth.tar \
#     --out results/domainnet-cwse
# ```
#
# To try the paper's in-domain form on either preset: `se_variant="in_domain"`.

# %% [markdown]
# **Next:** notebook 5 matches the clusters of the two domains by optimal transport and asks
# their distance structures to agree: the distance-of-distance loss.
