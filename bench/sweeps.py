"""Sweeps of the official-form L_DD weight and of the self-entropy temperature on the default
ablation pairs, through the ablation runner and its run cache (warm-ups are shared).

- L_DD weight (sample-level, official scale): the arm "Full (official DoD)" with
  ``dd_weight`` in 0.1, 0.3, 0.5, 1, 2; weight 0 is the arm "CW+SE".
- self-entropy temperature: the arm "CW+SE" with ``tau_se`` in 0.01, 0.05, 0.1.

Prints, per pair and setting, P@50 mean ± sd over seeds in both directions, and the paired
per-seed difference against the sweep's reference (weight 0 / the preset's temperature) with
the verdict of ``ucdir_lite.ablation.paired_verdict`` (its ``RULE``: a gain (loss) when the
difference is positive (negative) in every seed and its mean exceeds twice its standard error;
otherwise "no measurable effect"). Writes a figure.

    .venv/bin/python bench/sweeps.py --out results/sweeps        # cold: ~25 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, print_table

from ucdir_lite.ablation import (
    DEFAULT_PAIRS,
    DEFAULT_SEEDS,
    pair_name,
    paired_verdict,
    run_ablation,
)
from ucdir_lite.config import get_preset

DD_WEIGHTS = (0.0, 0.1, 0.3, 0.5, 1.0, 2.0)  # 0.3: the cpu preset's
SE_TAUS = (0.01, 0.05, 0.1)
METRIC = "P@50"


def _runs(arm: str, overrides: dict, pairs, seeds, jobs: int) -> dict:
    """{(pair name, seed): metrics} of one arm under ``overrides``."""
    res = run_ablation(pairs, seeds, preset="cpu", out=None, arms=[arm], jobs=jobs,
                       overrides=overrides, progress=False)
    return {(r["pair"], r["seed"]): r["metrics"] for r in res["rows"] if r["arm"] == arm}


def sweep(name: str, arm_of, values, reference, pairs, seeds, jobs: int) -> list[dict]:
    """One row per (pair, value): means, sds and the paired differences to ``reference``."""
    results = {v: _runs(*arm_of(v), pairs, seeds, jobs) for v in values}
    rows = []
    for pair in pairs:
        p = pair_name(pair)
        for v in values:
            row = {"sweep": name, "pair": p, "value": v}
            for direction in ("A->B", "B->A", "A->A", "B->B"):
                got = [results[v][(p, s)][direction][METRIC] for s in seeds]
                ref = [results[reference][(p, s)][direction][METRIC] for s in seeds]
                diffs = [g - r for g, r in zip(got, ref, strict=True)]
                row[direction] = (statistics.fmean(got), statistics.stdev(got))
                row[direction + " diff"] = diffs
            rows.append(row)
    return rows


def print_rows(rows: list[dict], label: str) -> None:
    table = []
    for r in rows:
        cells = [r["pair"], r["value"]]
        for direction in ("A->B", "B->A"):
            mean, sd = r[direction]
            diffs = r[direction + " diff"]
            cells += [f"{mean:.1f} ± {sd:.1f}",
                      f"{statistics.fmean(diffs):+.1f} ({paired_verdict(diffs)})" if any(diffs)
                      else "reference"]
        table.append(cells)
    print_table(["pair", label, f"A→B {METRIC}", "A→B paired diff", f"B→A {METRIC}",
                 "B→A paired diff"], table)


def figure(dd_rows: list[dict], se_rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    for ax, rows, label, log in ((axes[0], dd_rows, "official L_DD weight", False),
                                 (axes[1], se_rows, "self-entropy temperature", True)):
        for pair in dict.fromkeys(r["pair"] for r in rows):
            for direction, style in (("A->B", "-o"), ("B->A", "--s")):
                sel = [r for r in rows if r["pair"] == pair]
                x = [r["value"] for r in sel]
                y = [r[direction][0] for r in sel]
                err = [r[direction][1] for r in sel]
                ax.errorbar(x, y, yerr=err, fmt=style, capsize=3,
                            label=f"{pair.replace('->', '→')} ({direction.replace('->', '→')})")
        ax.set_xlabel(label)
        ax.set_ylabel(f"{METRIC} (%), mean ± sd over seeds")
        if log:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/sweeps", help="folder for JSON and figure")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    pairs = list(DEFAULT_PAIRS)
    base_tau = get_preset("cpu").tau_se
    taus = tuple(sorted(set(SE_TAUS) | {base_tau}))
    print(f"# sweeps on the cpu preset, seeds {args.seeds}; {machine_info(1)}\n")
    dd_rows = sweep("dd_weight", lambda w: ("CW+SE", {}) if w == 0 else
                    ("Full (official DoD)", {"dd_weight": w}), DD_WEIGHTS, 0.0, pairs,
                    args.seeds, args.jobs)
    print_rows(dd_rows, "L_DD weight")
    print()
    se_rows = sweep("tau_se", lambda t: ("CW+SE", {"tau_se": t}), taus, base_tau, pairs,
                    args.seeds, args.jobs)
    print_rows(se_rows, "SE temperature")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweeps.json").write_text(json.dumps({"dd_weight": dd_rows, "tau_se": se_rows},
                                                indent=1))
    figure(dd_rows, se_rows, out / "sweeps.png")
    print(f"\nwrote {out / 'sweeps.json'} and {out / 'sweeps.png'}")


if __name__ == "__main__":
    main()
