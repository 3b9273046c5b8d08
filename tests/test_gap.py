"""The domain-gap knob (ucdir_lite.glyphs.with_gap) and the gap sweep (ucdir_lite.gap)."""

import json

import numpy as np
import pytest
import torch

from ucdir_lite import gap, glyphs
from ucdir_lite.ablation import run_ablation
from ucdir_lite.config import TrainConfig
from ucdir_lite.train import load_run

TINY = dict(num_classes=3, images_per_class=3, domains=("clipart", "sketch"), image_size=16,
            progress=False, workers=1)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------- the knob
def test_gap_zero_is_the_default_benchmark_byte_for_byte(tmp_path):
    plain = _files(glyphs.generate_benchmark(tmp_path / "plain", **TINY))
    zero = _files(glyphs.generate_benchmark(tmp_path / "zero", **TINY, domain_gap=0.0))
    assert plain == zero  # images and manifest: no "domain_gap" key at level 0
    assert "domain_gap" not in json.loads(zero["manifest.json"])["params"]
    assert glyphs.default_root(num_classes=3, domain_gap=0) == glyphs.default_root(num_classes=3)


def test_gap_is_deterministic_turns_only_the_sketches_and_is_recorded(tmp_path):
    a = _files(glyphs.generate_benchmark(tmp_path / "a", **TINY, domain_gap=90))
    b = _files(glyphs.generate_benchmark(tmp_path / "b", **TINY, domain_gap=90))
    plain = _files(glyphs.generate_benchmark(tmp_path / "p", **TINY))
    assert a == b
    sketches = [k for k in a if k.startswith("sketch/")]
    cliparts = [k for k in a if k.startswith("clipart/")]
    assert sketches and all(a[k] != plain[k] for k in sketches)
    assert all(a[k] == plain[k] for k in cliparts)
    assert json.loads(a["manifest.json"])["params"]["domain_gap"] == 90.0
    assert glyphs.default_root(num_classes=3, domain_gap=90) != glyphs.default_root(num_classes=3)


def test_gap_adds_its_angle_to_each_sketch_glyph_and_nothing_else():
    for index in range(5):
        base = glyphs.image_parameters("sketch", "letter_A", index)
        turned = glyphs.image_parameters("sketch", "letter_A", index, domain_gap=45)
        assert turned.angle == pytest.approx(base.angle + 45)
        assert (turned.font, turned.scale, turned.shift, turned.stroke) == (
            base.font, base.scale, base.shift, base.stroke)
        assert glyphs.image_parameters("clipart", "letter_A", index, domain_gap=45) == \
            glyphs.image_parameters("clipart", "letter_A", index)


def _ink_axes(img) -> tuple[float, float]:
    """(variance along x, along y) of the ink (1 - luminance above the paper's level)."""
    grey = np.asarray(img.convert("L"), np.float64) / 255.0
    ink = np.clip(np.median(grey) - grey, 0, None)
    yy, xx = np.mgrid[0:grey.shape[0], 0:grey.shape[1]]
    w = ink / ink.sum()
    mx, my = (w * xx).sum(), (w * yy).sum()
    return float((w * (xx - mx) ** 2).sum()), float((w * (yy - my) ** 2).sum())


def test_a_quarter_turn_swaps_the_ink_spread_between_the_axes():
    """Pixel statistics: the ink of an elongated glyph spreads along the other axis at 90°."""
    swapped = checked = 0
    for name in ("digit_7", "letter_K", "sym_anchor", "digit_2", "sym_plane", "letter_R"):
        for index in range(6):
            vx0, vy0 = _ink_axes(glyphs.render_image("sketch", name, index, image_size=48))
            if abs(vx0 - vy0) < 0.25 * (vx0 + vy0):  # not elongated enough to tell
                continue
            vx1, vy1 = _ink_axes(glyphs.render_image("sketch", name, index, image_size=48,
                                                     domain_gap=90))
            checked += 1
            swapped += (vx0 > vy0) != (vx1 > vy1)
    assert checked >= 8
    assert swapped >= 0.9 * checked


