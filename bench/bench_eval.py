"""Benchmark: ``precision_at_k`` against the official UCDIR way of computing P@K.

The reference follows the official ``retrieval_precision_cal``: scikit-learn's
``cosine_similarity`` builds the full N x M score matrix in numpy, each query row is ranked
by a full ``np.argsort`` in a Python loop and the hits in the top ``min(K, R)`` are counted.
(The official code sorts the whole matrix at once and builds several more N x M arrays; the
row loop is the same arithmetic with less memory, so the comparison flatters the reference.)

Beside the reference, P@K is timed against the bare float32 product of the same shapes
(``P@K/bare``) and against the product plus one pass over its scores (``1 pass/bare``,
``product_and_one_pass``): the floor of any exact selection written with tensor operations.

Every case runs in a fresh process so that its peak RSS is its own; the table reports the
median time over repeats and the peak RSS above the process's baseline (data loaded). The
reference is skipped above ``--ref-max-size`` queries, with a printed estimate instead.

    python bench/bench_eval.py --quick          # a short check that it runs
    python bench/bench_eval.py --threads 1      # the full run (5k, 20k, 50k)
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics.pairwise import cosine_similarity

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import limit_threads, machine_info, median_time, peak_rss_mb, print_table, run_child

KS = (50, 100, 200)


def make_features(n: int, classes: int, dim: int, noise: float = 0.2, seed: int = 0):
    """Two domains of ``n`` L2-normalised float32 features around shared class centres, with a
    per-domain shift so that cross-domain retrieval is imperfect. Class sizes vary (Dirichlet)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sizes = rng.dirichlet(np.full(classes, 5.0))
    out = []
    for _ in range(2):
        shift = 0.5 * rng.standard_normal(dim).astype(np.float32) / math.sqrt(dim)
        labels = rng.choice(classes, n, p=sizes)
        x = centres[labels] + shift + rng.standard_normal((n, dim), dtype=np.float32) * noise
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out += [x, labels]
    return out  # query, query_labels, gallery, gallery_labels


def reference_precision(query, query_labels, gallery, gallery_labels, ks=KS):
    """P@K as the official UCDIR code computes it, one query row at a time."""
    sims = cosine_similarity(query, gallery)  # (N, M)
    hits, total = dict.fromkeys(ks, 0), dict.fromkeys(ks, 0)
    for i in range(sims.shape[0]):
        ranked = gallery_labels[np.argsort(-sims[i])]
        R = int((gallery_labels == query_labels[i]).sum())
        for k in ks:
            n = min(k, R)
            hits[k] += int((ranked[:n] == query_labels[i]).sum())
            total[k] += n
    return {k: 100.0 * hits[k] / total[k] for k in ks}


def bare_product(query, gallery, chunk_size):
    """The float32 score computation alone: ``query chunk @ gallery.T`` for every chunk of
    ``chunk_size`` queries, into one reused buffer (the fastest way torch offers; the full
    N x M product in one call would need N x M memory and is slower from page faults)."""
    import torch

    out = torch.empty(min(chunk_size, query.shape[0]), gallery.shape[0])
    for start in range(0, query.shape[0], chunk_size):
        chunk = out[: min(chunk_size, query.shape[0] - start)]
        torch.mm(query[start : start + chunk_size], gallery.T, out=chunk)
    return out


def product_and_one_pass(query, gallery, chunk_size):
    """The least an exact top-K selection does without a kernel of its own: the product in the
    cache-sized blocks ``precision_at_k`` scores in (its own ``_score_chunks``), and one pass
    over every block (each score compared with a per-row value, the indices of those above
    kept, numpy). Any selection written with PyTorch/numpy operations needs at least this;
    ours needs a second pass (the block maxima that give the per-row value) and a sort of the
    candidates."""
    from ucdir_lite.metrics import _score_chunks

    kept = 0
    for _, scores in _score_chunks(query, gallery, chunk_size, exclude_self=False):
        t = np.full((scores.shape[0], 1), 0.5, dtype=np.float32)  # a value per row
        kept += np.flatnonzero(scores.numpy() >= t).size
    return kept


