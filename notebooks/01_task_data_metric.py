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
# # 1. The task, the data and the metric
#
# **Learning goals.** After this notebook you can
#
# - state the task of unsupervised cross-domain image retrieval: what training sees and what
#   a query asks for;
# - generate the embedded glyph benchmark, look at its four domains, and say what the real
#   benchmarks, Office-Home and DomainNet, are and how to prepare them;
# - compute the precision at $K$ by hand on a toy ranking, check it against
#   `ucdir_lite.metrics.precision_at_k`, and read that function's source;
# - measure how far raw pixels get on the benchmark, the number every later notebook has to
#   beat.
#
# It trains nothing; the time it took to build is printed at its end. With `UCDIR_SMOKE=1` in
# the environment it uses a smaller benchmark through the same code.

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

from ucdir_lite import chapter, glyphs, metrics, plots
from ucdir_lite.config import book_config, get_preset, smoke_mode
from ucdir_lite.datasets import DomainDataset, common_classes, eval_transform
from ucdir_lite.train import data_root
from ucdir_lite.utils import resolve_device

page_start = time.perf_counter()
device = resolve_device()  # cuda when present, else cpu
cfg = book_config()  # the cpu preset; smoke in smoke mode
print(f"device: {device}; smoke mode: {smoke_mode()}")

# %% [markdown]
# ## The task
#
# Two image domains $A$ and $B$ (clip art and sketches, say) show the same categories.
# Training sees **images only**: no class labels, and no pairs telling which image of $A$
# goes with which image of $B$. An encoder $f_\theta$ maps an image $x_i$ to an
# L2-normalised feature $z_i = f_\theta(x_i)$.
#
# At test time each image of $A$ is a **query** and the whole of $B$ is the **gallery**
# (then the other way round). The gallery is ranked by the cosine similarity
#
# $$\mathrm{sim}(z^A_q, z^B_g) = \frac{z^A_q \cdot z^B_g}{\|z^A_q\|\,\|z^B_g\|},$$
#
# and a retrieved image counts as a **hit** when it shows the query's category. The task is
# *category-level*: there is no single correct partner of a query, every gallery image of the
# same class is a correct answer. The labels are used for this scoring only, never for
# training.

# %% [markdown]
# ## The embedded data: glyphs in four styles
#
# So that everything runs on a laptop, the package generates its own benchmark: each class
# is a character (a symbol, letter or digit) and each domain draws it in its own style.
# It mimics the domains of DomainNet {cite}`peng2019domainnet`:
#
# | domain | what it looks like |
# |---|---|
# | `photo` | a shaded, textured glyph on a cluttered coloured background |
# | `clipart` | a flat colour fill with a dark outline on a plain background |
# | `sketch` | pencil outline strokes on paper |
# | `quickdraw` | thin, jittery black strokes with segments missing |
#
# Within a class the images vary in font, scale, rotation, position, stroke width and
# colour, and each domain draws its own images: no image of one domain is a restyled copy of
# an image of another, so there are no hidden pairs. `glyphs.ensure_benchmark` writes the
# images to `root/<domain>/<class>/<nnnn>.png`, the layout of the real data sets, in a few
# seconds, and returns at once when they are already there (in `$UCDIR_DATA`, else
# `~/.cache/ucdir_lite`). The trainer calls it through `ucdir_lite.data.data_root`, and so do
# we, with the sizes of the preset `cfg`.

# %%
# The trainer's own call: glyphs.ensure_benchmark with the sizes in cfg.
root = data_root(cfg)  # $UCDIR_DATA, else ~/.cache/ucdir_lite: a folder per benchmark size
n_files = sum(1 for _ in root.glob("*/*/*.png"))
print(f"{cfg.num_classes} classes x {cfg.images_per_class} images per class and domain, "
      f"{cfg.image_size}x{cfg.image_size} pixels: {n_files} PNG files")
