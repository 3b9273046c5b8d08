"""Benchmark: the cost of the cluster losses in a training step, and where one epoch goes.

1. images/s of one training step as the trainer takes it (``data.epoch_batches``: a batch of
   each domain, two augmented views; ``train.train_step``: forward of the query and key
   encoders, bank update, the losses, backward, Adam step, momentum update) with L_IW only
   (the IW arm) and with every loss of the Full arm (L_IW + L_CW + L_SE + the OT L_DD, and
   the official sample-level L_DD), on the ``cpu`` preset and its data. The variants run
   interleaved, step by step, in one process with the same weights; the figure
   is the median over the repeats. Target: the cluster losses cost <= 15 % more per step.
2. The time split of one Full epoch of ``ucdir_lite.train``: the steps (forward/backward),
   the k-means of the two memory banks, the Sinkhorn matching of the prototypes, and one
   evaluation (features of both domains + P@K and mAP in the four directions).
3. Where an IW step's time goes: the batch (augmentation) timed apart, ``train_step`` split
   into convolutions, batch norm, pooling and ReLU, and the rest (``torch.profiler``).
   FLOPs of one IW step (``torch.utils.flop_counter``) and the GFLOP/s it achieves, against
   this machine's float32 matrix product at the same threads, timed interleaved: the step's
   distance from the machine's compute peak.
4. The ablation runner: a small ablation (1 pair, 2 seeds, 10 warm-up + 5 arm epochs) in 1
   process of 2 threads against 2 worker processes of 1 thread each (``run_ablation(jobs=2)``,
   the default on the CPU).
5. With ``--compile``: the IW step with both encoders compiled by ``torch.compile``, against
   the eager step (the trainer does not compile; this measures what it would gain).

    python bench/bench_train_step.py --quick
    python bench/bench_train_step.py --threads 1 --repeats 30
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import limit_threads, machine_info, median_time, print_table

from ucdir_lite.ablation import arm_config, run_ablation
from ucdir_lite.config import get_preset
from ucdir_lite.data import encode, epoch_batches
from ucdir_lite.train import (
    build_data,
    cluster_features,
    extract_features,
    new_state,
    train,
    train_step,
)
from ucdir_lite.transport import match_clusters
from ucdir_lite.utils import keep_freed_memory

DEVICE = torch.device("cpu")


def new_trainer(cfg, data, amp: bool = False):
    """The trainer's state at the start of a run (``train.new_state``, banks from a key-encoder
    pass), as ``train`` builds it."""
    state = new_state(cfg, DEVICE, amp, pretrained=False)
    state.banks = [encode(state.encoder_k, d.eval_data, DEVICE, cfg.eval_batch_size)[0]
                   for d in data]
    return state


def endless_batches(cfg, data) -> Iterator:
    """The trainer's batches (``data.epoch_batches``), epoch after epoch, without end."""
    return itertools.chain.from_iterable(
        epoch_batches(cfg, data, epoch, DEVICE, 0) for epoch in itertools.count())


def make_step(cfg, state, data, clusters, weights, amp: bool = False) -> Callable[[], None]:
    """One training step as the trainer takes it: the next batch of ``data.epoch_batches``
    (the batched augmentation of both views) and ``train.train_step`` (forward of both
    encoders, bank update, losses, backward, optimizer step, momentum update)."""
    batches = endless_batches(cfg, data)

    def step() -> None:
        train_step(cfg, state, next(batches), weights, clusters, amp=amp)

    return step


