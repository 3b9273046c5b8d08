"""Tests for the generated glyph benchmark (ucdir_lite.glyphs)."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ucdir_lite import glyphs

from _tolerances import gamma

TINY = dict(num_classes=3, images_per_class=4, domains=("clipart", "quickdraw"), image_size=16)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _generate(root, **kw):
    params = {**TINY, "progress": False, "workers": 1, **kw}
    return glyphs.generate_benchmark(root, **params)


# ------------------------------------------------------------------------------ determinism
def test_same_seed_gives_identical_bytes_other_seed_differs(tmp_path):
    a = _files(_generate(tmp_path / "a", seed=3))
    b = _files(_generate(tmp_path / "b", seed=3))
    c = _files(_generate(tmp_path / "c", seed=4))
    # the same seeded float computation (numpy, scipy, PIL; no threaded reductions) twice on
    # this machine: bit-identical bytes are owed, here and in the next two tests
    assert a == b
    assert a.keys() == c.keys()
    images = [k for k in a if k.endswith(".png")]
    assert sum(a[k] != c[k] for k in images) == len(images)


def test_process_pool_gives_the_same_bytes(tmp_path):
    serial = _files(_generate(tmp_path / "serial", workers=1))
    pooled = _files(_generate(tmp_path / "pooled", workers=2))
    assert serial == pooled


def test_a_domain_does_not_depend_on_which_other_domains_are_generated(tmp_path):
    both = _generate(tmp_path / "both")
    one = _generate(tmp_path / "one", domains=("quickdraw",))
    for p in (one / "quickdraw").rglob("*.png"):
        assert p.read_bytes() == (both / p.relative_to(one)).read_bytes()


# ------------------------------------------------------------------------- counts, manifest
def test_layout_counts_and_manifest(tmp_path):
    root = _generate(tmp_path / "g", seed=7)
    manifest = glyphs.read_manifest(root)
    names = glyphs.class_names(3)
    assert manifest["generator_version"] == glyphs.GENERATOR_VERSION
    assert manifest["params"] == {
        "num_classes": 3, "images_per_class": 4, "domains": ["clipart", "quickdraw"],
        "image_size": 16, "seed": 7, "imbalance": 0.0,
    }
    assert sorted(p.name for p in root.iterdir()) == ["clipart", "manifest.json", "quickdraw"]
    for domain in ("clipart", "quickdraw"):
        assert sorted(p.name for p in (root / domain).iterdir()) == sorted(names)
        for name in names:
            files = sorted(p.name for p in (root / domain / name).iterdir())
            assert files == ["0000.png", "0001.png", "0002.png", "0003.png"]
            assert manifest["counts"][domain][name] == 4
    assert manifest["num_images"] == 24
    # the checksum covers the file list and the bytes of every file
    lines = "".join(
        f"{rel}\t{hashlib.sha256(data).hexdigest()}\n"
        for rel, data in sorted(_files(root).items()) if rel != "manifest.json"
    )
    assert manifest["files_sha256"] == hashlib.sha256(lines.encode()).hexdigest()
    assert manifest["classes"] == {n: glyphs.CHARS[n] for n in names}


def test_imbalance_is_a_geometric_decay(tmp_path):
    assert glyphs.class_counts(4, 10) == [10, 10, 10, 10]
    # rounded float64 powers: 16 * 0.25 ** (c / 4) = 16, 11.3, 8, 5.7, 4 (below: 0.2; 8, 5.7,
    # 4) lie >= 0.16 from a rounding boundary, far beyond float64 error
    counts = glyphs.class_counts(5, 16, imbalance=0.75)
    assert counts == [16, 11, 8, 6, 4]  # 16 * 0.25 ** (c / 4)
    assert glyphs.class_counts(3, 2, imbalance=0.9)[-1] == 1  # never zero
    root = _generate(tmp_path / "imb", num_classes=3, images_per_class=8, imbalance=0.5)
    manifest = glyphs.read_manifest(root)
    for domain in TINY["domains"]:
        on_disk = [len(list((root / domain / n).iterdir())) for n in glyphs.class_names(3)]
        in_manifest = [manifest["counts"][domain][n] for n in glyphs.class_names(3)]
        assert on_disk == [8, 6, 4] == in_manifest
    with pytest.raises(ValueError, match="imbalance"):
        glyphs.class_counts(3, 8, imbalance=1.0)


def test_image_size_option(tmp_path):
    root = _generate(tmp_path / "s", image_size=24, num_classes=2, images_per_class=1)
    with Image.open(next(root.rglob("*.png"))) as img:
        assert img.size == (24, 24) and img.mode == "RGB"
    img = glyphs.render_image("photo", "sym_heart", 0, image_size=40)
    assert img.size == (40, 40) and img.mode == "RGB"
    with pytest.raises(ValueError, match="image_size"):
        glyphs.render_image("photo", "sym_heart", 0, image_size=4)


def test_bad_arguments_name_the_limit(tmp_path):
    with pytest.raises(ValueError, match=str(glyphs.MAX_CLASSES)):
        glyphs.generate_benchmark(tmp_path / "x", num_classes=glyphs.MAX_CLASSES + 1)
    with pytest.raises(ValueError, match="painting"):
        glyphs.generate_benchmark(tmp_path / "x", domains=("painting",))
    assert glyphs.MAX_CLASSES >= 30
    assert len(set(glyphs.CHARS.values())) == glyphs.MAX_CLASSES
    for name, _ in glyphs.CLASSES:  # filesystem-safe ASCII folder names
        assert name.isascii() and name.replace("_", "").isalnum()


# ------------------------------------------------------------------- missing-glyph detection
def test_missing_glyph_detector():
    sailboat = "\u26f5"  # no font matplotlib ships has it
    assert glyphs.font_has_glyph("DejaVuSans.ttf", "\u2665")
    assert not glyphs.font_has_glyph("DejaVuSans.ttf", sailboat)
    assert glyphs.fonts_for(sailboat) == ()
    # the rendering check alone (ignoring the cmap) recognises the .notdef box
    assert glyphs.renders_as_notdef("DejaVuSans.ttf", sailboat)
    assert glyphs.renders_as_notdef("STIXGeneral.ttf", sailboat)
    assert not glyphs.renders_as_notdef("DejaVuSans.ttf", "\u2665")
    # the Computer Modern fonts: ASCII only, although their cmap maps some other code points
    assert glyphs.font_has_glyph("cmr10.ttf", "A")
    assert not glyphs.font_has_glyph("cmr10.ttf", "\u00a7")
    assert glyphs.fonts_for("A")[-1].startswith("cm")
    assert not any(f.startswith("cm") for f in glyphs.fonts_for("\u2665"))


def test_every_class_has_a_font_and_a_missing_one_is_rejected(tmp_path, monkeypatch):
    for name, char in glyphs.CLASSES:
        assert glyphs.fonts_for(char), name
    monkeypatch.setitem(glyphs.CHARS, "sym_heart", "\u26f5")
    with pytest.raises(ValueError, match="no shipped font"):
        _generate(tmp_path / "m")
    assert not (tmp_path / "m").exists()


# --------------------------------------------------------------- domains are sampled apart
def test_no_two_domains_share_a_source_sample():
    keys = {}
    for domain in glyphs.DOMAINS:
        keys[domain] = {
            (p.class_name, p.font, p.scale, p.angle, p.shift)
            for name in glyphs.class_names(5)
            for p in (glyphs.image_parameters(domain, name, i) for i in range(20))
        }
        assert len(keys[domain]) == 100
    for a in glyphs.DOMAINS:
        for b in glyphs.DOMAINS:
            if a < b:
                assert not keys[a] & keys[b], (a, b)


def test_image_parameters_are_what_the_generator_draws(tmp_path, monkeypatch):
    drawn = []
    original = glyphs._draw_params

    def spy(rng, domain, class_name, index):
        params = original(rng, domain, class_name, index)
        drawn.append(params)
        return params

    monkeypatch.setattr(glyphs, "_draw_params", spy)
    _generate(tmp_path / "p", seed=5)
    monkeypatch.undo()
    assert len(drawn) == 24
    for p in drawn:
        # the same seeded draws, in this process: exact
        assert glyphs.image_parameters(p.domain, p.class_name, p.index, seed=5) == p


def test_class_list_has_no_mirror_pairs():
    """A horizontal flip must not turn a class into another one (b/d would fail)."""

    def mask(char):
        m = glyphs._render_master("DejaVuSans.ttf", char)
        s = 28 / max(m.size)
        m = m.resize((max(1, round(m.width * s)), max(1, round(m.height * s))))
        out = Image.new("L", (32, 32), 0)
        out.paste(m, ((32 - m.width) // 2, (32 - m.height) // 2))
        return np.asarray(out, np.float32) / 255

    def iou(a, b):
        return np.minimum(a, b).sum() / np.maximum(a, b).sum()

    # each float32 sum of 32 * 32 terms in [0, 1] errs by gamma(1024) relative, the ratio by
    # ~2 gamma(1025): the thresholds must hold by more than that in any summation order
    tol = 2 * gamma(32 * 32 + 1)
    assert iou(mask("b")[:, ::-1], mask("d")) > 0.8 + tol  # the check can fail
    masks = [mask(c) for _, c in glyphs.CLASSES]
    for i, a in enumerate(masks):
        for j, b in enumerate(masks):
            if i != j:
                assert iou(a[:, ::-1], b) < 0.8 - tol, (glyphs.CLASSES[i], glyphs.CLASSES[j])
                assert iou(a, b) < 0.8 - tol, (glyphs.CLASSES[i], glyphs.CLASSES[j])


# --------------------------------------------------------------- safe writing, ensure
def test_overwrite_rules(tmp_path):
    root = _generate(tmp_path / "g")
    stamp = (root / "manifest.json").stat().st_mtime_ns
    assert _generate(root) == root  # same parameters: nothing to do
    assert (root / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="overwrite=True"):
        _generate(root, seed=1)
    _generate(root, seed=1, overwrite=True)
    assert glyphs.read_manifest(root)["params"]["seed"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["g"]  # no temporary folders left

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a ucdir-lite glyph benchmark"):
        _generate(foreign, overwrite=True)
    assert (foreign / "thesis.txt").read_text() == "keep me"

    empty = tmp_path / "empty"
    empty.mkdir()
    assert json.loads((_generate(empty) / "manifest.json").read_text())["num_images"] == 24


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def boom(task):
        if calls:
            raise KeyboardInterrupt
        calls.append(task)
        return original(task)

    original = glyphs._write_class
    monkeypatch.setattr(glyphs, "_write_class", boom)
    with pytest.raises(KeyboardInterrupt):
        _generate(tmp_path / "g")
    assert list(tmp_path.iterdir()) == []


def test_ensure_benchmark_caches_by_parameters(tmp_path, monkeypatch):
    monkeypatch.setenv("UCDIR_DATA", str(tmp_path / "cache"))
    params = dict(TINY, seed=2)
    root = glyphs.ensure_benchmark(progress=False, workers=1, **params)
    assert root.parent == tmp_path / "cache"
    assert root.name.startswith(f"glyphs-v{glyphs.GENERATOR_VERSION}-")
    assert glyphs.read_manifest(root)["params"]["seed"] == 2

    def fail(*args, **kwargs):
        raise AssertionError("should not regenerate")

    monkeypatch.setattr(glyphs, "generate_benchmark", fail)
    assert glyphs.ensure_benchmark(progress=False, **params) == root  # returns at once
    assert glyphs.default_root(**dict(params, seed=3)) != root
    monkeypatch.undo()

    # an explicit root holding other parameters is regenerated in place
    monkeypatch.setenv("UCDIR_DATA", str(tmp_path / "cache"))
    again = glyphs.ensure_benchmark(root, progress=False, workers=1, **dict(params, seed=3))
    assert again == root and glyphs.read_manifest(root)["params"]["seed"] == 3


def test_contact_sheet(tmp_path):
    root = _generate(tmp_path / "g")
    fig = glyphs.contact_sheet(root, n_classes=2)
    assert len(fig.axes) == 2 * 2
    assert [ax.get_ylabel() for ax in fig.axes[::2]] == ["clipart", "quickdraw"]
    fig.savefig(tmp_path / "sheet.png")
    assert (tmp_path / "sheet.png").stat().st_size > 0
    with pytest.raises(FileNotFoundError, match="data generate"):
        glyphs.contact_sheet(tmp_path / "missing")
