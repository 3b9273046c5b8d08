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
# # 5. Matching clusters across domains: the distance-of-distance loss
#
# **Learning goals.** After this notebook you can
#
# - explain why the clusters of two domains must be matched before their structures can be
#   compared;
# - set up the matching as an optimal-transport problem, solve it with the Sinkhorn
#   algorithm (POT's `ot.sinkhorn` and the package's torch `ucdir_lite.transport.sinkhorn`,
#   side by side) and say what the regulariser $\epsilon$ does;
# - read the one-to-one matching off the plan (`ucdir_lite.transport.match_clusters`);
# - write the distance-of-distance loss $\mathcal{L}_{DD}$ and the official code's
#   sample-level form, and compare the two `Full` rows of the ablation with the earlier rows.
#
# It trains two rows (the earlier rows come from the run cache); the time it took to build, and
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
import time

import numpy as np
import ot
import torch
from IPython.display import Code, Markdown, display

from ucdir_lite import chapter, cli, clustering, losses, plots, train, transport
from ucdir_lite.ablation import ARMS, arm_config, train_arm, train_arms
from ucdir_lite.config import book_config, get_preset, smoke_mode
from ucdir_lite.datasets import load_image
from ucdir_lite.utils import resolve_device

page_start = time.perf_counter()
device = resolve_device()  # cuda when present, else cpu
# The preset of the ablation (notebook 6): the pair clipart -> sketch, seed 0.
cfg = book_config()  # the cpu preset; smoke in smoke mode
a, b = cfg.domains
K = cfg.num_clusters
print(f"device: {device}; smoke mode: {smoke_mode()}; domains A -> B: {a} -> {b}; K = {K}")

# %% [markdown]
# ## Cluster numbers mean nothing across domains
#
# k-means numbers the clusters of each domain in an arbitrary order: cluster 3 of the clip
# art and cluster 3 of the sketches have nothing in common. To see it, take the prototypes
# the trainer would compute after the `CW+SE` row (notebook 4; from the run cache, or trained
# now): k-means on the fresh features of every image, from the row's key encoder in eval
# mode, as at every epoch. Name each cluster after its most frequent class (labels are used
# to *look*, never to train).

# %%
se_run = train_arm(cfg, "CW+SE", progress=False)
full_cfg = arm_config(cfg, "Full")
data = train.build_data(cfg)  # each domain's images in bank order, as the trainer holds them
features = [train.extract_features(se_run.encoder, d.eval_data, device)[0] for d in data]
clusters = train.cluster_features(full_cfg, features, epoch=cfg.epochs, match=True)
centroids_a, centroids_b = (c.double() for c in clusters.centroids)
classes = se_run.datasets[0].classes


def majority_class(cluster_labels, class_labels):
    """The most frequent class of each cluster (for looking at clusters, not for training)."""
    counts = torch.zeros(K, len(classes))
    counts.index_put_((cluster_labels.cpu(), class_labels.cpu()),
                      torch.ones(len(cluster_labels)), accumulate=True)
    return counts.argmax(dim=1)


major_a = majority_class(clusters.labels[0], se_run.datasets[0].labels)
major_b = majority_class(clusters.labels[1], se_run.datasets[1].labels)
for j in range(min(K, 6)):
    print(f"cluster {j}: mostly {classes[major_a[j]]!r} in {a}, "
          f"mostly {classes[major_b[j]]!r} in {b}")
same = (major_a == major_b).float().mean().item()
print(f"clusters with the same number and the same majority class: {100 * same:.0f} %")

