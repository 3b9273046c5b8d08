"""Figures shared by the notebooks: retrieval galleries, projections, heatmaps, curves.

Every function returns a :class:`matplotlib.figure.Figure` built without ``pyplot`` (no global
state, nothing shown): display it with ``IPython.display.display(fig)`` or save it with
``fig.savefig(path)``. Inputs may be torch tensors or numpy arrays; features are rows
``(N, D)``, labels integer vectors ``(N,)``, soft assignments ``p`` rows ``(N, K)`` summing
to 1 (book chapter 3), as everywhere in the package.

Reference: the figures of Hu & Lee, ECCV 2022 (arXiv:2207.09721): retrieval examples,
feature projections and the effect of each loss.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = [
    "save_png",
    "plot_ablation",
    "retrieval_gallery",
    "cluster_montage",
    "embedding_projection",
    "heatmap",
    "entropy_histogram",
    "training_curves",
    "precision_bars",
    "method_overview",
]

HIT, MISS = "tab:green", "tab:red"
DOMAIN_COLORS = ("tab:blue", "tab:orange")
DIRECTION_COLORS = ("tab:blue", "tab:orange", "tab:purple", "tab:gray")
DOMAIN_MARKERS = ("o", "^")
TERM_NAMES = {"iw": r"$\mathcal{L}_{IW}$", "cw": r"$\mathcal{L}_{CW}$",
              "se": r"$\mathcal{L}_{SE}$", "dd": r"$\mathcal{L}_{DD}$"}


# ------------------------------------------------------------------------------- saving


def save_png(fig: Figure, path: Any, dpi: int = 120) -> Any:
    """Write ``fig`` to ``path`` as a PNG, atomically (``utils.atomic_write``) and without the
    Software tag (matplotlib's version), so that the same figure gives the same bytes."""
    from ucdir_lite.utils import atomic_write

    return atomic_write(path, lambda tmp: fig.savefig(
        tmp, format="png", dpi=dpi, metadata={"Software": None}))


# ------------------------------------------------------------------------------- input checks
# Every public function checks its inputs here, once, before it draws; each refusal names the
# argument, what it got and what to pass instead.


def _require(ok: bool, message: str) -> None:
    """Refuse an input: ``ValueError(message)`` unless ``ok``."""
    if not ok:
        raise ValueError(message)


def _array(name: str, x: Any, ndim: int | tuple[int, ...], dtype: type = np.float64) -> np.ndarray:
    """``x`` (array, tensor or nested sequence) as finite numpy ``dtype`` with ``ndim`` dims."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        out = np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be an array or tensor of numbers ({err})") from err
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    _require(out.ndim in ndims, f"{name} must have {' or '.join(map(str, ndims))} dimensions, "
             f"got shape {out.shape}")
    _require(not out.size or np.isfinite(out).all(), f"{name} contains NaN or inf; pass finite "
             "values")
    return out


def _domains(names: tuple[str, str], *feats_and_labels: Any) -> list[np.ndarray]:
    """``[z_1, y_1, z_2, y_2]`` from ``feats_1, labels_1, feats_2, labels_2``: features
    (N, D) with one integer label each, the same D in both domains (named ``names``)."""
    out = []
    for name, feats, labels in zip(names, feats_and_labels[::2], feats_and_labels[1::2],
                                   strict=True):
        z, y = _array(f"feats_{name}", feats, 2), _array(f"labels_{name}", labels, 1, np.int64)
        _require(len(z) > 0, f"feats_{name} is empty (shape {z.shape}); pass at least one row")
        _require(len(y) == len(z), f"labels_{name} has {len(y)} entries but feats_{name} has "
                 f"{len(z)} rows; pass one label per feature row")
        out += [z, y]
    _require(out[0].shape[1] == out[2].shape[1], f"feats_{names[0]} has dimension "
             f"{out[0].shape[1]} and feats_{names[1]} {out[2].shape[1]}; both domains must be "
             "encoded by the same model")
    return out


def _images(name: str, images: Any, n: int) -> list[np.ndarray]:
    """``n`` displayable images (H, W, 3) or (H, W) with values in [0, 1], from a tensor or
    array (N, C, H, W) with C in {1, 3}, (N, H, W, C) or (N, H, W), or a sequence of PIL
    images / arrays. uint8 is divided by 255; floats outside [0, 1] (e.g. normalised network
    inputs) are rescaled per image to [0, 1]."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray):
        _require(images.ndim in (3, 4), f"{name} must be (N, C, H, W), (N, H, W, C) or "
                 f"(N, H, W), got shape {images.shape}")
        if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
            images = images.transpose(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
    items = [np.asarray(img) for img in images]
    _require(len(items) == n, f"{name} holds {len(items)} images but its features have {n} "
             "rows; pass the images in the order of the features")
    out = []
    for a in items:
        a = a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a
        _require(a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 3), f"{name}: each image must "
                 f"be (H, W) or (H, W, 3), got {a.shape}")
        a = a / 255.0 if a.dtype == np.uint8 else a.astype(np.float64)
        out.append((a - a.min()) / max(a.max() - a.min(), 1e-12) if a.min() < 0 or a.max() > 1
                   else a)
    return out


def _normalize(z: np.ndarray) -> np.ndarray:
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def _bare(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


# ------------------------------------------------------------------------------- gallery


def retrieval_gallery(
    query_images: Any,
    gallery_images: Any,
    feats_q: Any,
    feats_g: Any,
    labels_q: Any,
    labels_g: Any,
    n_queries: int = 5,
    k: int = 8,
    *,
    query_indices: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    cell_inches: float = 0.8,
) -> Figure:
    r"""Queries of one domain and their top-``k`` gallery images of the other domain.

    Each row shows a query, then the ``k`` gallery items of highest cosine similarity
    :math:`\mathrm{sim}(z_q, z_g) = z_q\cdot z_g/(\|z_q\|\|z_g\|)` (book chapter 1), best first.
    A retrieved image with the query's label is a hit (green border), otherwise a miss
    (red border); each row's label says how many of the ``k`` are hits.

    Args:
        query_images: the query domain's images, in the order of ``feats_q``: a tensor or
            array (N, C, H, W), (N, H, W, C) or (N, H, W), or a sequence of PIL images.
        gallery_images: the gallery domain's images, in the order of ``feats_g``.
        feats_q: (N_q, D) query features.
        feats_g: (N_g, D) gallery features.
        labels_q: (N_q,) integer query labels (used to mark hits only).
        labels_g: (N_g,) integer gallery labels.
        n_queries: number of rows; by default the queries are spread evenly over the
            query set (the datasets are ordered by class, so the rows show different classes).
        k: retrieved images per row (``1 <= k <= N_g``).
        query_indices: explicit query rows to show (overrides ``n_queries``).
        class_names: names of the labels, for the row titles.
        title: the figure title.
        cell_inches: size of one image cell.

    Returns:
        A figure with ``n_queries * (k + 1)`` axes, one per image.
    """
    z_q, y_q, z_g, y_g = _domains(("q", "g"), feats_q, labels_q, feats_g, labels_g)
    _require(1 <= k <= len(z_g), f"k={k} must lie in [1, {len(z_g)}] (the gallery size)")
    if query_indices is None:
        _require(1 <= n_queries <= len(z_q),
                 f"n_queries={n_queries} must lie in [1, {len(z_q)}] (the queries)")
        query_indices = np.linspace(0, len(z_q) - 1, n_queries).round().astype(int).tolist()
    rows = [int(i) for i in query_indices]
    _require(bool(rows) and 0 <= min(rows) and max(rows) < len(z_q),
             f"query_indices={rows} must be non-empty and lie in [0, {len(z_q)})")
    imgs_q = _images("query_images", query_images, len(z_q))
    imgs_g = _images("gallery_images", gallery_images, len(z_g))

    similarity = _normalize(z_q[rows]) @ _normalize(z_g).T
    top = np.argsort(-similarity, axis=1, kind="stable")[:, :k]

    def name(label: int) -> str:
        return str(class_names[label]) if class_names is not None else str(label)

    fig = Figure(figsize=(cell_inches * (k + 1) + 0.4, cell_inches * len(rows) + 0.6),
                 layout="constrained")
    axes = fig.subplots(len(rows), k + 1, squeeze=False)
    for r, q in enumerate(rows):
        ax = axes[r, 0]
        ax.imshow(imgs_q[q], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        _bare(ax)
        hits = int((y_g[top[r]] == y_q[q]).sum())
        ax.set_ylabel(f"{name(y_q[q])}\n{hits}/{k} hits", fontsize=10, rotation=0,
                      ha="right", va="center")
        if r == 0:
            ax.set_title("query", fontsize=10)
        for c, g in enumerate(top[r], start=1):
            ax = axes[r, c]
            ax.imshow(imgs_g[g], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            _bare(ax)
            color = HIT if y_g[g] == y_q[q] else MISS
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(3)
            if r == 0:
                ax.set_title(f"#{c}", fontsize=10)
    if title:
        fig.suptitle(title)
    return fig


# ------------------------------------------------------------------------------- clusters


def cluster_montage(
    images: Any,
    cluster_labels: Any,
    class_labels: Any = None,
    *,
    clusters: Sequence[int] | None = None,
    n_clusters: int = 6,
    n_per_cluster: int = 8,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    cell_inches: float = 0.65,
) -> Figure:
    """Images of a few clusters, one row per cluster (e.g. the k-means clusters of a bank).

    Each row shows ``n_per_cluster`` members of a cluster, spread evenly over its members.
    With ``class_labels`` (evaluation only: training never sees them) a member is framed
    green when it has the cluster's majority class and red otherwise, and the row label
    gives the cluster's size and purity (the majority class's share of its members).

    Args:
        images: the images in the order of the labels (see ``retrieval_gallery``).
        cluster_labels: (N,) integer cluster of each image.
        class_labels: optional (N,) integer class of each image.
        clusters: the clusters to show (default: the ``n_clusters`` largest).
        n_clusters: number of rows when ``clusters`` is not given.
        n_per_cluster: images per row (a smaller cluster leaves cells empty).
        class_names: names of the classes, for the row labels.
        title: the figure title.
        cell_inches: size of one image cell.

    Returns:
        A figure with ``len(clusters) * n_per_cluster`` axes.
    """
    assign = _array("cluster_labels", cluster_labels, 1, dtype=np.int64)
    _require(len(assign) > 0, "cluster_labels is empty; pass one cluster id per image")
    truth = None
    if class_labels is not None:
        truth = _array("class_labels", class_labels, 1, dtype=np.int64)
        _require(len(truth) == len(assign), f"class_labels has {len(truth)} entries but "
                 f"cluster_labels {len(assign)}; pass one of each per image")
    _require(n_per_cluster >= 1, f"n_per_cluster={n_per_cluster} must be >= 1")
    ids, sizes = np.unique(assign, return_counts=True)
    if clusters is None:
        _require(n_clusters >= 1, f"n_clusters={n_clusters} must be >= 1")
        clusters = ids[np.argsort(-sizes, kind="stable")][:n_clusters].tolist()
    rows = [int(c) for c in clusters]
    missing = [c for c in rows if c not in set(ids.tolist())]
    _require(bool(rows) and not missing,
             f"clusters {missing or rows} hold no image; pick from {ids.tolist()}")
    imgs = _images("images", images, len(assign))

    fig = Figure(figsize=(cell_inches * n_per_cluster + 1.2, cell_inches * len(rows) + 0.5),
                 layout="constrained")
    axes = fig.subplots(len(rows), n_per_cluster, squeeze=False)
    for r, cluster in enumerate(rows):
        members = np.flatnonzero(assign == cluster)
        shown = members[np.unique(np.linspace(0, len(members) - 1, n_per_cluster).round()
                                  .astype(int))] if len(members) > n_per_cluster else members
        label = f"cluster {cluster}\n{len(members)} image" + ("s" if len(members) > 1 else "")
        majority = None
        if truth is not None:
            classes, counts = np.unique(truth[members], return_counts=True)
            majority = classes[np.argmax(counts)]
            name = class_names[majority] if class_names is not None else str(majority)
            label += f"\n{100 * counts.max() / len(members):.0f}% {name}"
        for c in range(n_per_cluster):
            ax = axes[r, c]
            _bare(ax)
            if c >= len(shown):
                ax.set_axis_off()
                continue
            ax.imshow(imgs[shown[c]], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            if majority is not None:
                color = HIT if truth[shown[c]] == majority else MISS
                for spine in ax.spines.values():
                    spine.set_edgecolor(color)
                    spine.set_linewidth(2.5)
        axes[r, 0].set_ylabel(label, fontsize=10, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title)
    return fig


# ------------------------------------------------------------------------------- projection


def _pca_2d(z: np.ndarray) -> np.ndarray:
    """The first two principal components of the rows of ``z`` (centred): shape (N, 2)."""
    centred = z - z.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    out = centred @ vt[:2].T
    if out.shape[1] < 2:  # D == 1: pad, so that the scatter still has two axes
        out = np.concatenate([out, np.zeros((len(out), 2 - out.shape[1]))], axis=1)
    return out


def _tsne_2d(z: np.ndarray, seed: int, perplexity: float) -> np.ndarray:
    try:
        from sklearn.manifold import TSNE
    except ImportError as err:  # scikit-learn is an optional ("book") dependency
        raise ImportError(
            "method='tsne' needs scikit-learn: pip install scikit-learn (or use method='pca')"
        ) from err
    perplexity = min(perplexity, max(1.0, (len(z) - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                metric="cosine")
    return tsne.fit_transform(z)


def embedding_projection(
    feats_a: Any,
    feats_b: Any,
    labels_a: Any,
    labels_b: Any,
    method: str = "pca",
    *,
    domain_names: Sequence[str] = ("A", "B"),
    class_names: Sequence[str] | None = None,
    max_points: int = 1500,
    seed: int = 0,
    perplexity: float = 30.0,
    title: str | None = None,
) -> Figure:
    """Both domains' features projected to 2-D together: coloured by domain, then by class.

    The features of A and B are L2-normalised, stacked and projected jointly (PCA on the
    centred features, or t-SNE with the cosine metric), so distances in the two panels are
    comparable. Left: by domain; two separate clouds are the *domain gap* that cross-domain
    retrieval must close. Right: by class (marker shape = domain); a class whose A and B
    points fall together can be retrieved across domains.

    Args:
        feats_a: (N_a, D) features of domain A.
        feats_b: (N_b, D) features of domain B.
        labels_a: (N_a,) integer labels of A (colours only).
        labels_b: (N_b,) integer labels of B.
        method: "pca" or "tsne" (t-SNE needs scikit-learn).
        domain_names: the names of A and B for the legend.
        class_names: the names of the labels (a legend is drawn when there are <= 12).
        max_points: at most this many points per domain are drawn (a seeded random subset).
        seed: seed of the subset and of t-SNE.
        perplexity: t-SNE perplexity (lowered automatically for tiny inputs).
        title: the figure title.

    Returns:
        A figure with 2 axes.
    """
    z_a, y_a, z_b, y_b = _domains(("a", "b"), feats_a, labels_a, feats_b, labels_b)
    _require(method in ("pca", "tsne"), f"method={method!r}: use 'pca' or 'tsne'")
    _require(len(domain_names) == 2, f"domain_names={domain_names!r}: give two names, A's and "
             "B's")
    _require(max_points >= 1, f"max_points={max_points} must be >= 1")
    rng = np.random.default_rng(seed)
    keep = [np.sort(rng.permutation(len(z))[:max_points]) for z in (z_a, z_b)]
    z_a, y_a, z_b, y_b = z_a[keep[0]], y_a[keep[0]], z_b[keep[1]], y_b[keep[1]]
    z = _normalize(np.concatenate([z_a, z_b]))
    _require(len(z) >= 3, f"need at least 3 points to project, got {len(z)}")
    xy = _pca_2d(z) if method == "pca" else _tsne_2d(z, seed, perplexity)
    xy_a, xy_b = xy[: len(z_a)], xy[len(z_a):]

    fig = Figure(figsize=(8.4, 4.4), layout="constrained")
    by_domain, by_class = fig.subplots(1, 2)
    for d, (points, name) in enumerate(zip((xy_a, xy_b), domain_names, strict=True)):
        by_domain.scatter(points[:, 0], points[:, 1], s=8, alpha=0.6, color=DOMAIN_COLORS[d],
                          marker=DOMAIN_MARKERS[d], label=str(name), linewidths=0)
    by_domain.legend(loc="best", markerscale=2, fontsize=9)
    by_domain.set_title("coloured by domain")
    classes = np.unique(np.concatenate([y_a, y_b]))
    cmap = _class_colormap(len(classes))
    color_of = {c: cmap(i) for i, c in enumerate(classes)}
    for d, (points, labels) in enumerate(((xy_a, y_a), (xy_b, y_b))):
        by_class.scatter(points[:, 0], points[:, 1], s=10, alpha=0.7, linewidths=0,
                         c=[color_of[c] for c in labels], marker=DOMAIN_MARKERS[d])
    if len(classes) <= 12:
        for c in classes:
            label = class_names[c] if class_names is not None else str(c)
            by_class.scatter([], [], color=color_of[c], s=20, label=label)
        by_class.legend(loc="best", fontsize=9, ncols=2)
    by_class.set_title("coloured by class\n(o: {}, ^: {})".format(*domain_names), fontsize=10)
    axis = "PC" if method == "pca" else "t-SNE "
    for ax in (by_domain, by_class):
        ax.set_xlabel(f"{axis}1")
        ax.set_ylabel(f"{axis}2")
    if title:
        fig.suptitle(title)
    return fig


def _class_colormap(n: int):
    from matplotlib import colormaps

    if n <= 10:
        return colormaps["tab10"]
    if n <= 20:
        return colormaps["tab20"]
    return colormaps["turbo"].resampled(n)


# ------------------------------------------------------------------------------- heatmap


def heatmap(
    matrix: Any,
    title: str | Sequence[str],
    *,
    xlabel: str = "",
    ylabel: str = "",
    cmap: str = "viridis",
    colorbar_label: str | None = None,
    marks: Any = None,
    xticklabels: Sequence[str] | None = None,
    yticklabels: Sequence[str] | None = None,
    annotate: bool | None = None,
    fmt: str = ".2f",
    panel_inches: float = 3.6,
    ncols: int | None = None,
) -> Figure:
    r"""One matrix (a cost matrix :math:`C`, a transport plan :math:`\pi`) or several, as images.

    Rows are indexed by domain A (e.g. its clusters :math:`c^A_i`), columns by domain B.
    ``marks`` draws a red square around cell ``(i, marks[i])`` of every panel, e.g. the
    one-to-one matching ``transport.match_clusters`` reads off the plan.

    Args:
        matrix: a 2-D array (n, m), or a sequence of them (or a 3-D stack), one per panel.
        title: the panel title, or one title per panel.
        xlabel: label of the columns.
        ylabel: label of the rows.
        cmap: a matplotlib colormap name.
        colorbar_label: the label of the colour bars.
        marks: optional (n,) integer vector: mark cell ``(i, marks[i])``.
        xticklabels: optional names of the m columns (e.g. each cluster's majority class).
        yticklabels: optional names of the n rows.
        annotate: write the values into the cells (default: when the matrix is at most 8x8).
        fmt: the format of those values.
        panel_inches: the size of one panel.
        ncols: panels per row (default: all in one row).

    Returns:
        A figure with two axes per panel (the image and its colour bar).
    """
    if isinstance(matrix, (list, tuple)):
        mats = [_array(f"matrix[{i}]", m, 2) for i, m in enumerate(matrix)]
    else:
        stack = _array("matrix", matrix, (2, 3))
        mats = [stack] if stack.ndim == 2 else list(stack)
    _require(bool(mats) and all(m.size for m in mats),
             "matrix is empty; pass at least one non-empty 2-D matrix")
    titles = [title] * len(mats) if isinstance(title, str) else list(title)
    _require(len(titles) == len(mats),
             f"got {len(mats)} matrices but {len(titles)} titles; give one each")
    mark_rows = None if marks is None else _array("marks", marks, 1, dtype=np.int64)
    for m in mats if mark_rows is not None else ():
        _require(len(mark_rows) == m.shape[0] and mark_rows.min() >= 0
                 and mark_rows.max() < m.shape[1], f"marks must hold one column index in "
                 f"[0, {m.shape[1]}) per row of the {m.shape[0]}x{m.shape[1]} matrix, got "
                 f"{mark_rows.tolist()}")
    for name, names, axis in (("xticklabels", xticklabels, 1), ("yticklabels", yticklabels, 0)):
        side = ("rows", "row") if axis == 0 else ("columns", "column")
        _require(names is None or all(len(names) == m.shape[axis] for m in mats),
                 f"{name} has {0 if names is None else len(names)} names but the matrix has "
                 f"{mats[0].shape[axis]} {side[0]}; give one per {side[1]}")

    ncols = len(mats) if ncols is None else ncols
    _require(ncols >= 1, f"ncols={ncols} must be >= 1")
    ncols = min(ncols, len(mats))
    nrows = math.ceil(len(mats) / ncols)
    fig = Figure(figsize=(panel_inches * ncols + 0.3, panel_inches * 0.9 * nrows),
                 layout="constrained")
    grid = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in grid[len(mats):]:
        ax.remove()  # the unused cells of the last row
    axes = grid[: len(mats)]
    for ax, m, text in zip(axes, mats, titles, strict=True):
        image = ax.imshow(m, cmap=cmap, interpolation="nearest", aspect="auto")
        fig.colorbar(image, ax=ax, label=colorbar_label, shrink=0.9)
        ax.set_title(text, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        n, k = m.shape
        if n <= 20 and k <= 20:
            ax.set_xticks(range(k))
            ax.set_yticks(range(n))
            ax.tick_params(labelsize=9)
        # one label per row/column: at most about 0.12 inch each, so a 60-class matrix
        # gets 7 pt names (the densest figure of the book), smaller matrices 9 pt
        names_size = max(7.0, min(9.0, panel_inches * 72 / max(n, k) * 0.95))
        if xticklabels is not None:
            ax.set_xticks(range(k), [str(t) for t in xticklabels], rotation=90,
                          fontsize=names_size)
        if yticklabels is not None:
            ax.set_yticks(range(n), [str(t) for t in yticklabels], fontsize=names_size)
        if annotate or (annotate is None and n <= 8 and k <= 8):
            middle = (m.max() + m.min()) / 2
            for i in range(n):
                for j in range(k):
                    ax.text(j, i, format(m[i, j], fmt), ha="center", va="center", fontsize=9,
                            color="black" if m[i, j] > middle else "white")
        if mark_rows is not None:
            cell_points = panel_inches * 72 * 0.7 / max(n, k)  # about one cell, in points
            ax.scatter(mark_rows, np.arange(n), s=(0.9 * cell_points) ** 2, marker="s",
                       facecolors="none", edgecolors="red", linewidths=1.5)
    return fig


# ------------------------------------------------------------------------------- entropy


def _row_entropy(name: str, p: Any) -> np.ndarray:
    r""":math:`H_i = -\sum_j p_{ij}\log p_{ij}` of each row, after checking ``p``."""
    p = _array(name, p, 2)
    _require(p.shape[0] >= 1 and p.shape[1] >= 2,
             f"{name} must be (N, K) with N >= 1 and K >= 2, got shape {p.shape}")
    _require(not (p < 0).any(),
             f"{name} has negative entries; pass probabilities (a softmax), not logits")
    error = np.abs(p.sum(axis=1) - 1).max()
    _require(error <= 1e-3,
             f"the rows of {name} must sum to 1 (error {error:.3g}); pass soft assignments")
    return -(p * np.log(np.maximum(p, 1e-30))).sum(axis=1)


def entropy_histogram(
    p_before: Any,
    p_after: Any,
    *,
    labels: Sequence[str] = ("before", "after"),
    bins: int = 30,
    full_range: bool = True,
    log_counts: bool = False,
    title: str | None = None,
) -> Figure:
    r"""Histograms of the assignment entropy of each sample, before and after (book chapter 4).

    For each row of a soft assignment :math:`p` (N, K),
    :math:`H_i = -\sum_{j=1}^{K} p_{ij}\log p_{ij}`, between 0 (the sample commits to one
    cluster) and :math:`\log K` (uniform over the clusters, dashed line). The self-entropy
    loss :math:`\mathcal{L}_{SE}` is the mean of :math:`H_i`; the legend gives it.

    Args:
        p_before: (N, K) soft assignments, e.g. ``clustering.soft_assign`` before training
            with :math:`\mathcal{L}_{SE}`.
        p_after: (M, K) soft assignments after it (same K).
        labels: the legend names of the two.
        bins: number of histogram bins.
        full_range: bins over :math:`[0, \log K]`; False: over [0, the largest entropy
            observed], to see sharp assignments in detail (the dashed line is then drawn
            only if it falls inside).
        log_counts: a logarithmic count axis.
        title: the axes title.

    Returns:
        A figure with 1 axes.
    """
    h_before = _row_entropy("p_before", p_before)
    h_after = _row_entropy("p_after", p_after)
    k_before, k_after = np.shape(p_before)[1], np.shape(p_after)[1]
    _require(k_before == k_after, f"p_before has K={k_before} clusters and p_after "
             f"K={k_after}; compare assignments to the same number of clusters")
    _require(len(labels) == 2, f"labels={labels!r}: give two names")
    _require(bins >= 1, f"bins={bins} must be >= 1")
    log_k = math.log(k_before)
    observed = max(h_before.max(), h_after.max(), 1e-6)
    upper = log_k * 1.001 if full_range else min(log_k * 1.001, observed * 1.001)
    edges = np.linspace(0, upper, bins + 1)
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.subplots()
    for h, label, color in zip((h_before, h_after), labels, DOMAIN_COLORS, strict=True):
        ax.hist(h, bins=edges, alpha=0.55, color=color, log=log_counts,
                label=f"{label}: mean {h.mean():.2f}")
    if log_k <= upper:
        ax.axvline(log_k, color="0.3", linestyle="--", label=f"log K = {log_k:.2f}")
    ax.set_xlabel(r"entropy $H_i = -\sum_j p_{ij}\log p_{ij}$ (nats; at most "
                  f"log K = {log_k:.2f})")
    ax.set_ylabel("samples")
    ax.legend(loc="best")
    ax.set_title(title or "Entropy of the soft assignments")
    return fig


# ------------------------------------------------------------------------------- curves


def _check_history(history: Any) -> list[Mapping[str, Any]]:
    _require(isinstance(history, Sequence) and not isinstance(history, (str, bytes))
             and bool(history), "history must be a non-empty list of per-epoch dicts "
             f"(TrainResult.history), got {type(history).__name__}")
    for i, entry in enumerate(history):
        _require(isinstance(entry, Mapping) and "epoch" in entry and "losses" in entry,
                 f"history[{i}] must be a dict with 'epoch' and 'losses' (as train() writes), "
                 f"got {entry!r:.80}")
    return list(history)


def training_curves(history: Any, *, title: str | None = None) -> Figure:
    r"""The loss terms per epoch, and P@K when the run was evaluated during training.

    One panel per loss term the run used (:math:`\mathcal{L}_{IW}`, :math:`\mathcal{L}_{CW}`,
    :math:`\mathcal{L}_{SE}`, :math:`\mathcal{L}_{DD}`: the unweighted epoch means that
    ``train`` records), with the warm-up epochs shaded; then, if any epoch holds "metrics",
    a panel with the first P@K of each direction (A→B, B→A).

    Args:
        history: ``TrainResult.history``: a list of dicts with "epoch", "losses"
            (term -> value) and optionally "phase" and "metrics".
        title: the figure title.

    Returns:
        A figure with one axes per loss term, plus one for P@K if metrics were recorded.
    """
    history = _check_history(history)
    epochs = np.array([int(e["epoch"]) for e in history])
    terms = [t for t in TERM_NAMES if any(t in e["losses"] for e in history)]
    terms += sorted({t for e in history for t in e["losses"]} - set(TERM_NAMES) - {"total"})
    evaluated = [e for e in history if e.get("metrics")]
    n_panels = len(terms) + (1 if evaluated else 0)
    _require(n_panels > 0, "history records no loss terms and no metrics: nothing to plot")
    warmup = [int(e["epoch"]) for e in history if e.get("phase") == "warmup"]

    ncols = min(n_panels, 2 if n_panels in (2, 4) else 3)  # a grid that fits the page width
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(7.4, 2.7 * nrows + 0.4), layout="constrained")
    grid = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in grid[n_panels:]:
        ax.remove()
    axes = grid[:n_panels]
    for ax, term in zip(axes, terms, strict=False):
        values = np.array([e["losses"].get(term, np.nan) for e in history], dtype=float)
        ax.plot(epochs, values, marker="." if len(epochs) < 30 else None)
        ax.set_title(TERM_NAMES.get(term, term), fontsize=11)
        ax.set_xlabel("epoch")
    if evaluated:
        ax = axes[-1]
        x = [int(e["epoch"]) + 1 for e in evaluated]  # metrics are taken after the epoch
        first = next(iter(next(iter(evaluated[0]["metrics"].values()))))
        if len(evaluated) <= 2:  # two points make no curve: one group of bars per evaluation
            width = 0.38
            for d, (direction, color) in enumerate(zip(("A->B", "B->A"), DOMAIN_COLORS,
                                                       strict=True)):
                y = [e["metrics"].get(direction, {}).get(first, np.nan) for e in evaluated]
                bars = ax.bar(np.arange(len(x)) + (d - 0.5) * width, y, width, color=color,
                              label=direction.replace("->", "→"))
                ax.bar_label(bars, fmt="%.1f", fontsize=9)
            ax.set_xticks(range(len(x)), [f"{n} epochs" for n in x])
            ax.set_ylim(0, 1.45 * np.nanmax([e["metrics"].get(d, {}).get(first, 0)
                                              for e in evaluated for d in ("A->B", "B->A")])
                        + 1)
        else:
            for direction, color in zip(("A->B", "B->A"), DOMAIN_COLORS, strict=True):
                y = [e["metrics"].get(direction, {}).get(first, np.nan) for e in evaluated]
                ax.plot(x, y, marker="o", color=color, label=direction.replace("->", "→"))
            low, high = ax.get_ylim()  # headroom: the legend above the curves, no cut marker
            ax.set_ylim(low, high + 0.35 * (high - low))
            ax.set_xlabel("epochs trained")
        ax.set_title(first, fontsize=11)
        ax.legend(loc="upper center", fontsize=9, ncols=2)
    if warmup:
        for ax in axes[: len(terms)]:
            ax.axvspan(min(warmup) - 0.5, max(warmup) + 0.5, color="0.9", zorder=0)
        axes[0].text(0.02, 0.03, "warm-up (shaded)", transform=axes[0].transAxes,
                     va="bottom", fontsize=9, color="0.35")
    if title:
        fig.suptitle(title)
    return fig


# ------------------------------------------------------------------------------- bars


def precision_bars(
    reports: Mapping[str, Mapping[str, Mapping[str, float]]],
    metric: str | None = None,
    *,
    directions: Sequence[str] = ("A->B", "B->A"),
    reference: float | None = None,
    reference_label: str = "chance",
    title: str | None = None,
) -> Figure:
    """Grouped bars of one retrieval figure (e.g. P@50) for several runs, both directions.

    Args:
        reports: run name -> ``metrics.retrieval_report`` output (or ``TrainResult.metrics``),
            i.e. ``{"A->B": {"P@50": ..., "mAP": ...}, "B->A": {...}}``; drawn in this order.
        metric: the key to draw (default: the first key of the first report's first direction).
        directions: which directions to draw, one bar colour each (e.g. add "A->A" and
            "B->B", the in-domain figures of ``retrieval_report(..., in_domain=True)``).
        reference: draw a dashed horizontal line at this value (e.g. chance level).
        reference_label: the legend name of that line.
        title: the axes title.

    Returns:
        A figure with 1 axes; each bar is labelled with its value.
    """
    _require(isinstance(reports, Mapping) and bool(reports),
             "reports must be a non-empty dict: run name -> retrieval report")
    names = list(reports)
    first = reports[names[0]]
    _require(isinstance(first, Mapping) and bool(first),
             f"reports[{names[0]!r}] must be a retrieval report dict, got {first!r}")
    metric = next(iter(next(iter(first.values())))) if metric is None else metric
    for name, direction in ((n, d) for n in names for d in directions):
        _require(metric in reports[name].get(direction, {}), f"reports[{name!r}] has no "
                 f"{metric!r} for {direction!r}; pass reports from retrieval_report with that "
                 "K, or another metric")
    fig = Figure(figsize=(min(7.4, max(4.0, 1.2 * len(names) + 1.2)), 3.8),
                 layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(directions)
    x = np.arange(len(names))
    for d, direction in enumerate(directions):
        values = [float(reports[n][direction][metric]) for n in names]
        bars = ax.bar(x + (d - (len(directions) - 1) / 2) * width, values, width,
                      label=direction.replace("->", "→"),
                      color=DIRECTION_COLORS[d % len(DIRECTION_COLORS)])
        ax.bar_label(bars, fmt="%.1f", fontsize=9, padding=2,
                     rotation=90 if len(directions) > 2 else 0)  # narrow bars: upright labels
    if reference is not None:
        ax.axhline(reference, color="0.3", linestyle="--", label=reference_label)
    ax.set_xticks(x, names)
    ax.set_ylabel(f"{metric} (%)")
    headroom = 1.25 if len(directions) > 2 else 1.15  # room for the (upright) labels
    ax.set_ylim(0, min(112, headroom * max(max(float(reports[n][dr][metric]) for n in names
                                            for dr in directions), reference or 0) + 1))
    ax.legend(loc="lower right", fontsize=9)
    ax.set_title(title or f"Cross-domain retrieval, {metric}")
    return fig


# ------------------------------------------------------------------------------- overview


def method_overview() -> Figure:
    r"""A diagram of the method: where each of the four loss terms acts.

    Each domain's images pass through the query encoder :math:`f_\theta` (and its momentum
    copy, the key encoder); :math:`\mathcal{L}_{IW}` contrasts each feature with the memory
    bank of its own domain. After the warm-up, k-means on each domain's features gives the
    prototypes :math:`c^A_j`, :math:`c^B_j`: :math:`\mathcal{L}_{CW}` pulls a feature to its
    cluster, :math:`\mathcal{L}_{SE}` makes it commit to one cluster, and
    :math:`\mathcal{L}_{DD}` makes the distances between clusters agree across the domains,
    once optimal transport has matched the clusters of A to those of B.

    Returns:
        A figure of 7.5 x 4.4 inches, text of 9 pt or more.
    """
    fig = Figure(figsize=(7.5, 4.4), layout="constrained")
    ax = fig.subplots()
    ax.set_xlim(0, 15)
    ax.set_ylim(0, 8.8)
    ax.axis("off")
    colors = {"data": "#e8eef7", "model": "#fdf1dc", "loss": "#e3f2e1", "match": "#f3e3f2"}

    def box(x: float, y: float, w: float, h: float, text: str, kind: str,
            size: float = 9.5) -> tuple[float, float, float, float]:
        from matplotlib.patches import FancyBboxPatch

        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.08",
                                    facecolor=colors[kind], edgecolor="0.35", lw=1))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)
        return x, y, w, h

    def arrow(start: tuple[float, float], end: tuple[float, float], text: str = "") -> None:
        ax.annotate("", xy=end, xytext=start,
                    arrowprops=dict(arrowstyle="-|>", color="0.3", lw=1.1,
                                    shrinkA=2, shrinkB=2))
        if text:
            ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.18, text,
                    ha="center", va="bottom", fontsize=9, color="0.25")

    for name, y in (("A", 6.4), ("B", 0.6)):
        box(0.1, y, 2.3, 1.6, f"domain {name}\nimages\n(no labels)", "data")
        box(3.1, y, 2.6, 1.6, "encoder $f_\\theta$\n+ momentum\nkey encoder", "model")
        box(6.4, y, 2.0, 1.6, f"features\n$z^{name}_i$", "data")
        box(9.1, y + 0.3, 2.2, 1.0, f"memory\nbank {name}", "data")
        box(12.0, y + 0.3, 2.9, 1.0, "$\\mathcal{L}_{IW}$: my view\nvs. the bank", "loss")
        arrow((2.5, y + 0.8), (3.0, y + 0.8))
        arrow((5.8, y + 0.8), (6.3, y + 0.8))
        arrow((8.5, y + 0.8), (9.0, y + 0.8))
        arrow((11.4, y + 0.8), (11.9, y + 0.8))
    box(3.1, 3.5, 3.2, 1.8, "k-means per domain,\nevery epoch after\nthe warm-up:\n"
        "prototypes $c^A_j$, $c^B_j$", "model", size=9)
    arrow((7.0, 6.3), (5.6, 5.4))
    arrow((7.0, 2.3), (5.6, 3.4))
    box(7.0, 4.55, 3.6, 1.1, "$\\mathcal{L}_{CW}$: pull $z_i$ to its\ncluster (each domain)",
        "loss")
    box(7.0, 3.15, 3.6, 1.1, "$\\mathcal{L}_{SE}$: commit to one\ncluster (A's and B's)",
        "loss")
    box(11.1, 4.55, 3.8, 1.1, "OT (Sinkhorn) matches\nA's clusters to B's: $\\pi$", "match")
    box(11.1, 3.15, 3.8, 1.1, "$\\mathcal{L}_{DD}$: distances between\nmatched clusters agree",
        "loss")
    arrow((6.4, 4.7), (6.9, 5.0))
    arrow((6.4, 4.1), (6.9, 3.7))
    ax.annotate("", xy=(11.0, 5.1), xytext=(6.4, 5.55),
                arrowprops=dict(arrowstyle="-|>", color="0.3", lw=1.1,
                                connectionstyle="arc3,rad=-0.25", shrinkA=2, shrinkB=2))
    arrow((13.0, 4.5), (13.0, 4.3))
    ax.text(7.5, 8.55, "within each domain: $\\mathcal{L}_{IW}$, $\\mathcal{L}_{CW}$;   "
            "across the domains: $\\mathcal{L}_{SE}$ (official form), $\\mathcal{L}_{DD}$",
            ha="center", va="center", fontsize=9.5)
    return fig


def plot_ablation(results: dict[str, Any], k: int | None = None,
                  directions: Sequence[str] | None = None) -> Figure:
    """Grouped bars of P@k (default: the first K) per direction, one panel per pair, one bar
    per arm, error bars = sd over the seeds, from the results of ``ablation.run_ablation``.
    Returns a matplotlib Figure (no pyplot state)."""
    from ucdir_lite.ablation import DIRECTIONS, direction_label, first_k, split_pair, summarize

    directions = DIRECTIONS if directions is None else tuple(directions)
    k = k if k is not None else first_k(results)
    means = summarize(results)
    arms = results["arms"]
    fig = Figure(figsize=(7.4, 3.2 * len(means) + 0.4), layout="constrained")
    axes = fig.subplots(len(means), 1, squeeze=False)[:, 0]  # one row per pair: page width
    width = 0.8 / len(arms)
    for ax, (pair, cells) in zip(axes, means.items(), strict=True):
        domains = split_pair(pair)
        labels = [direction_label(d, domains) for d in directions]
        for i, arm in enumerate(arms):
            values = [cells[arm][f"{d} P@{k}"] for d in directions]
            x = [j + (i - (len(arms) - 1) / 2) * width for j in range(len(directions))]
            sd = [0.0 if math.isnan(v[1]) else v[1] for v in values]
            ax.bar(x, [v[0] for v in values], width, yerr=sd, capsize=2, label=arm)
        ax.set_xticks(range(len(directions)), labels, fontsize=9)
        ax.set_title(" → ".join(domains), fontsize=10)
        ax.set_ylabel(f"P@{k} (%)")
        ax.axvline(1.5, color="0.7", lw=0.8, ls="--")  # cross-domain | in-domain
    axes[0].legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig
