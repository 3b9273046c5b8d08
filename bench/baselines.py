"""Reference points for the ablation: chance, the warm-up's instance-wise model, supervised.

For each domain pair of the default CPU ablation, P@50 in both directions (book chapter 1) of

- random features: i.i.d. Gaussian vectors (chance level, about 100 / number of classes),
- a random encoder: the ``cpu`` preset's encoder with its random initialisation,
- instance-wise (warm-up): the ``cpu`` preset's warm-up (L_IW only), the model every ablation
  arm starts from, taken from the run cache (trained there first if missing),
- supervised: the same encoder trained with the class labels of both domains and a
  cross-entropy loss (a cosine classifier on z, temperature 0.1; the same augmentations),
  for reference only: an upper bound that the unsupervised method does not get to see.

Every number is seeded (``--seeds``; mean over seeds when several).

    python bench/baselines.py --quick
    python bench/baselines.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import limit_threads, machine_info, print_table

from ucdir_lite.ablation import DEFAULT_PAIRS, pair_name, train_cached, warmup_config
from ucdir_lite.augment import BatchAugment
from ucdir_lite.config import get_preset
from ucdir_lite.metrics import retrieval_report
from ucdir_lite.train import build_data, build_model, evaluate
from ucdir_lite.utils import derive_seed

KS = (50,)


def p50(report: dict) -> tuple[float, float]:
    return report["A->B"]["P@50"], report["B->A"]["P@50"]


def random_features(data, seed: int, dim: int) -> tuple[float, float]:
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(len(d), dim, generator=g) for d in data]
    labels = [d.eval_set.labels for d in data]
    return p50(retrieval_report(feats[0], labels[0], feats[1], labels[1], ks=KS))


def random_encoder(cfg, data) -> tuple[float, float]:
    torch.manual_seed(cfg.seed)
    encoder = build_model(cfg).eval()
    return p50(evaluate(encoder, data[0].eval_set, data[1].eval_set, ks=KS, in_domain=False))


def warmup_model(cfg, cache_dir: str | None) -> tuple[float, float]:
    result = train_cached(warmup_config(cfg), cache_dir, progress=False)  # the ablation's ks
    return p50(result.metrics)


def supervised(cfg, data, epochs: int, tau: float = 0.1) -> tuple[float, float]:
    """The encoder trained on the labels of both domains: cross-entropy of a cosine classifier
    on z (logits = z . w_c / (|w_c| tau)), Adam, the trainer's batch augmentation."""
    torch.manual_seed(cfg.seed)
    encoder = build_model(cfg).to(memory_format=torch.channels_last)
    n_classes = len(data[0].eval_set.classes)
    classifier = torch.nn.Linear(cfg.feat_dim, n_classes, bias=False)
    params = [*encoder.parameters(), *classifier.parameters()]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    augment = BatchAugment(cfg.image_size)
    images = torch.cat([d.images for d in data])
    labels = torch.cat([d.eval_set.labels for d in data])
    batch = 2 * cfg.batch_size  # a batch of each domain per step, as in training
    encoder.train()
    for epoch in range(epochs):
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, epoch, 99))
        order = torch.randperm(len(images), generator=g)
        for s in range(len(images) // batch):
            index = order[s * batch:(s + 1) * batch]
            x = augment(images[index], g).contiguous(memory_format=torch.channels_last)
            z = encoder(x)
            logits = z @ F.normalize(classifier.weight, dim=1).T / tau
            loss = F.cross_entropy(logits, labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    encoder.eval()
    return p50(evaluate(encoder, data[0].eval_set, data[1].eval_set, ks=KS, in_domain=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", default=[f"{a}:{b}" for a, b in DEFAULT_PAIRS])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--sup-epochs", type=int, default=30, help="supervised epochs")
    parser.add_argument("--cache-dir", help="run cache of the warm-ups (default: the "
                        "ablation's, $UCDIR_RUNS or ~/.cache/ucdir_lite/runs)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true",
                        help="smoke preset, 2 supervised epochs (checks that it runs)")
    args = parser.parse_args()
    limit_threads(args.threads)
    preset = "smoke" if args.quick else "cpu"
    sup_epochs = 2 if args.quick else args.sup_epochs
    names = ["random features (chance)", "random encoder",
             "instance-wise (after warm-up)", f"supervised ({sup_epochs} epochs, labels)"]
    cells: dict[str, list[str]] = {name: [] for name in names}
    headers = ["model"]
    start = time.perf_counter()
    for pair in args.pairs:
        domains = tuple(pair.split(":"))
        headers += [f"{pair_name(domains)} P@50", f"{pair_name(domains[::-1])} P@50"]
        scores: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
        for seed in args.seeds:
            cfg = get_preset(preset, domains=domains, seed=seed, device="cpu")
            if 50 not in cfg.ks:  # the smoke preset
                cfg = cfg.replace(ks=KS)
            data = build_data(cfg)
            scores[names[0]].append(random_features(data, seed, cfg.feat_dim))
            scores[names[1]].append(random_encoder(cfg, data))
            scores[names[2]].append(warmup_model(cfg, args.cache_dir))
            scores[names[3]].append(supervised(cfg, data, sup_epochs))
        for name, values in scores.items():
            for direction in (0, 1):
                v = [s[direction] for s in values]
                sd = f" ± {statistics.stdev(v):.1f}" if len(v) > 1 else ""
                cells[name].append(f"{statistics.fmean(v):.1f}{sd}")
    print(f"# baselines, preset {preset}, seeds {args.seeds}; {machine_info(args.threads)}\n")
    print_table(headers, [[name, *values] for name, values in cells.items()])
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