print(f"domains: {', '.join(glyphs.DOMAINS)}")

# %%
sheet = glyphs.contact_sheet(root, n_classes=10, title="One image per class")
display(sheet)

# %% [markdown]
# Clip art and sketches keep the glyph's shape and drop nearly everything else; photos bury
# it in texture and clutter, and quick drawings break its outline. Which pairs of domains are
# hard is measured at the end of this notebook.
#
# ## The real benchmarks
#
# The paper {cite}`hu2022ucdir` evaluates on two public data sets:
#
# - **Office-Home** {cite}`venkateswara2017officehome`: 4 domains (Art, Clipart, Product,
#   Real World), 65 categories of office and home objects, about 15,500 images. It is
#   distributed by its authors through a Google Drive link, so you download the zip
#   yourself; `ucdir-lite data prepare office-home --root data/office_home --archive ZIP`
#   then checks and unpacks it into the layout above.
# - **DomainNet** {cite}`peng2019domainnet`: 6 domains (clipart, infograph, painting,
#   quickdraw, real, sketch), 345 categories, 0.4–6 GB per domain. The paper uses a
#   7-category subset; `ucdir-lite data prepare domainnet --root data/domainnet --domains
#   clipart sketch` downloads those domains and keeps only the subset's classes.
#
# Both end up as `root/<domain>/<class>/<image>`, so the same `DomainDataset` reads the real
# data and the glyphs. Office-Home reports $P@1$, $P@5$, $P@15$; DomainNet $P@50$,
# $P@100$, $P@200$.

# %% [markdown]
# ## Precision at $K$, by hand
#
# For a query of class $y$, let $R$ be the number of gallery images of class $y$. The
# precision at $K$ looks at the top $\min(K, R)$ of the ranking:
#
# $$P@K = \frac{\text{hits in the top } \min(K,R)}{\min(K,R)}.$$
#
# Taking $\min(K, R)$ rather than $K$ means a perfect ranking scores 100 even when a class
# has fewer than $K$ gallery images. Over many queries the official code **pools** hits
# rather than averaging per-query precisions:
#
# $$P@K = 100 \times \frac{\sum_q \text{hits}_q}{\sum_q \min(K, R_q)}.$$
#
# A toy example with 2-D features makes every number checkable. The gallery (domain $B$)
# holds six images: three cats, two dogs and a bird. Two queries from domain $A$: a cat and a
# dog. Every feature is a unit vector at some angle, so the cosine similarity only depends
# on the angle between two features.

# %%
def unit(degrees):
    """Unit vectors at the given angles (degrees): shape (n, 2)."""
    radians = torch.deg2rad(torch.tensor(degrees, dtype=torch.float32))
    return torch.stack([torch.cos(radians), torch.sin(radians)], dim=1)


class_names = ["cat", "dog", "bird"]
gallery = unit([10, 30, 50, 100, 140, 200])
gallery_labels = torch.tensor([0, 0, 1, 0, 1, 2])
query = unit([0, 130])
query_labels = torch.tensor([0, 1])

similarity = query @ gallery.T
ranking = similarity.argsort(dim=1, descending=True)
for q in range(len(query)):
    ranked = [f"g{g}:{class_names[gallery_labels[g]]}" for g in ranking[q]]
    print(f"query {q} ({class_names[query_labels[q]]}):", "  ".join(ranked))

# %% tags=["hide-input"]
fig, ax = plt.subplots(figsize=(5, 5))
colors = ["tab:orange", "tab:blue", "tab:green"]
circle = unit(list(range(0, 361, 5)))
ax.plot(circle[:, 0], circle[:, 1], color="0.85", zorder=0)
for g, (x, y) in enumerate(gallery.tolist()):
    ax.scatter(x, y, s=120, color=colors[gallery_labels[g]])
    offset = (-22, -4) if g == 4 else (8, 4)  # g4 sits next to query 1: label it outside
    ax.annotate(f"g{g}", (x, y), textcoords="offset points", xytext=offset, fontsize=10)
