"""ucdir_lite.plots: each figure has the expected axes and shows the right data."""

import math

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from ucdir_lite import plots

from _tolerances import U64, gamma

matplotlib.use("Agg")


def _unit(degrees):
    r = np.deg2rad(np.asarray(degrees, dtype=float))
    return np.stack([np.cos(r), np.sin(r)], axis=1)


@pytest.fixture
def toy():
    """Two queries and six gallery items on the unit circle (the ranking is known)."""
    gallery = _unit([10, 30, 50, 100, 140, 200])
    gallery_labels = np.array([0, 0, 1, 0, 1, 2])
    query = _unit([0, 130])
    query_labels = np.array([0, 1])
    rng = np.random.default_rng(0)
    return {
        "query_images": torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)),
        "gallery_images": rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8),
        "feats_q": query,
        "feats_g": gallery,
        "labels_q": query_labels,
        "labels_g": gallery_labels,
    }


# ------------------------------------------------------------------------------- gallery


def test_retrieval_gallery_axes_and_hit_borders(toy):
    fig = plots.retrieval_gallery(**toy, n_queries=2, k=4, class_names=["cat", "dog", "bird"])
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2 * (4 + 1)
    # query 0 (cat at 0 deg) ranks g0 cat, g1 cat, g2 dog, g3 cat; query 1 (dog at 130 deg)
    # ranks g4 dog, g3 cat, g5 bird, g2 dog
    expected = [[True, True, False, True], [True, False, False, True]]
    for r in range(2):
        for c in range(4):
            ax = fig.axes[r * 5 + 1 + c]
            color = plots.HIT if expected[r][c] else plots.MISS
            assert ax.spines["top"].get_edgecolor() == to_rgba(color)  # same to_rgba: exact
    assert "3/4 hits" in fig.axes[0].get_ylabel() and "cat" in fig.axes[0].get_ylabel()
    assert "2/4 hits" in fig.axes[5].get_ylabel()


def test_retrieval_gallery_shows_the_retrieved_images(toy):
    fig = plots.retrieval_gallery(**toy, query_indices=[1], k=2)
    assert len(fig.axes) == 3
    shown = fig.axes[1].images[0].get_array()
    # g4 ranks first (cos 10 deg vs cos 30 deg for g3: no near-tie); the image is the same
    # float64 uint8 / 255 as the package's: exact, the default rtol=1e-7 is only slack
    np.testing.assert_allclose(shown, toy["gallery_images"][4] / 255.0)


def test_retrieval_gallery_rescales_normalised_images(toy):
    toy["query_images"] = torch.randn(2, 3, 8, 8) * 3  # like eval_transform outputs
    fig = plots.retrieval_gallery(**toy, n_queries=1, k=1)
    shown = np.asarray(fig.axes[0].images[0].get_array())
    assert shown.min() >= 0 and shown.max() <= 1


def test_retrieval_gallery_bad_input(toy):
    with pytest.raises(ValueError, match="k=7"):
        plots.retrieval_gallery(**toy, k=7)
    with pytest.raises(ValueError, match="n_queries"):
        plots.retrieval_gallery(**toy, n_queries=3, k=2)
    bad = dict(toy, labels_g=toy["labels_g"][:5])
    with pytest.raises(ValueError, match="labels_g"):
        plots.retrieval_gallery(**bad)
    bad = dict(toy, gallery_images=toy["gallery_images"][:5])
    with pytest.raises(ValueError, match="gallery_images"):
        plots.retrieval_gallery(**bad, n_queries=2, k=2)
    bad = dict(toy, feats_g=np.ones((6, 3)))
    with pytest.raises(ValueError, match="dimension"):
        plots.retrieval_gallery(**bad, k=2)
    with pytest.raises(ValueError, match="query_indices"):
        plots.retrieval_gallery(**toy, query_indices=[2], k=2)


# ------------------------------------------------------------------------------- projection


