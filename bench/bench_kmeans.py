"""Benchmark: ``ucdir_lite.clustering.kmeans`` against faiss-cpu and scikit-learn.

Data: N points in 128-d around K Gaussian blobs on the unit sphere (L2-normalised, like
memory-bank features), float32. Every library gets the same budget as the official UCDIR
code (20 Lloyd iterations, 5 restarts) and the same number of threads; times are medians
over repeats measured side by side in one process. Inertia is the sum of squared distances
of the points to their assigned centroid; ARI compares the labels with the planted blobs.

- ours: ``kmeans(x, K, n_iter=20, n_restarts=5)`` (greedy k-means++ seeding, torch),
- faiss: ``faiss.Kmeans(d, K, niter=20, nredo=5, max_points_per_centroid=2000)`` (random
  seeding; 2000 as in the official code, so no subsampling here) + one assignment search,
- scikit-learn: ``KMeans(K, n_init=5, max_iter=20, algorithm="lloyd")`` (greedy k-means++).

    python bench/bench_kmeans.py --quick
    python bench/bench_kmeans.py --threads 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import faiss
import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import limit_threads, machine_info, median_time, print_table

from ucdir_lite.clustering import kmeans


def make_blobs(n: int, k: int, dim: int = 128, noise: float = 0.08, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(k, dim, generator=g), dim=1)
    labels = torch.randint(k, (n,), generator=g)
    x = centres[labels] + noise * torch.randn(n, dim, generator=g)
    return torch.nn.functional.normalize(x, dim=1), labels


def run_ours(x: torch.Tensor, k: int, seed: int):
    result = kmeans(x, k, n_iter=20, n_restarts=5, seed=seed)
    return result.inertia, result.labels.numpy()


def run_faiss(x: np.ndarray, k: int, seed: int):
    km = faiss.Kmeans(x.shape[1], k, niter=20, nredo=5, seed=seed + 1, max_points_per_centroid=2000)
    km.train(x)
    dist, labels = km.index.search(x, 1)
    return float(dist.astype(np.float64).sum()), labels[:, 0]


def run_sklearn(x: np.ndarray, k: int, seed: int):
    km = KMeans(k, n_init=5, max_iter=20, algorithm="lloyd", random_state=seed).fit(x)
    return float(km.inertia_), km.labels_


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one noise level, 2 repeats")
    p.add_argument("--n", type=int, default=15000)
    p.add_argument("--k", type=int, default=65)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--noise", type=float, nargs="+", default=[0.08, 0.12])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.quick:
        args.repeats, args.noise = 2, [0.08]
    limit_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)

    print(
        f"# bench_kmeans: N={args.n}, D={args.dim}, K={args.k}, 20 iterations x 5 restarts, "
        f"float32; median of {args.repeats}"
    )
    print(f"# {machine_info(args.threads)}; faiss {faiss.__version__}")
    rows = []
    for noise in args.noise:
        x, truth = make_blobs(args.n, args.k, args.dim, noise)
        xn = np.ascontiguousarray(x.numpy())
        results = {
            "ours": median_time(lambda x=x: run_ours(x, args.k, 0), args.repeats),
            "faiss": median_time(lambda xn=xn: run_faiss(xn, args.k, 0), args.repeats),
            "sklearn": median_time(lambda xn=xn: run_sklearn(xn, args.k, 0), args.repeats),
        }
        t_ours, (inertia_ours, _) = results["ours"]
        for name, (seconds, (inertia, labels)) in results.items():
            rows.append(
                [
                    noise,
                    name,
                    seconds,
                    inertia,
                    adjusted_rand_score(truth.numpy(), labels),
                    t_ours / seconds,
                    inertia_ours / inertia,
                ]
            )
        print(f"# noise={noise}: done", flush=True)
    print_table(
        [
            "noise",
            "library",
            "seconds",
            "inertia",
            "ARI",
            "ours time / this",
            "ours inertia / this",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