# %% [markdown]
# So a loss that compares "cluster $i$ of $A$" with "cluster $i$ of $B$" would compare
# unrelated groups. First we must find the cluster $\pi(i)$ of $B$ that corresponds to
# cluster $i$ of $A$.
#
# ## Matching as optimal transport
#
# Spread a mass $1/K$ on every prototype of $A$ and of $B$ and move the mass of $A$ onto $B$
# at the cost $C_{ij} = \|c^A_i - c^B_j\|_2^2$ per unit {cite}`hu2022ucdir`:
#
# $$\min_\pi \sum_{i,j}\pi_{ij}C_{ij}\quad\text{s.t.}\quad \sum_j\pi_{ij}=\tfrac1K,\
# \sum_i\pi_{ij}=\tfrac1K,\ \pi_{ij}\ge 0.$$
#
# With uniform masses the best plan moves each cluster of $A$ as a whole to one cluster of
# $B$: it *is* a matching. The **Sinkhorn** algorithm {cite}`cuturi2013sinkhorn` solves the
# entropy-regularised problem, $\min_\pi \langle \pi, C\rangle - \epsilon H(\pi)$, by
# alternately rescaling the rows and the columns of the kernel $\exp(-C/\epsilon)$ until both
# marginals hold; it is fast, differentiable and runs on a GPU. The package works in the log
# domain, so that a small $\epsilon$ does not underflow:

# %%
display(Code(inspect.getsource(transport.sinkhorn), language="python"))

# %% [markdown]
# For the pictures, the clusters are listed in the order of their majority class, in both
# domains (the method never sees this order): a plan that matches clusters of the same class
# then lies near the diagonal. The cost is divided by its largest entry, as `match_clusters`
# does, so that $\epsilon$ is relative to the largest squared distance.

# %%
order_a, order_b = torch.argsort(major_a, stable=True), torch.argsort(major_b, stable=True)
C = torch.cdist(centroids_a, centroids_b).square()
C = C / C.max()
C_shown = C[order_a][:, order_b]
mass = torch.full((K,), 1 / K, dtype=torch.float64)
epsilon = cfg.ot_epsilon
plan_torch = transport.sinkhorn(mass, mass, C_shown, epsilon, max_iter=10000)
plan_pot = ot.sinkhorn(mass.numpy(), mass.numpy(), C_shown.numpy(), reg=epsilon,
                       numItermax=10000, stopThr=1e-9)
difference = np.abs(plan_torch.numpy() - plan_pot).max()
print(f"epsilon = {epsilon}: max |plan_torch - plan_POT| = {difference:.2e} "
      f"(largest entry {plan_pot.max():.2e})")
print(f"row sums of the plan: {plan_torch.sum(1).min():.6f}..{plan_torch.sum(1).max():.6f}; "
      f"column sums: {plan_torch.sum(0).min():.6f}..{plan_torch.sum(0).max():.6f} "
      f"(1/K = {1 / K:.6f})")
assert difference < 1e-6, difference

# %%
labels = dict(xlabel=f"cluster of {b} (by majority class)",
              ylabel=f"cluster of {a} (by majority class)", annotate=False)
display(plots.heatmap(C_shown, "cost $C_{ij}$ (scaled)", panel_inches=4.5, **labels))
display(plots.heatmap([plan_pot, plan_torch], [f"POT ot.sinkhorn (eps = {epsilon})",
                      f"ucdir_lite.transport.sinkhorn (eps = {epsilon})"], **labels))

# %% [markdown]
# ## What $\epsilon$ does
#
# A large $\epsilon$ rewards entropy: the plan spreads every cluster's mass over many
# partners (at the limit, the uniform plan $1/K^2$). A small $\epsilon$ gives a plan close to
# the exact optimal transport, a permutation matrix with entries $1/K$, at the price of
# more iterations (capped at 5000 here; the marginal error shows whether the iterations
# converged, to the tolerance $10^{-9}$). Below: the plan for four values of $\epsilon$, and
# for each the number of iterations, the largest entry times $K$ (1 for a permutation) and the
# share of clusters whose best partner in the plan has their majority class.

