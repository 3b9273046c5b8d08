"""Benchmark: one training epoch on a user's own folder of small images (``--data-root``).

A tree in the Office-Home layout (``root/<domain>/<class>/<image>.png``) of 32-px images,
10 classes, 340 images per class and domain (6,800 images), made by the package's own
generator. The ``cpu`` preset's warm-up (L_IW only) trains on it with:

- ``batch_augment=None`` (the default): the images already have the training size and fit
  in memory, so they are held as one uint8 tensor per domain and augmented a batch at a
  time (``data.fits_fast_path``), as the generated benchmark is;
- ``batch_augment=False``: per-image transforms in DataLoaders, with 0, 1 and 2 loader
  worker processes (``num_workers``).

Each variant trains ``--epochs`` epochs in this process; the figure is the median epoch time
(``history[i]["time_s"]``: the steps, not the data loading or the evaluation), and the data
loading (``build_data``: decoding the tree) is timed on its own.

    python bench/bench_real_data.py --threads 2 --epochs 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import limit_threads, machine_info, print_table

from ucdir_lite import glyphs
from ucdir_lite.config import get_preset
from ucdir_lite.data import build_data
from ucdir_lite.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images-per-class", type=int, default=340)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    limit_threads(args.threads)
    print(machine_info(args.threads))
    with tempfile.TemporaryDirectory() as tmp:
        root = glyphs.generate_benchmark(Path(tmp) / "tree", num_classes=10,
                                         images_per_class=args.images_per_class,
                                         domains=("clipart", "sketch"), progress=False)
        base = get_preset("cpu", data_root=str(root), domains=("clipart", "sketch"),
                          num_classes=10, epochs=args.epochs, warmup_epochs=args.epochs,
                          eval_every=0, threads=args.threads)
        variants = {"batch_augment=None (fast path)": base}
        for w in args.workers:
            variants[f"batch_augment=False, {w} workers"] = base.replace(
                batch_augment=False, num_workers=w)
        rows = []
        for name, cfg in variants.items():
            start = time.perf_counter()
            data = build_data(cfg)
            load_s = time.perf_counter() - start
            fast = data[0].images is not None
            result = train(cfg, Path(tmp) / name.replace(" ", "_").replace(",", ""),
                           progress=False)
            epoch_s = statistics.median(e["time_s"] for e in result.history)
            steps = result.history[0]["steps"]
            rows.append([name, "yes" if fast else "no", f"{load_s:.1f}", f"{epoch_s:.2f}",
                         f"{2 * 2 * steps * cfg.batch_size / epoch_s:.0f}"])
        fast_s = float(rows[0][3])
        for row in rows:
            row.append(f"{float(row[3]) / fast_s:.2f}")
        print_table(["variant", "held in memory", "load s", "epoch s (median)",
                     "views/s", "epoch / fast path"], rows)


if __name__ == "__main__":
    main()
