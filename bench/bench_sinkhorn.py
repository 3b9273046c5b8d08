"""Benchmark: ``ucdir_lite.transport.sinkhorn`` against POT's ``ot.sinkhorn``.

The problems look like the cluster matching of book chapter 5: K centroids per domain (unit-norm,
128-d), domain B a noisy permutation of domain A, squared-distance cost scaled to [0, 1]
(as ``match_clusters`` does), uniform marginals, float64. All solvers get the same
``epsilon``, ``stopThr`` = tol = 1e-9 and ``numItermax`` = max_iter = 1000, and are timed
side by side in one process:

- POT, method "sinkhorn" (the classic scaling iterations, numpy),
- POT, method "sinkhorn_log" (log-domain, numpy) - the reference for the plan difference,
- POT, method "sinkhorn_log" on torch tensors (POT's torch backend),
- ours (log-domain, torch).

    python bench/bench_sinkhorn.py --quick
    python bench/bench_sinkhorn.py --threads 1
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import ot
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import limit_threads, machine_info, median_time, print_table

from ucdir_lite.transport import sinkhorn


def make_problem(k: int, dim: int = 128, noise: float = 0.5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = torch.nn.functional.normalize(torch.randn(k, dim, generator=g, dtype=torch.float64), dim=1)
    b = (
        a[torch.randperm(k, generator=g)]
        + noise * torch.randn(k, dim, generator=g, dtype=torch.float64) / dim**0.5
    )
    C = torch.cdist(a, torch.nn.functional.normalize(b, dim=1)).square()
    C /= C.max()
    marginal = torch.full((k,), 1.0 / k, dtype=torch.float64)
    return marginal, marginal.clone(), C


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="K = 7 and 65, epsilon 0.05, 3 repeats")
    p.add_argument("--ks", type=int, nargs="+", default=[7, 65, 345])
    p.add_argument("--epsilons", type=float, nargs="+", default=[0.05, 0.01])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.quick:
        args.ks, args.epsilons, args.repeats = [7, 65], [0.05], 3
    limit_threads(args.threads)
    warnings.filterwarnings("ignore")  # non-convergence warnings: every solver stops alike

    print(f"# bench_sinkhorn: float64, tol 1e-9, max_iter 1000; median of {args.repeats}")
    print(f"# {machine_info(args.threads)}; POT {ot.__version__}")
    rows = []
    for k in args.ks:
        for eps in args.epsilons:
            a, b, C = make_problem(k)
            an, bn, Cn = a.numpy(), b.numpy(), C.numpy()
            t_ours, (plan, log) = median_time(
                lambda a=a, b=b, C=C, eps=eps: sinkhorn(a, b, C, eps, return_log=True),
                args.repeats,
            )
            t_log, ref = median_time(
                lambda an=an, bn=bn, Cn=Cn, eps=eps: ot.sinkhorn(
                    an, bn, Cn, eps, method="sinkhorn_log", stopThr=1e-9
                ),
                args.repeats,
            )
            t_plain, plain = median_time(
                lambda an=an, bn=bn, Cn=Cn, eps=eps: ot.sinkhorn(
                    an, bn, Cn, eps, method="sinkhorn", stopThr=1e-9
                ),
                args.repeats,
            )
            t_log_torch, _ = median_time(
                lambda a=a, b=b, C=C, eps=eps: ot.sinkhorn(
                    a, b, C, eps, method="sinkhorn_log", stopThr=1e-9
                ),
                args.repeats,
            )
            diff = np.abs(plan.numpy() - ref).max()
            diff_plain = np.abs(plan.numpy() - plain).max()
            rows.append(
                [
                    k,
                    eps,
                    log["n_iter"],
                    1e3 * t_ours,
                    1e3 * t_log,
                    1e3 * t_log_torch,
                    1e3 * t_plain,
                    t_ours / t_log,
                    t_ours / t_plain,
                    f"{diff:.1e}",
                    f"{diff_plain:.1e}",
                ]
            )
            print(f"# K={k} eps={eps}: done", flush=True)
    print_table(
        [
            "K",
            "epsilon",
            "iters",
            "ours ms",
            "POT log ms",
            "POT log (torch) ms",
            "POT plain ms",
            "ours/POT log",
            "ours/POT plain",
            "max diff vs POT log",
            "max diff vs POT plain",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