def test_embedding_projection_pca_matches_svd():
    g = torch.Generator().manual_seed(0)
    feats_a = torch.randn(20, 5, generator=g)
    feats_b = torch.randn(15, 5, generator=g) + 2.0
    labels_a, labels_b = torch.arange(20) % 3, torch.arange(15) % 3
    fig = plots.embedding_projection(feats_a, feats_b, labels_a, labels_b, method="pca")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    # float64 from the float32 features on, as the package (normalising in float32 first
    # would put ~gamma(8, U32) = 5e-7 into each coordinate, then more through the SVD)
    z = torch.nn.functional.normalize(torch.cat([feats_a, feats_b]).double(), dim=1)
    z = z - z.mean(0)
    _, s, v = torch.linalg.svd(z, full_matrices=False)
    # two float64 SVDs (numpy's, torch's) give coordinates within ~2 s0 ||E|| / gap each
    # (Davis-Kahan, backward error ||E|| <= gamma(N D, U64) s0): check that is below atol, i.e.
    # the first three singular values are apart
    gap = min(s[0] - s[1], s[1] - s[2]).item()
    assert 4 * gamma(z.numel(), U64) * s[0].item() ** 2 / gap < 1e-6
    reference = (z @ v[:2].T).numpy()
    shown = np.concatenate([c.get_offsets() for c in fig.axes[0].collections[:2]])
    for axis in range(2):  # principal components are defined up to sign
        assert abs(reference[0, axis]) > 1e-6  # the sign is read off a value clear of 0
        sign = np.sign(shown[0, axis] * reference[0, axis])
        np.testing.assert_allclose(shown[:, axis], sign * reference[:, axis], atol=1e-6)


def test_embedding_projection_subsamples_and_tsne():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(40, 4, generator=g)
    labels = torch.arange(40) % 4
    fig = plots.embedding_projection(feats, feats + 0.1, labels, labels, max_points=10)
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections) == 20
    pytest.importorskip("sklearn")
    fig = plots.embedding_projection(feats, feats, labels, labels, method="tsne")
    assert len(fig.axes) == 2


def test_embedding_projection_bad_input():
    a, y = torch.randn(6, 4), torch.zeros(6, dtype=torch.long)
    with pytest.raises(ValueError, match="method"):
        plots.embedding_projection(a, a, y, y, method="umap")
    with pytest.raises(ValueError, match="dimension"):
        plots.embedding_projection(a, torch.randn(6, 3), y, y)
    with pytest.raises(ValueError, match="labels_b"):
        plots.embedding_projection(a, a, y, y[:4])
    with pytest.raises(ValueError, match="2 dimensions"):
        plots.embedding_projection(a[0], a, y, y)


# ------------------------------------------------------------------------------- heatmap


def test_heatmap_single_and_panels():
    m = np.arange(6.0).reshape(2, 3)
    fig = plots.heatmap(m, "cost", marks=[2, 0])
    assert len(fig.axes) == 2  # image + colour bar
    # small integers stored as given: exact, the default rtol=1e-7 is only slack
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), m)
    np.testing.assert_allclose(fig.axes[0].collections[0].get_offsets(), [[2, 0], [0, 1]])
    assert [t.get_text() for t in fig.axes[0].texts][:3] == ["0.00", "1.00", "2.00"]
    fig = plots.heatmap([m, 2 * m, 3 * m], ["a", "b", "c"])
    assert len(fig.axes) == 6
    assert [ax.get_title() for ax in fig.axes if ax.images] == ["a", "b", "c"]
    fig = plots.heatmap(m, "named", xticklabels=["a", "b", "c"], yticklabels=["u", "v"])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "b", "c"]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["u", "v"]
    fig = plots.heatmap([m, m, m], "wrapped", ncols=2)
    assert len(fig.axes) == 6  # a 2 x 2 grid less its unused cell, plus 3 colour bars
    rows = sorted({round(ax.get_position().y0, 2) for ax in fig.axes if ax.images})
    assert len(rows) == 2
    fig = plots.heatmap(torch.ones(2, 4, 4), "stack")
    assert len(fig.axes) == 4


