"""What each arm of the default ablation did to the geometry the losses act on, measured with
the labels (``ucdir_lite.diagnostics``): after the warm-up and after every arm, the class-mean
cross-domain cosine, the distance-of-distance of the class means under the true matching
(and under random matchings), the cluster purity of each domain, and the share of OT-matched
clusters whose majority classes agree.

The runs come from the ablation's run cache (trained first if missing, as ``ucdir-lite
ablate`` would); features are the key encoder's, as evaluated.

    .venv/bin/python bench/diagnose.py                   # after the default ablation: ~2 min
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, print_table

from ucdir_lite.ablation import ARMS, DEFAULT_PAIRS, DEFAULT_SEEDS, WARMUP, run_ablation
from ucdir_lite.config import get_preset
from ucdir_lite.diagnostics import diagnose
from ucdir_lite.train import build_data, extract_features, load_run

COLUMNS = ("cross_cos", "dod_true", "dod_random", "purity_A", "purity_B", "matched_same")


def run_diagnostics(pairs, seeds, jobs: int) -> list[dict]:
    """One dict per (pair, seed, arm) with the diagnostics of that run's key encoder."""
    results = run_ablation(pairs, seeds, preset="cpu", out=None, jobs=jobs, progress=False)
    data_of = {}
    out = []
    for row in results["rows"]:
        encoder, cfg = load_run(row["run_dir"])
        key = tuple(cfg.domains)
        if key not in data_of:
            data_of[key] = build_data(cfg)
        feats = [extract_features(encoder, d.eval_data) for d in data_of[key]]
        values = diagnose(*feats[0], *feats[1], num_clusters=get_preset("cpu").num_clusters,
                          seed=row["seed"], epsilon=cfg.ot_epsilon)
        out.append({"pair": row["pair"], "seed": row["seed"], "arm": row["arm"], **values})
    return out


def summary(rows: list[dict]) -> list[list]:
    table = []
    for pair in dict.fromkeys(r["pair"] for r in rows):
        for arm in (WARMUP, *ARMS):
            sel = [r for r in rows if r["pair"] == pair and r["arm"] == arm]
            if not sel:
                continue
            cells = [pair.replace("->", "→"), arm]
            for col in COLUMNS:
                values = [r[col] for r in sel]
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.fmean(values):.3g} ± {sd:.2g}")
            table.append(cells)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="results/diagnostics.json")
    args = parser.parse_args()
    rows = run_diagnostics(list(DEFAULT_PAIRS), args.seeds, args.jobs)
    print(f"# diagnostics of the default ablation (cpu preset), mean ± sd over seeds "
          f"{args.seeds}; {machine_info(1)}\n")
    print_table(["pair", "arm", "class-mean cos", "class-mean DoD (true)",
                 "class-mean DoD (random)", "purity A %", "purity B %",
                 "OT-matched same class %"], summary(rows))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