def interleaved(steps: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each call of each step, the steps called in turn ``repeats`` times."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return times


def bench_steps(base, data, repeats: int) -> list[list]:
    """Median images/s of an IW step and of Full steps, interleaved."""
    epoch = base.warmup_epochs  # the first epoch with the cluster losses on
    variants = {"IW (L_IW only)": arm_config(base, "IW"),
                "Full (OT L_DD)": arm_config(base, "Full"),
                "Full (official DoD)": arm_config(base, "Full (official DoD)")}
    template = new_trainer(base, data)
    clusters = cluster_features(base, template.banks, epoch, match=True)
    steps = {}
    for name, cfg in variants.items():
        state = copy.deepcopy(template)  # same weights, banks and optimizer for every variant
        weights = cfg.loss_weights(epoch)
        steps[name] = make_step(cfg, state, data, clusters if weights["cw"] else None, weights)
        steps[name]()  # warm-up call
    times = interleaved(steps, repeats)
    images = 2 * base.batch_size
    iw = statistics.median(times["IW (L_IW only)"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append([name, images / med, med * 1000, f"{100 * (med / iw - 1):+.1f} %"])
    return rows


def bench_compiled(base, data, repeats: int) -> list[list]:
    """The IW step as trained (eager) against the same step with both encoders compiled by
    ``torch.compile`` (TorchInductor's C++ kernels on the CPU), interleaved, same weights.
    The first call of the compiled step includes the compilation (cold or from Inductor's
    on-disk cache, whichever this machine has)."""
    cfg = arm_config(base, "IW")
    template = new_trainer(cfg, data)
    states = {"eager (as trained)": template, "torch.compile (both encoders)":
              copy.deepcopy(template)}
    compiled = states["torch.compile (both encoders)"]
    compiled.encoder_q = torch.compile(compiled.encoder_q)
    compiled.encoder_k = torch.compile(compiled.encoder_k)
    steps, first = {}, {}
    for name, state in states.items():
        steps[name] = make_step(cfg, state, data, None, cfg.loss_weights(0))
        start = time.perf_counter()
        steps[name]()
        first[name] = time.perf_counter() - start
    times = interleaved(steps, repeats)
    eager = statistics.median(times["eager (as trained)"])
    return [[name, first[name], 1000 * statistics.median(ts),
             f"{eager / statistics.median(ts):.2f}x"] for name, ts in times.items()]


def matmul_gflops(size: int) -> Callable[[], float]:
    """A timed float32 ``size x size @ size x size`` product; returns its GFLOP/s."""
    a, b = torch.randn(size, size), torch.randn(size, size)

    def run() -> float:
        start = time.perf_counter()
        torch.mm(a, b)
        return 2 * size**3 / (time.perf_counter() - start) / 1e9

    return run


def bench_flops(base, data, repeats: int) -> tuple[list[list], list[list]]:
    """FLOPs of one IW step (``torch.utils.flop_counter``: convolutions, their backward and
    the matrix products), its achieved GFLOP/s, and this machine's float32 matmul GFLOP/s at
    the same threads (the best of three sizes), timed interleaved with the step."""
    cfg = arm_config(base, "IW")
    step = make_step(cfg, new_trainer(cfg, data), data, None, cfg.loss_weights(0))
    step()
    with FlopCounterMode(display=False) as counter:
        step()
    by_op = counter.get_flop_counts()["Global"]
    flops = sum(by_op.values())
    matmuls = {n: matmul_gflops(n) for n in (512, 1024, 2048)}
    for run in matmuls.values():
        run()  # warm-up
    step_s, peak = [], {n: [] for n in matmuls}
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        step_s.append(time.perf_counter() - start)
        for n, run in matmuls.items():
            peak[n].append(run())
    achieved = flops / statistics.median(step_s) / 1e9
    best = max(statistics.median(v) for v in peak.values())
    ops = [[str(op).removeprefix("aten."), gflop / 1e9, 100 * gflop / flops]
           for op, gflop in sorted(by_op.items(), key=lambda kv: -kv[1])]
    ops.append(["total", flops / 1e9, 100.0])
    rates = [[f"matmul {n}^3 (float32)", statistics.median(v), ""] for n, v in peak.items()]
    rates.append(["IW training step", achieved, f"{100 * achieved / best:.0f} % of the best "
                  "matmul"])
    return ops, rates


FAMILIES = {
    "convolutions (forward + backward)": ("convolution",),
    "batch norm (forward + backward)": ("batch_norm",),
    "max-pooling and ReLU (forward + backward)": ("max_pool", "relu", "threshold", "clamp_min"),
}
"""Op families of the step's profile: an op belongs to the first family one of whose name
parts its name contains."""


def bench_where(base, data, repeats: int) -> list[list]:
    """Where an IW step's time goes: the batch (``epoch_batches``: decoding nothing, the
    batched augmentation of 2 views x 2 domains) timed apart from ``train_step``, and
    ``train_step``'s own time split by op family (``torch.profiler`` self CPU time)."""
    cfg = arm_config(base, "IW")
    state = new_trainer(cfg, data)
    weights = cfg.loss_weights(0)
    batches = endless_batches(cfg, data)
    batch_s, step_s = [], []
    for i in range(repeats + 2):
        start = time.perf_counter()
        batch = next(batches)
        middle = time.perf_counter()
        train_step(cfg, state, batch, weights, None)
        if i >= 2:  # the first two warm up
            batch_s.append(middle - start)
            step_s.append(time.perf_counter() - middle)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            train_step(cfg, state, next(batches), weights, None)
    self_us = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    total_us = sum(self_us.values())
    step_ms = 1000 * statistics.median(step_s)
    parts = dict.fromkeys(FAMILIES, 0.0)
    for op, us in self_us.items():
        family = next((f for f, names in FAMILIES.items() if any(n in op for n in names)), None)
        if family is not None:
            parts[family] += us / total_us
    batch_ms = 1000 * statistics.median(batch_s)
    whole = batch_ms + step_ms
    rows = [["the batch: augmentation of 2 views x 2 domains", batch_ms, 100 * batch_ms / whole]]
    for family, share in parts.items():
        rows.append([f"train_step: {family}", share * step_ms, 100 * share * step_ms / whole])
    rest = (1 - sum(parts.values())) * step_ms
    rows.append(["train_step: everything else (losses, Adam, momentum, copies)", rest,
                 100 * rest / whole])
    rows.append(["whole step", whole, 100.0])
    return rows


def bench_epoch(base, data, repeats: int) -> list[list]:
    """Time split of one Full epoch (OT L_DD) of ``train`` (started from random weights: the
    same work as an epoch after warm-up), k-means and matching timed apart on the banks."""
    cfg = arm_config(base, "Full").replace(epochs=1, warmup_epochs=0)
    result = train(cfg, None, progress=False)
    epoch_s, eval_s = result.history[0]["time_s"], result.history[0]["eval_s"]
    data_eval = [d.eval_data for d in data]
    fresh_s, banks = median_time(lambda: [extract_features(result.encoder, d)[0]
                                          for d in data_eval], repeats)
    kmeans_s, clusters = median_time(lambda: cluster_features(cfg, banks, 0, match=False),
                                     repeats)
    ot_s, _ = median_time(lambda: match_clusters(*clusters.centroids, epsilon=cfg.ot_epsilon),
                          repeats)
    steps_s = epoch_s - fresh_s - kmeans_s - ot_s  # the epoch clustered fresh features
    total = epoch_s + eval_s
    return [["steps (forward/backward/update)", steps_s, 100 * steps_s / total],
            ["fresh features of every image (every epoch, cluster_on=features)", fresh_s,
             100 * fresh_s / total],
            ["k-means of both domains (every epoch)", kmeans_s, 100 * kmeans_s / total],
            ["OT matching (every epoch)", ot_s, 100 * ot_s / total],
            ["evaluation (once per run)", eval_s, 100 * eval_s / total]]


def bench_runner(pair: tuple[str, str], warmup: int, arm_epochs: int) -> list[list]:
    """Wall time of a small ablation (1 pair, 2 seeds: 2 warm-ups + 10 arms) with 1 process of
    2 threads against 2 worker processes of 1 thread each (fresh caches)."""
    overrides = dict(epochs=warmup + arm_epochs, warmup_epochs=warmup)
    rows = []
    for jobs, threads in ((1, 2), (2, 1)):
        torch.set_num_threads(threads)
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            run_ablation([pair], [0, 1], preset="cpu", out=None, jobs=jobs, overrides=overrides,
                         cache_dir=cache, progress=False)
            rows.append([f"{jobs} job(s) x {threads} thread(s)", time.perf_counter() - start])
    torch.set_num_threads(1)
    base = rows[0][1]
    return [[name, wall, f"{base / wall:.2f}x"] for name, wall in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: "
                        "one ablation worker)")
    parser.add_argument("--repeats", type=int, default=20, help="steps per variant")
    parser.add_argument("--pair", default="clipart:sketch")
    parser.add_argument("--quick", action="store_true", help="a few repeats (a smoke run)")
    parser.add_argument("--compile", action="store_true",
                        help="also time the IW step with torch.compile'd encoders")
    parser.add_argument("--no-runner", action="store_true",
                        help="skip the 1 job x 2 threads vs 2 jobs x 1 thread comparison")
    args = parser.parse_args()
    limit_threads(args.threads)
    keep_freed_memory()  # as train() does on the CPU
    repeats = 3 if args.quick else args.repeats
    torch.manual_seed(0)
    base = get_preset("cpu", domains=tuple(args.pair.split(":")), device="cpu")
    data = build_data(base)
    print(f"# training step, preset cpu ({args.pair}, batch {base.batch_size} per domain, "
          f"K={base.num_clusters}); {machine_info(args.threads)}\n")
    print_table(["step", "images/s", "ms/step", "vs IW"], bench_steps(base, data, repeats))
    print(f"\n# one Full epoch ({len(data[0])} + {len(data[1])} images, "
          f"{min(len(d) for d in data) // base.batch_size} steps)\n")
    print_table(["part", "seconds", "% of epoch + eval"], bench_epoch(base, data, repeats))
    print("\n# where an IW step's time goes (train_step split by torch.profiler self time)\n")
    print_table(["part", "ms per step", "%"], bench_where(base, data, repeats))
    ops, rates = bench_flops(base, data, repeats)
    print("\n# FLOPs of one IW step (torch.utils.flop_counter)\n")
    print_table(["op", "GFLOP per step", "%"], ops)
    print(f"\n# achieved rate against the machine's matmul, {args.threads} thread(s)\n")
    print_table(["work", "GFLOP/s (median)", "note"], rates)
    if args.compile:
        print("\n# the IW step compiled by torch.compile (not used in training)\n")
        print_table(["IW step", "first call s", "ms/step", "speed-up"],
                    bench_compiled(base, data, repeats))
    if not args.no_runner:
        warmup, arm_epochs = (1, 1) if args.quick else (10, 5)
        print(f"\n# ablation runner: warm-up {warmup} + 5 arms x {arm_epochs} epochs, "
              f"{args.pair}, seeds 0 and 1 (cpu preset otherwise)\n")
        print_table(["runner", "wall s", "speed-up"],
                    bench_runner(base.domains, warmup, arm_epochs))


if __name__ == "__main__":
    main()