def test_heatmap_bad_input():
    with pytest.raises(ValueError, match="dimensions"):
        plots.heatmap(np.ones(3), "x")
    with pytest.raises(ValueError, match="titles"):
        plots.heatmap([np.ones((2, 2))] * 2, ["one"])
    with pytest.raises(ValueError, match="marks"):
        plots.heatmap(np.ones((2, 2)), "x", marks=[0, 2])
    with pytest.raises(ValueError, match="xticklabels"):
        plots.heatmap(np.ones((2, 3)), "x", xticklabels=["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        plots.heatmap(np.full((2, 2), np.nan), "x")


# ------------------------------------------------------------------------------- entropy


def test_entropy_histogram_counts_known_entropies():
    k = 4
    uniform = torch.full((5, k), 1 / k)  # entropy log 4
    one_hot = torch.eye(k)[torch.tensor([0, 1, 2])]  # entropy 0
    fig = plots.entropy_histogram(uniform, one_hot, bins=4)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    before = [p.get_height() for p in ax.containers[0]]
    after = [p.get_height() for p in ax.containers[1]]
    # counts: float64 entropies of exact 0.25 and 0/1 entries: log 4 (+- ~1e-16) lies 0.1%
    # below the top edge, 0 is exactly 0 (the included bottom edge); the line is drawn at the
    # same math.log(k): exact
    assert before == [0, 0, 0, 5] and after == [3, 0, 0, 0]
    assert ax.lines[0].get_xdata()[0] == pytest.approx(math.log(k))
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0] == f"before: mean {math.log(k):.2f}" and legend[1] == "after: mean 0.00"


def test_entropy_histogram_zoom_and_log_counts():
    sharp = torch.tensor([[0.9, 0.05, 0.05], [1.0, 0.0, 0.0]])
    fig = plots.entropy_histogram(sharp, sharp, bins=5, full_range=False, log_counts=True)
    ax = fig.axes[0]
    h = -(0.9 * math.log(0.9) + 2 * 0.05 * math.log(0.05))
    assert ax.get_xlim()[1] < math.log(3) and not ax.lines  # zoomed: log K is off the axis
    # p is float32 (0.9, 0.05 rounded): h moves by <= u32 sum p |log p + 1| ~ 1.0 u32, i.e.
    # 2.6 u32 = 1.5e-7 relative; the rest is float64: under the default rel=1e-6
    assert ax.containers[0][-1].get_x() + ax.containers[0][-1].get_width() == pytest.approx(
        h * 1.001)
    assert ax.get_yscale() == "log"


def test_entropy_histogram_bad_input():
    p = torch.softmax(torch.randn(5, 3), dim=1)
    with pytest.raises(ValueError, match="K=3"):
        plots.entropy_histogram(p, torch.softmax(torch.randn(5, 4), dim=1))
    with pytest.raises(ValueError, match="sum to 1"):
        plots.entropy_histogram(p * 2, p)
    with pytest.raises(ValueError, match="negative"):
        plots.entropy_histogram(p - 0.5, p)
    with pytest.raises(ValueError, match="2 dimensions"):
        plots.entropy_histogram(p[0], p)


# ------------------------------------------------------------------------------- curves


def _history():
    history = []
    for epoch in range(4):
        losses = {"iw": 5.0 - epoch, "total": 5.0 - epoch}
        if epoch >= 2:
            losses.update(cw=1.0 / epoch, se=0.5)
        entry = {"epoch": epoch, "phase": "warmup" if epoch < 2 else "cluster", "losses": losses}
        if epoch in (1, 3):
            entry["metrics"] = {"A->B": {"P@5": 10.0 * epoch, "mAP": 1.0},
                                "B->A": {"P@5": 20.0 * epoch, "mAP": 2.0}}
        history.append(entry)
    return history


def test_training_curves_panels_and_data():
    fig = plots.training_curves(_history())
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3 + 1  # iw, cw, se, then P@K
    iw, cw = fig.axes[0].lines[0], fig.axes[1].lines[0]
    # the plotted values are the history's own Python floats (5.0 - epoch, 1.0 / epoch,
    # 10.0 * epoch): the same operations, exact; the default rtol=1e-7 is only slack
    np.testing.assert_allclose(iw.get_ydata(), [5, 4, 3, 2])
    np.testing.assert_allclose(cw.get_ydata(), [np.nan, np.nan, 0.5, 1 / 3])
    pk = fig.axes[3]
    assert pk.get_title() == "P@5"
    # two evaluations make no curve: one group of bars per evaluation, per direction
    assert [t.get_text() for t in pk.get_xticklabels()] == ["2 epochs", "4 epochs"]
    np.testing.assert_allclose([bar.get_height() for bar in pk.containers[1]], [20, 60])
    more = _history()
    more[0]["metrics"] = more[1]["metrics"]
    curve = plots.training_curves(more).axes[3]
    np.testing.assert_allclose(curve.lines[1].get_xdata(), [1, 2, 4])
    no_metrics = [{k: v for k, v in e.items() if k != "metrics"} for e in _history()]
    assert len(plots.training_curves(no_metrics).axes) == 3


def test_training_curves_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        plots.training_curves([])
    with pytest.raises(ValueError, match="history\\[0\\]"):
        plots.training_curves([{"loss": 1.0}])


# ------------------------------------------------------------------------------- bars


def test_precision_bars_heights():
    reports = {
        "IW": {"A->B": {"P@5": 40.0, "mAP": 1.0}, "B->A": {"P@5": 30.0, "mAP": 1.0}},
        "Full": {"A->B": {"P@5": 55.0, "mAP": 1.0}, "B->A": {"P@5": 50.0, "mAP": 1.0}},
    }
    fig = plots.precision_bars(reports, reference=10.0)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    # bars from 0: their heights are the report's floats, unchanged: exact
    assert [b.get_height() for b in ax.containers[0]] == [40.0, 55.0]
    assert [b.get_height() for b in ax.containers[1]] == [30.0, 50.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["IW", "Full"]
    assert ax.get_ylabel() == "P@5 (%)"
    with pytest.raises(ValueError, match="P@50"):
        plots.precision_bars(reports, "P@50")
    with pytest.raises(ValueError, match="non-empty"):
        plots.precision_bars({})


# ------------------------------------------------------------------------------- clusters


def test_cluster_montage_rows_purity_and_borders():
    images = np.zeros((7, 4, 4, 3), dtype=np.uint8)
    clusters = np.array([0, 0, 0, 1, 1, 2, 0])
    classes = np.array([5, 5, 6, 7, 7, 8, 5])
    fig = plots.cluster_montage(images, clusters, classes, n_clusters=2, n_per_cluster=4)
    assert isinstance(fig, Figure) and len(fig.axes) == 2 * 4
    assert fig.axes[0].get_ylabel() == "cluster 0\n4 images\n75% 5"  # the largest first
    assert fig.axes[4].get_ylabel() == "cluster 1\n2 images\n100% 7"
    colors = [fig.axes[c].spines["left"].get_edgecolor() for c in range(4)]
    # same to_rgba of the same colours: exact
    assert colors == [to_rgba(plots.HIT)] * 2 + [to_rgba(plots.MISS), to_rgba(plots.HIT)]
    assert not fig.axes[6].axison  # cluster 1 has only two members
    fig = plots.cluster_montage(images, clusters, clusters=[2], n_per_cluster=3)
    assert len(fig.axes) == 3 and fig.axes[0].get_ylabel() == "cluster 2\n1 image"


def test_cluster_montage_bad_input():
    images = np.zeros((3, 4, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match="class_labels"):
        plots.cluster_montage(images, [0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="hold no image"):
        plots.cluster_montage(images, [0, 1, 1], clusters=[4])
    with pytest.raises(ValueError, match="images"):
        plots.cluster_montage(images[:2], [0, 1, 1])


def test_method_overview_is_legible() -> None:
    fig = plots.method_overview()
    assert fig.get_figwidth() <= 7.6
    sizes = [t.get_fontsize() for ax in fig.axes for t in ax.texts]
    assert sizes and min(sizes) >= 9


# ------------------------------------------------------------------------------- refusals


def _refusals():
    """(call, the message users see today): every input plots.py refuses, verbatim."""
    z, y = np.eye(3), np.array([0, 1, 2])
    img = np.zeros((3, 4, 4))
    p = np.full((2, 3), 1 / 3)
    hist = [{"epoch": 0, "losses": {"iw": 1.0}}]
    report = {"A->B": {"P@50": 1.0}, "B->A": {"P@50": 2.0}}
    gallery = dict(query_images=img, gallery_images=img, feats_q=z, feats_g=z, labels_q=y,
                   labels_g=y, k=2, n_queries=2)
    proj = dict(feats_a=z, feats_b=z, labels_a=y, labels_b=y)
    return [
        (lambda: plots.retrieval_gallery(**{**gallery, "feats_q": [["x"]]}),
         "feats_q must be an array or tensor of numbers (could not convert string to float: "
         "'x')"),
        (lambda: plots.retrieval_gallery(**{**gallery, "feats_q": z[0]}),
         "feats_q must have 2 dimensions, got shape (3,)"),
        (lambda: plots.retrieval_gallery(**{**gallery, "feats_q": z * np.nan}),
         "feats_q contains NaN or inf; pass finite values"),
        (lambda: plots.retrieval_gallery(**{**gallery, "feats_q": np.zeros((0, 3)),
                                            "labels_q": y[:0]}),
         "feats_q is empty (shape (0, 3)); pass at least one row"),
        (lambda: plots.retrieval_gallery(**{**gallery, "labels_g": y[:2]}),
         "labels_g has 2 entries but feats_g has 3 rows; pass one label per feature row"),
        (lambda: plots.retrieval_gallery(**{**gallery, "feats_g": np.eye(3, 2)}),
         "feats_q has dimension 3 and feats_g 2; both domains must be encoded by the same "
         "model"),
        (lambda: plots.retrieval_gallery(**{**gallery, "k": 4}),
         "k=4 must lie in [1, 3] (the gallery size)"),
        (lambda: plots.retrieval_gallery(**{**gallery, "n_queries": 0}),
         "n_queries=0 must lie in [1, 3] (the queries)"),
        (lambda: plots.retrieval_gallery(**gallery, query_indices=[3]),
         "query_indices=[3] must be non-empty and lie in [0, 3)"),
        (lambda: plots.retrieval_gallery(**{**gallery, "query_images": np.zeros((3, 4))}),
         "query_images must be (N, C, H, W), (N, H, W, C) or (N, H, W), got shape (3, 4)"),
        (lambda: plots.retrieval_gallery(**{**gallery, "gallery_images": img[:2]}),
         "gallery_images holds 2 images but its features have 3 rows; pass the images in the "
         "order of the features"),
        (lambda: plots.retrieval_gallery(**{**gallery, "gallery_images": [np.zeros(4)] * 3}),
         "gallery_images: each image must be (H, W) or (H, W, 3), got (4,)"),
        (lambda: plots.cluster_montage(img[:0], y[:0]),
         "cluster_labels is empty; pass one cluster id per image"),
        (lambda: plots.cluster_montage(img, y, y[:2]),
         "class_labels has 2 entries but cluster_labels 3; pass one of each per image"),
        (lambda: plots.cluster_montage(img, y, n_per_cluster=0),
         "n_per_cluster=0 must be >= 1"),
        (lambda: plots.cluster_montage(img, y, n_clusters=0), "n_clusters=0 must be >= 1"),
        (lambda: plots.cluster_montage(img, y, clusters=[5]),
         "clusters [5] hold no image; pick from [0, 1, 2]"),
        (lambda: plots.embedding_projection(**proj, method="umap"),
         "method='umap': use 'pca' or 'tsne'"),
        (lambda: plots.embedding_projection(**proj, domain_names=("A",)),
         "domain_names=('A',): give two names, A's and B's"),
        (lambda: plots.embedding_projection(**proj, max_points=0),
         "max_points=0 must be >= 1"),
        (lambda: plots.embedding_projection(z[:1], z[:1], y[:1], y[:1]),
         "need at least 3 points to project, got 2"),
        (lambda: plots.heatmap(np.zeros((0, 2)), "t"),
         "matrix is empty; pass at least one non-empty 2-D matrix"),
        (lambda: plots.heatmap([z, z], ["t"]), "got 2 matrices but 1 titles; give one each"),
        (lambda: plots.heatmap(z, "t", marks=[0, 1, 3]),
         "marks must hold one column index in [0, 3) per row of the 3x3 matrix, got [0, 1, 3]"),
        (lambda: plots.heatmap(z, "t", yticklabels=["a"]),
         "yticklabels has 1 names but the matrix has 3 rows; give one per row"),
        (lambda: plots.heatmap(z, "t", ncols=0), "ncols=0 must be >= 1"),
        (lambda: plots.heatmap([z[0]], "t"), "matrix[0] must have 2 dimensions, got shape (3,)"),
        (lambda: plots.entropy_histogram(p[:, :1], p),
         "p_before must be (N, K) with N >= 1 and K >= 2, got shape (2, 1)"),
        (lambda: plots.entropy_histogram(-p, p),
         "p_before has negative entries; pass probabilities (a softmax), not logits"),
        (lambda: plots.entropy_histogram(p, 2 * p),
         "the rows of p_after must sum to 1 (error 1); pass soft assignments"),
        (lambda: plots.entropy_histogram(p, np.full((2, 2), 0.5)),
         "p_before has K=3 clusters and p_after K=2; compare assignments to the same number "
         "of clusters"),
        (lambda: plots.entropy_histogram(p, p, labels=("a",)),
         "labels=('a',): give two names"),
        (lambda: plots.entropy_histogram(p, p, bins=0), "bins=0 must be >= 1"),
        (lambda: plots.training_curves("history"),
         "history must be a non-empty list of per-epoch dicts (TrainResult.history), got str"),
        (lambda: plots.training_curves([{"epoch": 0}]),
         "history[0] must be a dict with 'epoch' and 'losses' (as train() writes), got "
         "{'epoch': 0}"),
        (lambda: plots.training_curves([{"epoch": 0, "losses": {"total": 1.0}}]),
         "history records no loss terms and no metrics: nothing to plot"),
        (lambda: plots.precision_bars({}),
         "reports must be a non-empty dict: run name -> retrieval report"),
        (lambda: plots.precision_bars({"IW": {}}),
         "reports['IW'] must be a retrieval report dict, got {}"),
        (lambda: plots.precision_bars({"IW": report}, "mAP"),
         "reports['IW'] has no 'mAP' for 'A->B'; pass reports from retrieval_report with that "
         "K, or another metric"),
        (lambda: plots.training_curves(hist), None),  # accepted: the fixtures are valid
    ]


@pytest.mark.parametrize("case", range(len(_refusals())))
def test_every_refusal_keeps_its_message(case):
    call, message = _refusals()[case]
    if message is None:
        assert isinstance(call(), Figure)
        return
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value) == message
