"""Benchmark: the least time a cold ``make book`` can take on this machine, from its runs.

Every run the book trains records its own training time (``train_s`` in the run cache's
``cache.json``: the epochs this run trained itself, not those of the checkpoint it started
from). Each run trains on one thread (the ``cpu`` and ``gap`` presets), so their sum is the
training work in thread-seconds; on ``C`` cores the training alone takes at least that sum
divided by ``C``, however the runs are scheduled. With ``--gflops`` (the step's achieved
rate) and ``--peak`` (the machine's float32 matmul rate, both from
``bench_train_step.py``) it also prints the floor if every step ran at that peak.

    python bench/book_floor.py --runs "$UCDIR_RUNS" --cores 2 --gflops 50.8 --peak 101
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="the run cache of a cold build")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--gflops", type=float, help="the training step's achieved GFLOP/s")
    parser.add_argument("--peak", type=float, help="the machine's matmul GFLOP/s, 1 thread")
    args = parser.parse_args()
    seconds: dict[str, float] = {}
    runs: dict[str, int] = {}
    for path in sorted(args.runs.glob("*/cache.json")):
        entry = json.loads(path.read_text())
        if not entry.get("finished"):
            continue
        config = entry["config"]
        group = f"{config['num_classes']} classes x {config['images_per_class']} images"
        seconds[group] = seconds.get(group, 0.0) + float(entry.get("train_s", 0.0))
        runs[group] = runs.get(group, 0) + 1
    if not runs:
        raise SystemExit(f"no finished run under {args.runs}; pass the run cache of a build")
    total = sum(seconds.values())
    print("| runs of | count | training thread-seconds |")
    print("|---|---:|---:|")
    for group in seconds:
        print(f"| {group} | {runs[group]} | {seconds[group]:.0f} |")
    print(f"| all | {sum(runs.values())} | {total:.0f} |")
    print(f"\nfloor of the training alone on {args.cores} cores: {total / args.cores:.0f} s "
          f"({total / args.cores / 60:.1f} min)")
    if args.gflops and args.peak:
        at_peak = total / args.cores * args.gflops / args.peak
        print(f"the same if every step ran at the matmul peak ({args.gflops:g} -> "
              f"{args.peak:g} GFLOP/s): {at_peak:.0f} s ({at_peak / 60:.1f} min)")


if __name__ == "__main__":
    main()