# %%
epsilons = (1.0, 0.2, epsilon, 0.01)
plans, same_class = [], {}
for eps in epsilons:
    plan, log = transport.sinkhorn(mass, mass, C_shown, eps, max_iter=5000, return_log=True,
                                   warn=False)
    plans.append(plan)
    best = plan.argmax(dim=1)
    agree = (major_a[order_a] == major_b[order_b][best]).float().mean().item()
    same_class[eps] = 100 * agree
    print(f"eps = {eps:<5}: {log['n_iter']:4d} iterations (error {log['err']:.0e}), "
          f"max entry x K = {plan.max().item() * K:.2f}, same class: {100 * agree:.0f} %")
display(plots.heatmap(plans, [f"eps = {eps}" for eps in epsilons], ncols=2, **labels))
trend = "falls" if same_class[epsilons[-1]] < same_class[epsilons[0]] else "does not fall"
print(f"best partner of the same class: {same_class[epsilons[0]]:.0f} % at eps = "
      f"{epsilons[0]}, {same_class[epsilons[-1]]:.0f} % at eps = {epsilons[-1]}: it {trend} "
      "as the plan sharpens")

# %% [markdown]
# Read the last column of the printout. With a large $\epsilon$ the plan is nearly uniform,
# and the "best partner" of a cluster is decided by small differences that still follow the
# cost: the nearest clusters of $B$ win, and they often share the majority class. As
# $\epsilon$ shrinks the plan becomes a permutation, and a permutation must give *every*
# cluster a partner of its own: two clusters of $A$ that both lie nearest to one cluster of
# $B$ cannot both have it, and one of them is sent further away, often to another class. With
# $K$ larger than the number of classes (two clusters per class, say), such conflicts are
# common. The one-to-one constraint, not the solver, is what costs same-class partners; it is
# also what the distance-of-distance loss needs, so the trainer keeps it.

# %% [markdown]
# ## The one-to-one matching
#
# The trainer needs a matching, not a plan: `match_clusters` rounds the plan to the
# permutation that carries the most plan mass (the Hungarian algorithm on $-\pi$), so that
# every cluster of $A$ gets exactly one partner $\pi(i)$ even when $\epsilon$ blurs the plan.
# It runs once per epoch, on the prototypes.

# %%
display(Code(inspect.getsource(transport.match_clusters), language="python"))

# %%
matching, plan = transport.match_clusters(centroids_a, centroids_b, epsilon=epsilon,
                                          return_plan=True)
exact = ot.emd(mass.numpy(), mass.numpy(), C.numpy()).argmax(axis=1)
correct = (major_a == major_b[matching]).float().mean().item()
print(f"matched clusters with the same majority class: {100 * correct:.0f} % "
      f"(same number: {100 * same:.0f} %)")
print(f"the rounded Sinkhorn matching equals the exact OT matching (ot.emd) for "
      f"{(matching.numpy() == exact).sum()} of {K} clusters")
rank_b = torch.argsort(order_b)  # position of each B cluster in the display order
display(plots.heatmap(
    plan[order_a][:, order_b], f"plan (eps = {epsilon}) and the matching (red squares)",
    xlabel=f"cluster of {b}, named after its majority class",
    ylabel=f"cluster of {a}, named after its majority class",
    xticklabels=[classes[c] for c in major_b[order_b]],
    yticklabels=[classes[c] for c in major_a[order_a]],
    marks=rank_b[matching[order_a]], annotate=False, panel_inches=6.5))

# %% [markdown]
# ## The distance-of-distance loss
#
# Once the clusters are matched, the two domains can be asked to share their *geometry*: if
# clusters $i$ and $j$ are far apart in $A$, their partners should be as far apart in $B$
# ({cite}`hu2022ucdir`; the library divides by $K^2$):
#
# $$\mathcal{L}_{DD} = \sum_{i,j}\Big|\,\|c^A_i-c^A_j\|_2 -
# \|c^B_{\pi(i)}-c^B_{\pi(j)}\|_2\,\Big|$$
#
# In training, $c^A$ and $c^B$ are the *batch* estimates of the centroids, the soft centroids
# of notebook 3, so that the gradient reaches the encoder; the matching $\pi$ comes from the
# epoch's prototypes.

