"""Tests for the folder loader, transforms and loaders (ucdir_lite.datasets)."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ucdir_lite import glyphs
from ucdir_lite.datasets import (
    DomainDataset,
    TwoViews,
    common_classes,
    eval_transform,
    load_image,
    make_loader,
    to_rgb,
    train_transform,
)


@pytest.fixture(scope="module")
def glyph_root(tmp_path_factory):
    return glyphs.generate_benchmark(
        tmp_path_factory.mktemp("glyphs") / "g", num_classes=4, images_per_class=6,
        domains=("clipart", "sketch"), image_size=16, progress=False, workers=1,
    )


def _save(path, mode, size=(20, 12), fmt=None, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    channels = {"L": 1, "RGB": 3, "RGBA": 4}.get(mode, 1)
    data = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8).squeeze()
    img = Image.fromarray(data, "L" if mode == "P" else mode)
    if mode == "P":
        img = img.convert("P")
    img.save(path, format=fmt, **kw)


@pytest.fixture
def office_root(tmp_path):
    """A small Office-Home-shaped tree: spaces in names, mixed formats and colour modes."""
    root = tmp_path / "OfficeHome"
    _save(root / "Art" / "Alarm_Clock" / "00001.jpg", "RGB")
    _save(root / "Art" / "Alarm_Clock" / "00002.PNG", "L")
    _save(root / "Art" / "Bike" / "00001.png", "RGBA")
    _save(root / "Art" / "Bike" / "00002.gif", "P", transparency=0)
    _save(root / "Art" / "Bike" / "00003.bmp", "RGB")
    _save(root / "Real World" / "Alarm_Clock" / "a.webp", "RGB")
    _save(root / "Real World" / "Bike" / "b.jpeg", "RGB")
    _save(root / "Real World" / "Calculator" / "c.jpg", "RGB")
    return root


# --------------------------------------------------------------------------- folder dataset
def test_generated_tree(glyph_root):
    ds = DomainDataset(glyph_root, "clipart")
    assert ds.classes == sorted(glyphs.class_names(4))
    assert len(ds) == 24 and ds.labels.dtype == torch.long
    assert ds.labels.tolist() == sorted(ds.labels.tolist())
    assert torch.bincount(ds.labels).tolist() == [6, 6, 6, 6]
    img, label, index = ds[7]
    assert (img.mode, img.size, label, index) == ("RGB", (16, 16), 1, 7)
    assert ds.samples[7][0].parent.name == ds.classes[1]


def test_same_class_list_gives_shared_label_ids(glyph_root):
    names = glyphs.class_names(4)[::-1]  # any order: label = position in the list
    a = DomainDataset(glyph_root, "clipart", classes=names)
    b = DomainDataset(glyph_root, "sketch", classes=names)
    for ds in (a, b):
        for path, label in ds.samples:
            assert path.parent.name == names[label]
    a2 = DomainDataset(glyph_root, "clipart", classes=names[:2])
    assert len(a2) == 12 and set(a2.labels.tolist()) == {0, 1}


def test_office_home_shaped_tree(office_root):
    art = DomainDataset(office_root, "Art")
    assert art.classes == ["Alarm_Clock", "Bike"]
    assert [p.name for p, _ in art.samples] == ["00001.jpg", "00002.PNG", "00001.png",
                                               "00002.gif", "00003.bmp"]
    for i in range(len(art)):
        img, label, index = art[i]
        assert img.mode == "RGB" and img.size == (20, 12) and index == i
    real = DomainDataset(office_root, "Real World", classes=art.classes)
    assert len(real) == 2 and real.labels.tolist() == [0, 1]


def test_transparent_pixels_become_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red ...
    rgba[:2, :, 3] = 255  # ... opaque in the top half only
    for cls in ("a", "b"):
        (tmp_path / "d" / cls).mkdir(parents=True)
        Image.fromarray(rgba, "RGBA").save(tmp_path / "d" / cls / "x.png")
    img = np.asarray(DomainDataset(tmp_path, "d")[0][0])
    assert (img[:2] == [255, 0, 0]).all() and (img[2:] == 255).all()


# Every PIL mode becomes RGB with the pixel values computed here by hand: 16-bit grey scaled
# by 255/65535 (v / 257), float grey in [0, 1] scaled by 255, CMYK as (255 - C)(255 - K) / 255,
# and a pixel of opacity a composited onto white as 255 - (255 - c) a / 255 (all rounded).
def _palette_image(transparency) -> Image.Image:
    img = Image.new("P", (3, 1))
    img.putpalette([10, 20, 30, 200, 100, 50, 0, 0, 0])
    img.putdata([0, 1, 2])
    img.info["transparency"] = transparency
    return img


MODE_CASES = {
    "I;16": (lambda: Image.fromarray(np.array([[0, 257, 1000, 32896, 65535]], np.uint16)),
             [0, 1, 4, 128, 255]),  # 1000 / 257 = 3.89
    "I": (lambda: Image.fromarray(np.array([[0, 257, 1000, 65535, 70000, -5]], np.int32)),
          [0, 1, 4, 255, 255, 0]),  # read as 16-bit, out-of-range values clipped
    "F": (lambda: Image.fromarray(np.array([[0.0, 0.2, 0.25, 1.0, 1.5, -0.2]], np.float32)),
          [0, 51, 64, 255, 255, 0]),  # 0.25 * 255 = 63.75
    "CMYK": (lambda: Image.fromarray(np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [128, 0, 0, 128],
                                                [0, 0, 0, 255]]], np.uint8), "CMYK"),
             [[255, 255, 255], [0, 255, 255], [63, 127, 127], [0, 0, 0]]),  # 127 * 127 / 255
    "P, one transparent index": (lambda: _palette_image(0),
                                 [[255, 255, 255], [200, 100, 50], [0, 0, 0]]),
    "P, alpha per index": (lambda: _palette_image(bytes([0, 255, 51])),
                           [[255, 255, 255], [200, 100, 50], [204, 204, 204]]),  # 255 * 0.8
    "LA": (lambda: Image.fromarray(np.array([[[100, 51], [0, 0], [7, 255]]], np.uint8), "LA"),
           [224, 255, 7]),  # 255 - 155 * 0.2
    "RGBA": (lambda: Image.fromarray(np.array([[[255, 0, 0, 255], [0, 0, 0, 0],
                                                [0, 100, 255, 51]]], np.uint8), "RGBA"),
             [[255, 0, 0], [255, 255, 255], [204, 224, 255]]),
}


@pytest.mark.parametrize("case", list(MODE_CASES))
def test_every_pil_mode_converts_to_the_right_rgb(case):
    make, expected = MODE_CASES[case]
    img = make()
    assert img.mode == case.split(",")[0]
    rgb = to_rgb(img)
    expected = np.array(expected, np.uint8)
    if expected.ndim == 1:  # grey: the same value in the three channels
        expected = np.repeat(expected[:, None], 3, axis=1)
    assert rgb.mode == "RGB" and rgb.size == img.size
    np.testing.assert_array_equal(np.asarray(rgb)[0], expected)


def test_16_bit_png_keeps_its_grey_levels(tmp_path):
    """A 16-bit greyscale ramp saved as PNG loads as a ramp (it used to load as white)."""
    ramp = (np.arange(256, dtype=np.uint32) * 257).astype(np.uint16)[None, :]
    path = tmp_path / "ramp.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as img:
        assert img.mode in ("I;16", "I")
    np.testing.assert_array_equal(np.asarray(load_image(path))[0, :, 0], np.arange(256))


def test_in_memory_matches_lazy(glyph_root):
    lazy = DomainDataset(glyph_root, "sketch", transform=eval_transform(16))
    cached = DomainDataset(glyph_root, "sketch", transform=eval_transform(16), in_memory=True)
    for i in (0, 5, 23):
        # the same decoded image through the same transform, in this process: bit-identical
        assert torch.equal(lazy[i][0], cached[i][0])


def test_common_classes_warns_about_dropped_ones(office_root):
    with pytest.warns(UserWarning, match="Calculator") as record:
        shared = common_classes(office_root, ["Art", "Real World"])
    assert shared == ["Alarm_Clock", "Bike"]
    assert len(record) == 1 and "Real World" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert common_classes(office_root, ["Art"]) == ["Alarm_Clock", "Bike"]


def test_non_image_files_are_skipped_with_one_warning(office_root):
    (office_root / "Art" / "Bike" / "notes.txt").write_text("hello")
    (office_root / "Art" / "Bike" / "Thumbs.db").write_bytes(b"\0")
    (office_root / "Art" / "Bike" / ".DS_Store").write_bytes(b"\0")
    with pytest.warns(UserWarning, match="notes.txt") as record:
        ds = DomainDataset(office_root, "Art")
    assert len(record) == 1 and "Thumbs.db" in str(record[0].message)
    assert len(ds) == 5


def test_corrupt_image_raises_or_is_skipped(office_root):
    bad = office_root / "Art" / "Bike" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(OSError, match="broken.png"):
        DomainDataset(office_root, "Art")
    with pytest.warns(UserWarning, match="broken.png"):
        ds = DomainDataset(office_root, "Art", skip_bad_images=True)
    assert len(ds) == 5 and all(p != bad for p, _ in ds.samples)


def test_truncated_jpeg_fails_at_load_naming_the_file(office_root):
    good = office_root / "Art" / "Bike" / "00001.jpg"
    _save(good, "RGB", size=(64, 64))
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    ds = DomainDataset(office_root, "Art")  # verify() cannot see a cut JPEG
    i = next(i for i, (p, _) in enumerate(ds.samples) if p == good)
    with pytest.raises(OSError, match="00001.jpg"):
        ds[i]
    with pytest.warns(UserWarning, match="00001.jpg"):
        ds = DomainDataset(office_root, "Art", skip_bad_images=True)
    assert good not in [p for p, _ in ds.samples]


def test_missing_and_degenerate_folders(tmp_path, office_root):
    with pytest.raises(FileNotFoundError, match="ucdir-lite data generate"):
        DomainDataset(tmp_path / "nowhere", "Art")
    with pytest.raises(FileNotFoundError, match="Real World"):  # lists the domains there are
        DomainDataset(office_root, "Product")
    with pytest.raises(ValueError, match="not found"):
        DomainDataset(office_root, "Art", classes=["Alarm_Clock", "Calculator"])
    (office_root / "Empty" / "a").mkdir(parents=True)
    (office_root / "Empty" / "b").mkdir()
    with pytest.raises(ValueError, match="no images"):
        DomainDataset(office_root, "Empty")
    _save(office_root / "Single" / "only" / "x.png", "RGB")
    with pytest.raises(ValueError, match="at least 2 classes"):
        DomainDataset(office_root, "Single")


# ------------------------------------------------------------------------------- transforms
def test_train_transform_shapes_and_two_views():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), np.uint8))
    torch.manual_seed(0)
    q, k = TwoViews(train_transform(16))(img)
    for x in (q, k):
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert not torch.equal(q, k)  # two random augmentations: differ far beyond rounding
    plain = train_transform(16, hflip=False, blur=False)
    assert plain(img).shape == (3, 16, 16)
    with pytest.raises(ValueError, match="crop_scale"):
        train_transform(16, crop_scale=(0.0, 1.0))


def test_eval_transform_is_deterministic_and_normalised():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (24, 40, 3), np.uint8))
    t = eval_transform(16)
    torch.manual_seed(0)
    a = t(img)
    torch.manual_seed(1)
    b = t(img)
    # the same deterministic transform twice, in this process: bit-identical
    assert a.shape == (3, 16, 16) and a.dtype == torch.float32 and torch.equal(a, b)
    white = eval_transform(16)(Image.new("RGB", (16, 16), (255, 255, 255)))
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    # 255 / 255 = 1 exactly, then (1 - mean) / std in float32 on both sides: they differ by at
    # most 2 gamma(2) |expected| < 1e-6 (if the ops are fused or reordered): atol 1e-5 is above
    # it, with no default rtol=1e-5 on top
    assert torch.allclose(white[:, 0, 0], expected, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------- loaders
def test_loader_batches_and_reproducible_order(glyph_root):
    ds = DomainDataset(glyph_root, "clipart", transform=TwoViews(train_transform(16)))

    def epoch(seed):
        torch.manual_seed(123)  # augmentations draw from the global generator (0 workers)
        loader = make_loader(ds, 10, train=True, seed=seed, num_workers=0)
        return [(views, idx) for views, _, idx in loader]

    a, b, c = epoch(0), epoch(0), epoch(1)
    assert len(a) == 2  # 24 images, batch 10, drop_last
    (q, k), idx = a[0]
    assert q.shape == k.shape == (10, 3, 16, 16) and idx.dtype == torch.long
    for (views_a, idx_a), (views_b, idx_b) in zip(a, b, strict=True):
        # the same seeded augmentations, in this process, same threads: bit-identical
        assert torch.equal(idx_a, idx_b) and torch.equal(views_a[0], views_b[0])
    order = [torch.cat([i for _, i in run]).tolist() for run in (a, c)]
    assert order[0] != order[1]  # another seed, another order
    assert order[0] != list(range(20))  # shuffled

    evaluation = make_loader(ds, 10, train=False)
    assert [len(i) for _, _, i in evaluation] == [10, 10, 4]


def test_loader_with_a_worker_is_reproducible(glyph_root):
    ds = DomainDataset(glyph_root, "sketch", transform=train_transform(16), in_memory=True)

    def first_batch():
        loader = make_loader(ds, 8, train=True, seed=5, num_workers=1)
        x, _, idx = next(iter(loader))
        return x, idx

    (x1, i1), (x2, i2) = first_batch(), first_batch()
    # both batches come from one worker process seeded alike (a worker runs torch on one
    # thread): the same computation, bit-identical
    assert torch.equal(i1, i2) and torch.equal(x1, x2)


def test_fewer_images_than_batch_size(glyph_root):
    ds = DomainDataset(glyph_root, "clipart")
    with pytest.raises(ValueError, match=r"'clipart' has 24 images.*batch_size=32"):
        make_loader(ds, 32, train=True)
    assert len(make_loader(ds, 32, train=False)) == 1
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(ds, 0, train=False)