def interleaved(fns: dict, repeats: int) -> dict:
    """Median seconds of each function, timed in turns (a, b, a, b, ...) so that a change in the
    machine's load hits all of them alike."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def run_case(impl: str, n: int, args) -> dict:
    """One implementation at one size, in this (fresh) process; returns a JSON-able dict."""
    import torch

    limit_threads(args.threads)
    q, ql, g, gl = make_features(n, args.classes, args.dim)
    if impl == "ref":
        gc.collect()
        baseline = peak_rss_mb()
        data = (q, ql, g, gl)
        seconds, result = median_time(lambda: reference_precision(*data, KS), args.repeats, 0)
        return {
            "seconds": seconds,
            "extra_rss_mb": peak_rss_mb() - baseline,
            "result": {str(k): v for k, v in result.items()},
        }
    from ucdir_lite.metrics import precision_at_k, retrieval_report

    tensors = [torch.from_numpy(a) for a in (q, ql, g, gl)]
    query, gallery = tensors[0], tensors[2]
    chunk = args.chunk_size
    gc.collect()
    baseline = peak_rss_mb()
    result = precision_at_k(*tensors, KS, chunk_size=chunk)  # also the warm-up
    out = {
        "extra_rss_mb": peak_rss_mb() - baseline,
        "result": {str(k): v for k, v in result.items()},
    }
    fns = {
        "pk": lambda: precision_at_k(*tensors, KS, chunk_size=chunk),
        "bare": lambda: bare_product(query, gallery, chunk),
        "one_pass": lambda: product_and_one_pass(query, gallery, chunk),
    }
    out.update(interleaved(fns, args.repeats))
    if n <= args.report_max_size:
        retrieval_report(*tensors, KS, chunk)
        out["report_rss_mb"] = peak_rss_mb() - baseline
        # the report scores both directions: against two bare products (A->B, B->A)
        fns = {
            "report": lambda: retrieval_report(*tensors, KS, chunk),
            "bare2": lambda: (
                bare_product(query, gallery, chunk),
                bare_product(gallery, query, chunk),
            ),
        }
        out.update(interleaved(fns, args.report_repeats))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="sizes 2000 and 5000, one repeat")
    p.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000, 50000])
    p.add_argument("--repeats", type=int, default=5, help="P@K and bare product, interleaved")
    p.add_argument("--report-repeats", type=int, default=3, help="retrieval_report and 2 bare")
    p.add_argument("--report-max-size", type=int, default=20000, help="skip the report above")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--classes", type=int, default=65)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--ref-max-size", type=int, default=20000, help="skip the reference above")
    p.add_argument("--case", nargs=2, metavar=("IMPL", "N"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case[0], int(args.case[1]), args)))
        return
    if args.quick:
        args.sizes, args.repeats, args.report_repeats = [2000, 5000], 1, 1

    print(
        f"# bench_eval: P@{{{','.join(map(str, KS))}}}, D={args.dim}, "
        f"{args.classes} classes, N queries x N gallery; repeats={args.repeats}"
    )
    print(f"# {machine_info(args.threads)}")
    child = [
        __file__,
        "--threads",
        str(args.threads),
        "--repeats",
        str(args.repeats),
        "--report-repeats",
        str(args.report_repeats),
        "--report-max-size",
        str(args.report_max_size),
        "--classes",
        str(args.classes),
        "--dim",
        str(args.dim),
        "--chunk-size",
        str(args.chunk_size),
    ]
    rows, ref_rate = [], None
    for n in args.sizes:
        ours = run_child([*child, "--case", "ours", str(n)], args.threads)
        row = [n, ours["pk"], ours["bare"], ours["pk"] / ours["bare"],
               ours["one_pass"] / ours["bare"]]
        if "report" in ours:
            row += [ours["report"], ours["bare2"], ours["report"] / ours["bare2"]]
        else:
            row += ["-", "-", "-"]
        if n <= args.ref_max_size:
            ref = run_child([*child, "--case", "ref", str(n)], args.threads)
            ref_rate = ref["seconds"] / (n * n * math.log2(n))
            diff = max(abs(ours["result"][k] - ref["result"][k]) for k in ours["result"])
            row += [ref["seconds"], ours["pk"] / ref["seconds"], ref["extra_rss_mb"], f"{diff:.1e}"]
        else:
            estimate = f"~{ref_rate * n * n * math.log2(n):.0f} (est.)" if ref_rate else "-"
            row += [estimate, "-", f"~{4 * n * n / 2**20:.0f} (est.)", "-"]
            print(
                f"# reference skipped at N={n}: its float32 score matrix alone is "
                f"{4 * n * n / 1e9:.1f} GB (the official whole-matrix argsort adds int64 "
                f"indices and label arrays, >= {29 * n * n / 1e9:.0f} GB)."
            )
        row += [ours["extra_rss_mb"], ours.get("report_rss_mb", "-")]
        rows.append(row)
        print(f"# N={n}: P@K ours {ours['result']}", flush=True)
    print_table(
        [
            "N=M",
            "P@K s",
            "bare s",
            "P@K/bare",
            "1 pass/bare",
            "report s",
            "2x bare s",
            "report/bare",
            "reference s",
            "P@K/reference",
            "reference +MiB",
            "max P@K diff",
            "P@K +MiB",
            "report +MiB",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
