"""Candidates for the domain-gap knob (issue: "when does alignment matter?"), measured.

Each candidate restyles the sketch domain of the default benchmark (a transform of every
32-px sketch image); the ``cpu`` preset's warm-up (L_IW alone, 40 epochs, seed 0, 1 thread)
trains on clip art + the restyled sketches, and the diagnostics of ``ucdir_lite.diagnostics``
(labels read only to measure) and P@50 are printed. A good knob (a) keeps each domain's own
structure (in-domain P@50 and cluster purity near the untouched benchmark's), (b) lowers the
class-mean cross-domain cosine and raises the class-mean DoD under the true matching, and
(c) lowers cross-domain P@50.

The candidates: ``none`` (the benchmark as it is), ``rot90`` / ``rot180`` / ``rot45`` (the
whole image turned; 45° interpolates and fills the corners with the border), ``invert``
(light ink on dark), ``colour2`` (red ink on blue paper), ``texture`` (diagonal stripes,
amplitude 0.4, random phase), ``blur`` (Gaussian, sigma 1.2 px). The package's knob
(``glyphs.with_gap``) turns the glyph itself before the style is drawn, which is the
rotation candidates without their interpolation artefacts.

    .venv/bin/python bench/gap_candidates.py --out /tmp/gap-candidates     # ~3 min per candidate
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, print_table

from ucdir_lite import glyphs
from ucdir_lite.config import get_preset
from ucdir_lite.diagnostics import diagnose
from ucdir_lite.train import build_data, extract_features, train

CANDIDATES = ("none", "rot90", "rot180", "rot45", "invert", "colour2", "texture", "blur")


def restyle(name: str, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One candidate applied to an (H, W, 3) image in [0, 1]."""
    luma = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    if name == "none":
        return x
    if name in ("rot90", "rot180"):
        return np.rot90(x, 1 if name == "rot90" else 2).copy()
    if name == "rot45":
        return ndimage.rotate(x, 45, reshape=False, order=1, mode="nearest")
    if name == "invert":
        return 1.0 - x
    if name == "colour2":
        return np.array([0.9, 0.1, 0.1]) * (1 - luma) + np.array([0.1, 0.3, 0.9]) * luma
    if name == "texture":
        yy, xx = np.mgrid[0:x.shape[0], 0:x.shape[1]]
        stripes = (np.mod(xx + yy + rng.uniform(0, 4), 4) < 2).astype(np.float32)[..., None]
        return np.clip(x + 0.4 * (stripes - 0.5), 0, 1)
    if name == "blur":
        return ndimage.gaussian_filter(x, (1.2, 1.2, 0))
    raise ValueError(f"unknown candidate {name!r}; choose from {CANDIDATES}")


def make_root(name: str, src: Path, out: Path) -> Path:
    """clipart (linked) + the restyled sketches under ``out/<name>``."""
    root = out / name
    if (root / ".done").exists():
        return root
    for cdir in sorted((src / "clipart").iterdir()):
        (root / "clipart").mkdir(parents=True, exist_ok=True)
        if not (root / "clipart" / cdir.name).exists():
            (root / "clipart" / cdir.name).symlink_to(cdir)
    for cdir in sorted((src / "sketch").iterdir()):
        (root / "sketch" / cdir.name).mkdir(parents=True, exist_ok=True)
        for i, path in enumerate(sorted(cdir.glob("*.png"))):
            x = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255
            y = restyle(name, x, np.random.default_rng([i, len(cdir.name)]))
            Image.fromarray(np.round(np.clip(y, 0, 1) * 255).astype(np.uint8)).save(
                root / "sketch" / cdir.name / path.name)
    (root / ".done").write_text("")
    return root


def measure(name: str, src: Path, out: Path, seed: int) -> dict:
    cfg = get_preset("cpu", data_root=str(make_root(name, src, out)), batch_augment=True,
                     epochs=40, seed=seed, threads=1)
    start = time.perf_counter()
    result = train(cfg, None, progress=False)
    data = build_data(cfg)
    feats = [extract_features(result.encoder, d.eval_data) for d in data]
    diag = diagnose(*feats[0], *feats[1], num_clusters=cfg.num_clusters, seed=seed)
    p50 = {d: result.metrics[d]["P@50"] for d in ("A->B", "B->A", "A->A", "B->B")}
    return {"candidate": name, "seconds": time.perf_counter() - start, **diag, **p50}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=CANDIDATES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="/tmp/gap-candidates", help="restyled data and results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(machine_info(threads=1))
    src = glyphs.ensure_benchmark(progress=False)
    out = Path(args.out)
    rows = []
    for name in args.candidates:
        rows.append(measure(name, src, out, args.seed))
        print(json.dumps(rows[-1]), flush=True)
    print_table(["candidate", "class-mean cos", "DoD (true)", "DoD (random)", "purity A %",
                 "purity B %", "A→B P@50", "A→A P@50", "B→B P@50"],
                [[r["candidate"], f"{r['cross_cos']:.3f}", f"{r['dod_true']:.3f}",
                  f"{r['dod_random']:.3f}", f"{r['purity_A']:.1f}", f"{r['purity_B']:.1f}",
                  f"{r['A->B']:.1f}", f"{r['A->A']:.1f}", f"{r['B->B']:.1f}"] for r in rows])


if __name__ == "__main__":
    main()