for q, (x, y) in enumerate(query.tolist()):
    ax.scatter(x, y, s=180, color=colors[query_labels[q]], marker="*",
               edgecolor="black")
    ax.annotate(f"query {q}", (x, y), textcoords="offset points",
                xytext=(6, 8) if q else (8, -14), fontsize=10)
for c, name in enumerate(class_names):
    ax.scatter([], [], color=colors[c], label=name)
ax.set_aspect("equal")
ax.set_title("Toy features: gallery (o) and queries (*)")
ax.legend(loc="lower left")
plt.show()

# %% [markdown]
# Reading the two rankings off the printout (a ✓ marks a hit):
#
# | rank | 1 | 2 | 3 | 4 | 5 | 6 |
# |---|---|---|---|---|---|---|
# | query 0 (cat, $R=3$) | g0 cat ✓ | g1 cat ✓ | g2 dog | g3 cat ✓ | g4 dog | g5 bird |
# | query 1 (dog, $R=2$) | g4 dog ✓ | g3 cat | g5 bird | g2 dog ✓ | g1 cat | g0 cat |
#
# | $K$ | query 0: hits / $\min(K,3)$ | query 1: hits / $\min(K,2)$ | pooled $P@K$ |
# |---|---|---|---|
# | 1 | 1 / 1 | 1 / 1 | $100 \times 2/2 = 100$ |
# | 2 | 2 / 2 | 1 / 2 | $100 \times 3/4 = 75$ |
# | 4 | 2 / 3 | 1 / 2 | $100 \times 3/5 = 60$ |
#
# At $K=4$ the per-query average would be $100 \times (2/3 + 1/2)/2 \approx 58.3$: pooling
# weighs each query by $\min(K, R)$, so the two conventions differ when classes have
# different sizes. The library must give the pooled numbers of the table:

# %%
by_hand = {1: 100 * 2 / 2, 2: 100 * 3 / 4, 4: 100 * 3 / 5}
p_at_k = metrics.precision_at_k(query, query_labels, gallery, gallery_labels,
                                ks=(1, 2, 4))
print("library: " + ", ".join(f"P@{k} = {v:.1f}" for k, v in p_at_k.items()))
assert all(np.isclose(p_at_k[k], by_hand[k]) for k in by_hand), p_at_k

# %% [markdown]
# ### The source
#
# This is the function that just ran, and the one every later notebook uses to score a
# model. It scores the queries in chunks, so that memory stays at one chunk times the gallery,
# and never sorts a whole row: the maxima of a few hundred blocks of each row give a score $t$
# that at least $\max(K)+1$ items reach, and only those candidates are sorted. A tie at the
# cut-off is resolved from the full row, so the result is exactly that of a full sort.

# %%
display(Code(inspect.getsource(metrics.precision_at_k), language="python"))

# %% [markdown]
# ## A first measurement: raw pixels
#
# What does the ranking look like *before* any learning? Use the flattened, normalised
# pixels of each image as its feature and score every ordered pair of domains. `chance`
# is what a random ranking scores: the fraction of the gallery that shares the query's class.
# The first $K$ of the preset is used throughout ($P@50$ on the full benchmark).

# %%
k = cfg.ks[0]
transform = eval_transform(cfg.image_size)
domains = glyphs.DOMAINS
classes = common_classes(root, domains)  # one class numbering for all domains


def load_domain(domain):
    """Every image of a domain as one tensor (N, 3, H, W), and the labels."""
    dataset = DomainDataset(root, domain, classes=classes,
                            transform=transform)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    return images.to(device), dataset.labels.to(device)