# %%
display(Code(inspect.getsource(losses.distance_of_distance_loss), language="python"))

# %% [markdown]
# Because $\pi$ is recomputed from the centroids, renumbering the clusters of $B$ does not
# change the loss; comparing cluster $i$ with cluster $i$ (no matching) does change:

# %%
shuffle = torch.randperm(K, generator=torch.Generator().manual_seed(0))
identity = torch.arange(K)
for name, cb in (("as clustered", centroids_b), ("renumbered", centroids_b[shuffle])):
    matched = losses.distance_of_distance_loss(centroids_a, cb, epsilon=epsilon)
    unmatched = losses.distance_of_distance_loss(centroids_a, cb, matching=identity)
    print(f"B's clusters {name:>12}: L_DD with the OT matching = {matched:.5f}; "
          f"cluster i with cluster i = {unmatched:.5f}")

# %% [markdown]
# ## The official code's form: no clusters to match
#
# The official code avoids the matching: it compares *samples*. A batch of features is
# soft-assigned to the prototypes of $A$ and, separately, to those of $B$ (temperature
# `tau_dd`); in each prototype space the samples' pairwise cosine distances form a $B\times B$
# matrix, indexed by samples, so both matrices can be compared entry by entry. As in the
# official code, the squared differences are **summed over $j$ and averaged over $i$**:
#
# $$\mathcal{L}_{DD}^{\text{official}} = \frac{1}{B}\sum_{i=1}^{B}\sum_{j=1}^{B}
# \big(M^A_{ij} - M^B_{ij}\big)^2, \qquad M^x_{ij} = 1 - \mathrm{sim}(p^x_i, p^x_j)$$
#
# that is $B$ times the mean over all $B^2$ pairs, so its scale grows with the batch size.
# The official code's weights for this term (0.5 on Office-Home, 0.1 on DomainNet, held by
# the `office-home` and `domainnet` presets and printed below) are set on this scale. The
# trainer applies it to the batches of both domains and averages the two.

# %%
display(Code(inspect.getsource(losses.sample_distance_of_distance_loss), language="python"))
for name in ("office-home", "domainnet"):
    row = arm_config(get_preset(name), "Full (official DoD)")
    print(f"{name} preset: dd_variant={row.dd_variant!r}, lambda_DD = {row.dd_weight}, "
          f"tau_dd = {row.tau_dd}, batch {row.batch_size} per domain")

# %% [markdown]
# How do the scales of the two forms compare? Both on one batch of `batch_size` images per
# domain (the fresh features of the `CW+SE` row, the prototypes and the matching above),
# computed as the trainer computes them (`ucdir_lite.train.step_losses`, shown in notebook 3):

# %%
batch = torch.randperm(min(len(f) for f in features),
                       generator=torch.Generator().manual_seed(0))[:cfg.batch_size]
z = [f[batch] for f in features]
batch_centroids = [clustering.soft_centroids(z[d], clustering.soft_assign(
    z[d], clusters.centroids[d], tau=full_cfg.tau)) for d in (0, 1)]
ot_form = losses.distance_of_distance_loss(*batch_centroids, matching=clusters.matching)
sample_form = sum(losses.sample_distance_of_distance_loss(
    z[d], *clusters.centroids, tau=full_cfg.tau_dd) for d in (0, 1)) / 2
print(f"B = {cfg.batch_size}: OT-matched batch centroids {ot_form:.4f}; sample level "
      f"{sample_form:.4f} (its mean over all B^2 pairs: {sample_form / cfg.batch_size:.4f})")

# %% [markdown]
# ## Training the two `Full` rows
#
# Both rows fork the shared warm-up and train $\mathcal{L}_{CW}$, $\mathcal{L}_{SE}$ and one
# form of $\mathcal{L}_{DD}$ (and $\mathcal{L}_{IW}$, whose weight after warm-up is
# `iw_weight`). The printout, from `ucdir_lite.ablation.ARMS` and `arm_config`, says which
# form each row trains: `dd_variant="ot"` is the OT-matched batch-centroid form
# (`distance_of_distance_loss`), `dd_variant="sample"` the official sample-level one
# (`sample_distance_of_distance_loss`), along with the forms of $\mathcal{L}_{CW}$ and
# $\mathcal{L}_{SE}$. Both rows take the same $\lambda_{DD}$ from the preset, whatever the
# scale of their form (compare the two values printed above).