def test_gap_is_checked_where_it_is_given(tmp_path):
    with pytest.raises(ValueError, match="domain_gap must be an angle"):
        glyphs.generate_benchmark(tmp_path / "x", **TINY, domain_gap=-10)
    with pytest.raises(ValueError, match="'sketch'.*not among the domains"):
        glyphs.generate_benchmark(tmp_path / "x", **{**TINY, "domains": ("clipart", "photo")},
                                  domain_gap=30)
    with pytest.raises(ValueError, match="domain_gap=400"):
        TrainConfig(domain_gap=400).validate()
    with pytest.raises(ValueError, match="does not apply to data_root"):
        TrainConfig(domain_gap=30, data_root="data/office_home").validate()


# ---------------------------------------------------------------------------------- the sweep
def test_smoke_sweep_end_to_end_rows_are_configs_and_a_rerun_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("UCDIR_DATA", str(tmp_path / "data"))
    kw = dict(levels=(0, 90), seeds=(0, 1), preset="smoke", arms=["CW", "CW+SE", "Full"],
              jobs=1, cache_dir=tmp_path / "runs", progress=False)
    results = gap.run_gap_sweep(**kw, out=tmp_path / "out")
    assert {(r["level"], r["seed"], r["arm"]) for r in results["rows"]} == {
        (lv, s, a) for lv in (0.0, 90.0) for s in (0, 1)
        for a in ("warm-up", "CW", "CW+SE", "Full")}
    for row in results["rows"]:
        assert set(row["diagnostics"]) == set(gap.DIAGNOSTICS)
        assert 0 <= row["metrics"]["A->B"]["P@5"] <= 100
    steps = gap.steps(results, k=5)
    assert {(s["level"], s["step"]) for s in steps} == {
        (lv, st) for lv in (0.0, 90.0) for st in ("CW+SE − CW", "Full − CW+SE")}
    for s in steps:  # the steps are differences of the table's own per-seed values
        arm, ref = s["step"].split(" − ")
        got = [r["metrics"][s["direction"]]["P@5"] for r in results["rows"]
               if r["level"] == s["level"] and r["arm"] == arm]
        base = [r["metrics"][s["direction"]]["P@5"] for r in results["rows"]
                if r["level"] == s["level"] and r["arm"] == ref]
        assert s["diffs"] == [g - b for g, b in zip(got, base, strict=True)]
    # each run trained the configured gap on its own data
    runs = {r["run_dir"] for r in run_ablation(
        ["clipart:sketch"], [0], preset="smoke", out=None, arms=["Full"], jobs=1,
        overrides={"domain_gap": 90.0}, cache_dir=tmp_path / "runs", progress=False)["rows"]}
    assert all(load_run(d)[1].domain_gap == 90.0 for d in runs)
    for name in ("results.json", "table.md", "timing.json", "steps.png"):
        assert (tmp_path / "out" / name).is_file()
    again = gap.run_gap_sweep(**kw)
    assert again["timing"]["runs_trained"] == 0
    assert again["rows"] == results["rows"]
    assert gap.load_gap_results(tmp_path / "out")["rows"] == json.loads(
        json.dumps(results["rows"]))
    # the tables and figures render from the results
    assert "90 | Full − CW+SE" in gap.step_table(results, k=5)
    assert "| 0 | warm-up |" in gap.diagnostics_table(results)
    gap.plot_steps(results, k=5)
    with pytest.raises(ValueError, match="must include it"):
        gap.run_gap_sweep(levels=(0,), pair="clipart:photo", preset="smoke")


def test_class_mean_projection_keeps_the_geometry_of_two_dimensional_points():
    pts = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    xy = gap._project(pts)
    d0, d1 = torch.cdist(pts, pts), torch.cdist(xy, xy)
    assert torch.allclose(d0, d1, atol=1e-5)  # a rotation (and centring) of the plane
    assert torch.allclose(xy.mean(0), torch.zeros(2), atol=1e-6)