data = {domain: load_domain(domain) for domain in domains}
table = np.full((len(domains), len(domains)), np.nan)
for i, query_domain in enumerate(domains):
    for j, gallery_domain in enumerate(domains):
        if i != j:
            x_q, y_q = data[query_domain]
            x_g, y_g = data[gallery_domain]
            z_q, z_g = x_q.flatten(start_dim=1), x_g.flatten(start_dim=1)
            p = metrics.precision_at_k(z_q, y_q, z_g, y_g, ks=(k,))
            table[i, j] = p[k]
chance = 100 / len(classes)
print(f"P@{k} with raw pixels (chance = {chance:.1f}); rows: query domain")
print(" " * 10 + "".join(f"{d:>10}" for d in domains))
for i, query_domain in enumerate(domains):
    cells = ["-" if i == j else f"{v:.1f}" for j, v in enumerate(table[i])]
    print(f"{query_domain:>10}" + "".join(f"{c:>10}" for c in cells))

# %% tags=["hide-input"]
fig, ax = plt.subplots(figsize=(5.5, 4.5))
image = ax.imshow(table, cmap="viridis", vmin=0, vmax=100)
ax.set_xticks(range(len(domains)), domains)
ax.set_yticks(range(len(domains)), domains)
ax.set_xlabel("gallery domain")
ax.set_ylabel("query domain")
for i in range(len(domains)):
    for j in range(len(domains)):
        if i != j:
            ax.text(j, i, f"{table[i, j]:.0f}", ha="center", va="center",
                    color="white")
fig.colorbar(image, label=f"P@{k} (%)")
ax.set_title(f"Raw pixels, P@{k} (chance {chance:.0f}%)")
plt.show()

# %% [markdown]
# Every number is far from 100: pixels see colour, position, size and stroke width, not
# which glyph is drawn. Pairs that involve the photo domain sit closest to chance, since
# backgrounds dominate their pixels, and the two directions of a pair can differ a lot: the
# queries of one domain and the gallery of the other swap roles. The rest of the book learns
# features that close this gap without ever seeing a label. The training notebooks use the
# pair `cfg.domains` of the preset; here is what pixels retrieve there
# (`ucdir_lite.plots.retrieval_gallery`: a green border marks a hit, a red one a miss):

# %%
a, b = cfg.domains
print(f"{a} -> {b}: P@{k} = {table[domains.index(a), domains.index(b)]:.1f}")
print(f"{b} -> {a}: P@{k} = {table[domains.index(b), domains.index(a)]:.1f}")
(x_a, y_a), (x_b, y_b) = data[a], data[b]
gallery_fig = plots.retrieval_gallery(
    x_a, x_b, x_a.flatten(start_dim=1), x_b.flatten(start_dim=1), y_a, y_b,
    n_queries=4, k=8, class_names=classes,
    title=f"Raw pixels: {a} queries, their top 8 {b} images",
)
display(gallery_fig)

# %% [markdown]
# ## Going further on a GPU
#
# The real benchmarks need a GPU (on Colab: *Runtime → Change runtime type → GPU*). The
# `office-home` and `domainnet` presets hold the paper's protocol (ResNet-50 from MoCo v2
# weights, 200 epochs, the official code's loss variants, see {doc}`/book/differences`):

# %%
for name in ("office-home", "domainnet"):
    preset = get_preset(name)
    print(f"{name}: data_root={preset.data_root}, domains={', '.join(preset.domains)}")
    print(f"  {preset.arch}, {preset.epochs} epochs, "
          f"{preset.num_clusters} clusters, P@K for K in {', '.join(map(str, preset.ks))}")
    print(f"  variants: cw={preset.cw_variant}, se={preset.se_variant}, "
          f"dd={preset.dd_variant}")