# %%
DD_FORMS = {"ot": losses.distance_of_distance_loss,
            "sample": losses.sample_distance_of_distance_loss}
for name in ("Full", "Full (official DoD)"):
    row = arm_config(cfg, name)
    settings = (f"ot_epsilon = {row.ot_epsilon}, tau = {row.tau}" if row.dd_variant == "ot"
                else f"tau_dd = {row.tau_dd}")
    print(f"{name}: overrides {chapter.format_overrides(ARMS[name])}")
    print(f"    L_DD: dd_variant={row.dd_variant!r} -> losses."
          f"{DD_FORMS[row.dd_variant].__name__};\n    lambda_DD = {row.dd_weight:g} from epoch "
          f"{row.dd_start if row.dd_start is not None else row.warmup_epochs}; {settings}")
    print(f"    L_CW: cw_variant={row.cw_variant!r}; L_SE: se_variant={row.se_variant!r}")
runs = train_arms(cfg, ("IW", "CW", "CW+SE", "Full", "Full (official DoD)"))

# %%
display(plots.training_curves(runs["Full"].history, title="The Full row: loss terms per epoch"))

# %% [markdown]
# ## All rows, one seed
#
# Every row starts from the same warm-up and trains for the same number of epochs; the
# bars are cross-domain retrieval, $A\to B$ and $B\to A$.

# %%
k = cfg.ks[0]
reports = {name: run.metrics for name, run in runs.items()}
print(cli.format_comparison(reports, f"P@{k}", cfg.domains, ("A->B", "B->A")))
for name in ("Full", "Full (official DoD)"):
    change = [reports[name][d][f"P@{k}"] - reports["CW+SE"][d][f"P@{k}"] for d in ("A->B", "B->A")]
    print(f"{name} minus CW+SE: A->B {change[0]:+.1f}, B->A {change[1]:+.1f} points of P@{k}")
display(plots.precision_bars(reports, f"P@{k}", reference=100 / cfg.num_classes,
                             title=f"P@{k}: A = {a}, B = {b} (seed {cfg.seed})"))

# %% [markdown]
# The last two lines of the printout are what each form of $\mathcal{L}_{DD}$ adds to the
# `CW+SE` row on this pair and seed (a positive number: it gained precision on this seed; a
# negative one: it cost precision). One seed cannot separate a small effect from the noise
# of training; notebook 6 runs every row with several seeds and two domain
# pairs and reports the spread, so read its table before drawing a conclusion. Finally,
# the `Full` row's features and what they retrieve:

# %%
dataset_a, dataset_b = runs["Full"].datasets
feats_a, labels_a = train.extract_features(runs["Full"].encoder, dataset_a, device)
feats_b, labels_b = train.extract_features(runs["Full"].encoder, dataset_b, device)
display(plots.embedding_projection(
    feats_a, feats_b, labels_a, labels_b, method="tsne", domain_names=cfg.domains,
    class_names=classes, max_points=600, title="Full features (t-SNE)"))

# %%
images_a = [load_image(path) for path, _ in dataset_a.samples]
images_b = [load_image(path) for path, _ in dataset_b.samples]
display(plots.retrieval_gallery(
    images_b, images_a, feats_b, feats_a, labels_b, labels_a, n_queries=6, k=8,
    class_names=classes, title=f"Full features: {b} queries, their top 8 {a} images"))

# %% [markdown]
# ## Summary

# %% tags=["remove-input"]
dd_step = {name: {d: reports[name][d][f"P@{k}"] - reports["CW+SE"][d][f"P@{k}"]
                  for d in ("A->B", "B->A")} for name in ("Full", "Full (official DoD)")}