# %% [markdown]
# This page does not run the code below: it needs the data (and, to train, a GPU). Prepare
# DomainNet's clip art and sketches once, score raw pixels on them with the paper's $K$ (in this
# notebook, after its cells have run), then train the full method:
#
# ```bash
# ucdir-lite data prepare domainnet --root data/domainnet --domains clipart sketch
# ```
#
# ```python
# preset = get_preset("domainnet")
# root = data_root(preset)                 # data/domainnet, relative to the working folder
# transform = eval_transform(32)           # 32x32 pixels: a baseline, not a model
# classes = common_classes(root, preset.domains)
# (x_a, y_a), (x_b, y_b) = map(load_domain, preset.domains)
# print(metrics.retrieval_report(x_a.flatten(1), y_a, x_b.flatten(1), y_b, ks=preset.ks))
# ```
#
# ```bash
# ucdir-lite train --preset domainnet --data-root data/domainnet --device cuda \
#     --set weights=moco_v2_800ep_pretrain.pth.tar --out runs/domainnet-full
# ```
#
# **MoCo v2 weights.** The paper's presets start the ResNet-50 from MoCo v2
# {cite}`chen2020mocov2` (800 epochs on ImageNet). Its authors publish the checkpoint,
# `moco_v2_800ep_pretrain.pth.tar`, in their repository (github.com/facebookresearch/moco,
# "Models"); download it yourself and pass its path: `--set weights=PATH` on the command line,
# `get_preset("domainnet", weights=PATH)` in Python. The package reads a plain, a `state_dict`
# or a MoCo v2 checkpoint and never downloads weights. {doc}`/book/setup` shows how to keep the
# data, the weights and the run cache on Google Drive in Colab.

# %% [markdown]
# ## Summary

# %% tags=["remove-input"]
cross = [(domains[i], domains[j], table[i, j]) for i in range(len(domains))
         for j in range(len(domains)) if i != j]
worst, best = min(cross, key=lambda c: c[2]), max(cross, key=lambda c: c[2])
photo = [v for q, g, v in cross if "photo" in (q, g)]
rest = [v for q, g, v in cross if "photo" not in (q, g)]
display(Markdown(chapter.numbered([
    "The task: rank every image of the other domain by cosine similarity; labels only score "
    "the ranking, training never sees them.",
    f"On the toy ranking the pooled precision is P@1 = {p_at_k[1]:.0f}, P@2 = {p_at_k[2]:.0f}, "
    f"P@4 = {p_at_k[4]:.0f}, by hand and from `metrics.precision_at_k`; averaging per query "
    f"instead would give {100 * (2 / 3 + 1 / 2) / 2:.1f} at K = 4.",
    f"Raw pixels retrieve across domains at P@{k} = {worst[2]:.1f} ({worst[0]}→{worst[1]}) to "
    f"{best[2]:.1f} ({best[0]}→{best[1]}), against {chance:.1f} for a random ranking.",
    f"Pairs with the photo domain average P@{k} = {np.mean(photo):.1f}, the others "
    f"{np.mean(rest):.1f}: backgrounds dominate the photos' pixels.",
    f"On the book's pair, {a}→{b} scores {table[domains.index(a), domains.index(b)]:.1f} and "
    f"{b}→{a} {table[domains.index(b), domains.index(a)]:.1f}: the baseline every later "
    "chapter has to beat.",
])))

# %% [markdown]
# ## Exercises
#
# 1. Add a third query to the toy example, a bird at 190°, and predict the pooled $P@1$ and
#    $P@2$ by hand before checking them with `metrics.precision_at_k`.
# 2. Write the per-query average of $P@K$ and find a toy gallery in which it differs from the
#    pooled figure by more than 10 points. Which queries does pooling weigh more?
# 3. Generate a benchmark with more images per class, `data_root(get_preset("cpu",
#    images_per_class=120))`, and score raw pixels again with `ks=(50, 100)`. Why do $P@100$ and
#    $P@60$ now differ, when with 60 images per class they cannot?

# %% tags=["remove-input"]
display(Markdown(chapter.runtime_note(page_start)))

# %% [markdown]
# **Next:** the following notebooks learn features that beat these pixels, starting with the
# instance-wise contrastive loss of MoCo {cite}`he2020moco`.