display(Markdown(chapter.numbered([
    f"Cluster numbers mean nothing across domains: {100 * same:.0f} % of the clusters with the "
    f"same number share their majority class; after the OT matching {100 * correct:.0f} % do.",
    f"The package's log-domain Sinkhorn agrees with POT's to {difference:.0e} at "
    f"eps = {epsilon}; the rounded matching equals the exact OT matching for "
    f"{(matching.numpy() == exact).sum()} of {K} clusters.",
    f"Sharpening the plan costs same-class partners: {same_class[epsilons[0]]:.0f} % at "
    f"eps = {epsilons[0]}, {same_class[epsilon]:.0f} % at the preset's {epsilon}, "
    f"{same_class[epsilons[-1]]:.0f} % at {epsilons[-1]} (the one-to-one constraint).",
    f"The `cpu` preset trains the OT-matched form with lambda_DD = {full_cfg.dd_weight:g} from "
    f"epoch {full_cfg.dd_start if full_cfg.dd_start is not None else full_cfg.warmup_epochs} "
    f"of {full_cfg.epochs}, on top of the `CW+SE` row.",
    chapter.step_sentence([dd_step["Full"]["A->B"]], f"`Full` minus `CW+SE`, P@{k} {a}→{b}")
    + f"; {b}→{a}: {dd_step['Full']['B->A']:+.1f}. The official form: "
    f"{dd_step['Full (official DoD)']['A->B']:+.1f} and "
    f"{dd_step['Full (official DoD)']['B->A']:+.1f}. Notebook 6 applies the rule over three "
    "seeds and two pairs.",
])))

# %% [markdown]
# ## Exercises
#
# 1. Sweep $\epsilon$ in `transport.match_clusters` (0.5, 0.1, 0.05, 0.01) on this page's
#    prototypes and plot the share of matched clusters with the same majority class. Where
#    does it fall, and why (see "What $\epsilon$ does")?
# 2. Train the `Full` row with $K$ equal to the number of classes, `get_preset("cpu",
#    num_clusters=30)`: are the matched clusters more often of one class?
# 3. Start $\mathcal{L}_{DD}$ with the other cluster losses, `get_preset("cpu", dd_start=None)`,
#    and with a larger weight, `dd_weight=1.0`: what does the `Full` row gain or lose on three
#    seeds by the book's rule? (`run_ablation(pairs=[("clipart", "sketch")], arms=["CW+SE",
#    "Full"], overrides={"dd_weight": 1.0}, out=None)` trains them through the run cache.)

# %% tags=["remove-input"]
display(Markdown(chapter.runtime_note(page_start, [run.out_dir for run in runs.values()])))

# %% [markdown]
# ## Going further on a GPU
#
# The paper's protocol uses the sample-level form (`dd_variant="sample"`); the `domainnet`
# and `office-home` presets hold its weight, temperature and first epoch:

# %%
real_full = arm_config(get_preset("domainnet"), "Full (official DoD)")
print(f"domainnet Full (official DoD) row: dd_variant={real_full.dd_variant}, "
      f"dd_weight={real_full.dd_weight:g}, tau_dd={real_full.tau_dd}, "
      f"from epoch {real_full.dd_start} of {real_full.epochs}")

# %% [markdown]
# This page does not run the training (it needs the prepared data, notebook 1, the MoCo v2
# weights and a GPU). Every row of the ablation on one pair and seed:
#
# ```bash
# ucdir-lite ablate --preset domainnet --data-root data/domainnet \
#     --pairs clipart:sketch \
#     --seeds 0 --set weights=moco_v2_800ep_pretrain.pth.tar \
#     --out results/domainnet
# ```
#
# The torch Sinkhorn runs on the GPU with the prototypes: `transport.sinkhorn` accepts CUDA
# tensors as they are.

# %% [markdown]
# **Next:** notebook 6 runs the whole ablation, every row on two domain pairs and several
# seeds, and reads the table.
