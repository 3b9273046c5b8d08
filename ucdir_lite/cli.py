"""The ``ucdir-lite`` command (also ``python -m ucdir_lite``).

    ucdir-lite train --preset cpu --domains clipart sketch --out runs/cs
    python -m torch.distributed.run --nproc_per_node 2 -m ucdir_lite train --preset smoke
    ucdir-lite evaluate --checkpoint runs/cs/checkpoint.pt
    ucdir-lite data generate --root data/glyphs --contact-sheet sheet.png
    ucdir-lite data prepare office-home --root data/office_home --archive OfficeHome.zip
    ucdir-lite ablate --preset cpu --pairs clipart:sketch photo:sketch --seeds 0 1 2 --jobs 2
    ucdir-lite runs export ucdir-lite-runs.tar.gz    # the run cache as one archive
    ucdir-lite runs import ucdir-lite-runs.tar.gz    # ... and back, on another machine

Launched by ``torchrun`` (``python -m torch.distributed.run``, the second line), ``train``
runs on several processes, CPU or GPU (``ucdir_lite.distributed``); rank 0 writes and prints.

Errors the user can fix (bad values, missing files, a diverged run) end with exit code 1 and
one line ``ucdir-lite: error: ...`` (set UCDIR_DEBUG=1 for the traceback); bad arguments
exit with argparse's code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PROG = "ucdir-lite"


class CLIError(Exception):
    """An error reported as one line and exit code 1."""


# ------------------------------------------------------------------------------- helpers


def format_report(metrics: dict[str, Any]) -> str:
    """A small text table of a retrieval report: one row per direction (A->B, B->A, ...)."""
    rows = {k: v for k, v in metrics.items() if isinstance(v, dict)}
    if not rows:
        return json.dumps(metrics, indent=2)
    columns = list(dict.fromkeys(c for row in rows.values() for c in row))
    lines = ["direction " + "".join(f"{c:>9}" for c in columns)]
    for name, row in rows.items():
        cells = "".join(
            f"{row[c]:>9.2f}" if isinstance(row.get(c), (int, float)) else f"{'':>9}"
            for c in columns
        )
        lines.append(f"{name:<10}{cells}")
    return "\n".join(lines)


def format_comparison(reports: dict[str, dict[str, Any]], metric: str,
                      domains: Sequence[str] | None = None,
                      directions: Sequence[str] = ("A->B", "B->A", "A->A", "B->B")) -> str:
    """One metric (e.g. ``"P@50"``) of several retrieval reports side by side: a row per
    report (``{name: report}``), a column per direction, named after ``domains`` (A, B) when
    given (``ablation.direction_label``)."""
    if domains is not None:
        from ucdir_lite.ablation import direction_label

        labels = [direction_label(d, domains) for d in directions]
    else:
        labels = list(directions)
    first = max(len(metric), *(len(name) for name in reports)) + 1
    widths = [max(len(label), 6) + 2 for label in labels]
    lines = [f"{metric:<{first}}" + "".join(f"{h:>{w}}" for h, w in zip(labels, widths,
                                                                        strict=True))]
    for name, report in reports.items():
        cells = "".join(f"{report[d][metric]:>{w}.1f}" for d, w in zip(directions, widths,
                                                                         strict=True))
        lines.append(f"{name:<{first}}{cells}")
    return "\n".join(lines)


def _config(args: argparse.Namespace):
    from ucdir_lite.config import get_preset, parse_override

    overrides: dict[str, Any] = dict(parse_override(text) for text in args.set or [])
    for key in ("epochs", "seed", "device"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.domains:
        overrides["domains"] = tuple(args.domains)
    if args.data_root:
        overrides["data_root"] = args.data_root
    return get_preset(args.preset, **overrides)


# ------------------------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace) -> int:
    """Train (on several processes when launched by torchrun: ``ucdir_lite.distributed``;
    rank 0 writes the run folder and prints the report)."""
    from ucdir_lite import distributed
    from ucdir_lite.train import train

    cfg = _config(args)
    out = args.out or f"runs/{args.preset}-{'-'.join(cfg.domains)}-seed{cfg.seed}".replace(" ", "_")
    try:
        result = train(cfg, out, resume=args.resume, init_from=args.init_from,
                       progress=not args.no_progress)
    finally:
        distributed.shutdown()
    if distributed.is_main():
        print(f"run folder: {result.out_dir}")
        print(format_report(result.metrics))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ucdir_lite.checkpoint import load_run
    from ucdir_lite.data import build_data
    from ucdir_lite.evaluation import evaluate

    encoder, cfg = load_run(args.checkpoint, device=args.device)
    overrides: dict[str, Any] = {"device": args.device}
    if args.data_root:
        overrides["data_root"] = args.data_root
    if args.domains:
        overrides["domains"] = tuple(args.domains)
    if args.ks:
        overrides["ks"] = tuple(args.ks)
    cfg = cfg.replace(**overrides)
    # eval_data: the images exactly as training evaluated them (in one tensor when they were
    # trained from memory), so the report reproduces the run's metrics.json
    eval_a, eval_b = (d.eval_data for d in build_data(cfg, progress=not args.no_progress))
    report = evaluate(encoder, eval_a, eval_b, ks=cfg.ks, device=args.device,
                      batch_size=cfg.eval_batch_size)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _root(args: argparse.Namespace) -> str:
    """The data command's destination: ``--root`` or the positional ROOT (the old scripts'
    form); one of them is required."""
    if args.root and args.root_arg and args.root != args.root_arg:
        raise CLIError(f"two roots given ({args.root_arg!r} and --root {args.root!r}); give one")
    root = args.root or args.root_arg
    if not root:
        raise CLIError("give the destination folder: --root PATH (or ROOT)")
    return root


def cmd_data_generate(args: argparse.Namespace) -> int:
    from ucdir_lite import glyphs

    root = glyphs.generate_benchmark(
        _root(args), num_classes=args.num_classes, images_per_class=args.images_per_class,
        domains=tuple(args.domains or glyphs.DOMAINS), image_size=args.image_size, seed=args.seed,
        imbalance=args.imbalance, domain_gap=args.domain_gap, overwrite=args.overwrite,
        progress=not args.no_progress, workers=args.workers)
    print(f"benchmark: {root} ({glyphs.read_manifest(root)['num_images']} images)")
    if args.contact_sheet:
        fig = glyphs.contact_sheet(root)
        path = Path(args.contact_sheet)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150, bbox_inches="tight")
        print(f"contact sheet: {path}")
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from ucdir_lite import prepare

    root = _root(args)
    if args.dataset == "domainnet":
        classes = args.classes or list(prepare.DOMAINNET_SUBSET)
        root = prepare.prepare_domainnet(
            root, domains=args.domains or prepare.DOMAINNET_DOMAINS,
            classes=None if classes == ["all"] else classes, base_url=args.base_url,
            keep_archives=not args.delete_archives,
            md5s=None if args.no_verify else prepare.DOMAINNET_MD5, split=args.split,
            progress=not args.no_progress)
    else:
        if not args.archive and not args.url:
            raise CLIError(
                "office-home needs --archive PATH (the zip downloaded by hand from "
                f"{prepare.OFFICE_HOME_PAGE}) or --url of a direct link"
            )
        root = prepare.prepare_office_home(root, archive=args.archive, url=args.url,
                                           md5=args.md5, progress=not args.no_progress)
    print(f"dataset: {root}")
    return 0


# ------------------------------------------------------------------------------- parser


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an encoder pair and evaluate retrieval",
                       description="Train UCDIR on two domains (a preset plus overrides).")
    p.add_argument("--preset", default="cpu", help="smoke | cpu | office-home | domainnet "
                   "(default: cpu)")
    p.add_argument("--domains", nargs=2, metavar=("A", "B"), help="the two domains")
    p.add_argument("--data-root", help="root/<domain>/<class>/<image>; default: the generated "
                   "benchmark")
    p.add_argument("--out", help="run folder (default: runs/<preset>-<A>-<B>-seed<seed>)")
    p.add_argument("--epochs", type=int, help="total epochs, warm-up included")
    p.add_argument("--seed", type=int, help="training seed")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--init-from", metavar="CHECKPOINT",
                   help="start a new run from another run's checkpoint (e.g. a warm-up)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any TrainConfig field, e.g. --set lr=0.001 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a saved run's encoder",
                       description="Cross-domain P@K and mAP of a trained run's encoder.")
    p.add_argument("--checkpoint", required=True, help="a run folder or its checkpoint.pt")
    p.add_argument("--data-root", help="dataset root (default: the run's)")
    p.add_argument("--domains", nargs=2, metavar=("A", "B"), help="default: the run's")
    p.add_argument("--ks", nargs="+", type=int, help="the K of P@K (default: the run's)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)


def _add_no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", "--quiet", action="store_true", dest="no_progress",
                   help="no progress bars")


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="generate or prepare data sets",
                       description="Generate the glyph benchmark or prepare real data.")
    data_sub = p.add_subparsers(dest="data_command", metavar="{generate,prepare}", required=True)

    g = data_sub.add_parser("generate", help="generate the glyph benchmark",
                            description="Write root/<domain>/<class>/<nnnn>.png + manifest.json.")
    g.add_argument("root_arg", nargs="?", metavar="ROOT", help="destination folder (or --root)")
    g.add_argument("--root", help="destination folder")
    g.add_argument("--num-classes", type=int, default=30, help="number of classes (at most "
                   "the glyph set's; default: %(default)s)")
    g.add_argument("--images-per-class", type=int, default=60)
    g.add_argument("--image-size", type=int, default=32)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--domains", nargs="+", help="default: all four (photo clipart sketch "
                   "quickdraw)")
    g.add_argument("--imbalance", type=float, default=0.0,
                   help="0 = balanced; r in (0, 1): the last class has (1 - r) as many")
    g.add_argument("--domain-gap", type=float, default=0.0, metavar="DEGREES",
                   help="turn every sketch glyph by this many degrees (book chapter 7)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace a benchmark made with other parameters")
    g.add_argument("--workers", type=int, help="rendering processes (default: automatic)")
    g.add_argument("--contact-sheet", metavar="PNG", help="also save a contact sheet")
    _add_no_progress(g)
    g.set_defaults(func=cmd_data_generate)

    pr = data_sub.add_parser("prepare", help="download / unpack a real data set",
                             description="Lay out DomainNet or Office-Home as "
                             "root/<domain>/<class>/<image>.")
    from ucdir_lite.prepare import DOMAINNET_DOMAINS, DOMAINNET_SUBSET, DOMAINNET_URL

    pr.add_argument("dataset", choices=("domainnet", "office-home"))
    pr.add_argument("root_arg", nargs="?", metavar="ROOT", help="destination folder (or --root)")
    pr.add_argument("--root", help="destination folder")
    source = pr.add_mutually_exclusive_group()
    source.add_argument("--archive", help="office-home: the zip downloaded by hand")
    source.add_argument("--url", help="office-home: a DIRECT http(s) link to the zip (not a "
                        "Google Drive page)")
    pr.add_argument("--md5", help="office-home: expected MD5 of the zip")
    pr.add_argument("--domains", nargs="+", choices=DOMAINNET_DOMAINS, metavar="DOMAIN",
                    help=f"domainnet: domains (default: all six: {' '.join(DOMAINNET_DOMAINS)})")
    pr.add_argument("--classes", nargs="+", help="domainnet: class folder names, or 'all' "
                    f"(default: the 7-class UCDIR subset {' '.join(DOMAINNET_SUBSET)})")
    pr.add_argument("--split", choices=("train", "test", "all"),
                    help="domainnet: keep only the images of these split files (default: every "
                    "image of the class folders, as the official UCDIR code)")
    pr.add_argument("--base-url", default=DOMAINNET_URL,
                    help="domainnet: where the files are (default: %(default)s)")
    pr.add_argument("--delete-archives", action="store_true",
                    help="domainnet: delete each zip once its domain is prepared")
    pr.add_argument("--no-verify", action="store_true",
                    help="domainnet: skip the MD5 list (a third-party mirror's sums); print "
                    "the computed MD5s instead")
    _add_no_progress(pr)
    pr.set_defaults(func=cmd_data_prepare)


def cmd_ablate(args: argparse.Namespace) -> int:
    from ucdir_lite import ablation
    from ucdir_lite.config import parse_override

    overrides: dict[str, Any] = dict(parse_override(text) for text in args.set or [])
    if args.ks:
        overrides["ks"] = tuple(args.ks)
    if args.data_root:
        overrides["data_root"] = args.data_root
    results = ablation.run_ablation(
        pairs=args.pairs, seeds=args.seeds, preset=args.preset, out=args.out, arms=args.arms,
        jobs=args.jobs, overrides=overrides, cache_dir=args.cache_dir,
        progress=not args.no_progress)
    print(ablation.ablation_table(results))
    timing = results["timing"]
    print(f"{timing['runs_trained']} runs trained, {timing['runs_reused']} reused from the cache; "
          f"wall {timing['wall_s']:.0f} s with {timing['jobs']} job(s)")
    if args.out:
        print(f"results: {args.out}")
    return 0


def _add_ablate(sub: argparse._SubParsersAction) -> None:
    from ucdir_lite.config import ARMS, DEFAULT_PAIRS, DEFAULT_SEEDS

    p = sub.add_parser("ablate", help="the ablation table (IW, CW, CW+SE, Full, Full "
                       "(official DoD))", description="Train a shared warm-up per pair and seed, "
                       "fork it into the ablation arms (runs are cached and resumable) and write "
                       "the table, CSV, JSON and a chart.")
    p.add_argument("--preset", default="cpu", help="smoke | cpu | office-home | domainnet "
                   "(default: cpu)")
    p.add_argument("--pairs", nargs="+", metavar="A:B",
                   default=[f"{a}:{b}" for a, b in DEFAULT_PAIRS],
                   help="domain pairs (default: "
                   f"{' '.join(f'{a}:{b}' for a, b in DEFAULT_PAIRS)})")
    p.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS),
                   help=f"training seeds (default: {' '.join(map(str, DEFAULT_SEEDS))})")
    p.add_argument("--arms", nargs="+", choices=list(ARMS), metavar="ARM",
                   help=f"rows to train (default: all: {', '.join(ARMS)})")
    p.add_argument("--jobs", type=int, help="worker processes, one thread each (default: 2 on "
                   "the CPU, 1 on a GPU)")
    p.add_argument("--out", default="results/default", help="results folder (default: "
                   "%(default)s)")
    p.add_argument("--cache-dir", help="run cache (default: $UCDIR_RUNS or "
                   "~/.cache/ucdir_lite/runs)")
    p.add_argument("--ks", nargs="+", type=int, help="the K of P@K, e.g. 1 5 15 for Office-Home "
                   "(default: the preset's)")
    p.add_argument("--data-root", help="root/<domain>/<class>/<image>; default: the preset's")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a TrainConfig field for every run (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_ablate)


def cmd_gap_sweep(args: argparse.Namespace) -> int:
    from ucdir_lite import gap

    results = gap.run_gap_sweep(
        levels=args.levels, seeds=args.seeds, preset=args.preset, pair=args.pair,
        arms=args.arms, jobs=args.jobs, out=args.out, cache_dir=args.cache_dir,
        progress=not args.no_progress)
    print(gap.gap_table(results))
    print(gap.step_table(results))
    timing = results["timing"]
    print(f"{timing['runs_trained']} runs trained; wall {timing['wall_s']:.0f} s")
    if args.out:
        print(f"results: {args.out}")
    return 0


def _add_gap_sweep(sub: argparse._SubParsersAction) -> None:
    from ucdir_lite.config import ARMS, DEFAULT_SEEDS

    levels = (0, 45, 90)  # gap.GAP_LEVELS, without importing torch for --help
    p = sub.add_parser("gap-sweep", help="the domain-gap experiment (book chapter 7)",
                       description="Train the ablation's arms at each domain-gap level (the "
                       "sketch glyphs turned by that many degrees), diagnose every run, and "
                       "print P@50 and each step paired by seed. Runs are cached.")
    p.add_argument("--levels", nargs="+", type=float, default=list(levels), metavar="DEGREES",
                   help=f"gap levels (default: {' '.join(map(str, levels))})")
    p.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS))
    p.add_argument("--preset", default="gap", help="default: gap (the cpu preset on 10 classes "
                   "x 50 images)")
    p.add_argument("--pair", default="clipart:sketch", metavar="A:B",
                   help="one of the two must be sketch (default: %(default)s)")
    p.add_argument("--arms", nargs="+", choices=list(ARMS), metavar="ARM")
    p.add_argument("--jobs", type=int, help="worker processes (default: as ablate)")
    p.add_argument("--out", default="results/gap", help="results folder (default: %(default)s)")
    p.add_argument("--cache-dir", help="run cache (default: $UCDIR_RUNS or "
                   "~/.cache/ucdir_lite/runs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_gap_sweep)


def cmd_runs(args: argparse.Namespace) -> int:
    from ucdir_lite import runs

    if args.runs_command == "export":
        names = runs.export_runs(args.archive, cache_dir=args.cache_dir, match=args.match)
        print(f"{len(names)} run(s) written to {args.archive}")
    elif args.runs_command == "import":
        found = runs.import_runs(args.archive, cache_dir=args.cache_dir)
        print(f"{len(found['imported'])} run(s) imported, {len(found['skipped'])} already in "
              "the cache")
    else:
        names = [d.name for d in runs.finished_runs(args.cache_dir, args.match)]
        print("\n".join(names) if names else "no finished runs")
    return 0


def _add_runs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="the run cache as one archive (export, import, list)",
                       description="Pack the finished runs of the run cache into one tar "
                       "archive, unpack such an archive into a cache (every member checked "
                       "first), or list the finished runs.")
    rs = p.add_subparsers(dest="runs_command", metavar="ACTION", required=True)
    cache_help = "run cache (default: $UCDIR_RUNS or ~/.cache/ucdir_lite/runs)"
    ex = rs.add_parser("export", help="write the finished runs into ARCHIVE (.tar or .tar.gz)")
    ex.add_argument("archive", metavar="ARCHIVE")
    ex.add_argument("--match", nargs="+", metavar="PATTERN",
                    help="only run folders whose name fits a pattern, e.g. 'clipart-sketch-*'")
    ex.add_argument("--cache-dir", help=cache_help)
    im = rs.add_parser("import", help="unpack the runs of ARCHIVE into the run cache")
    im.add_argument("archive", metavar="ARCHIVE")
    im.add_argument("--cache-dir", help=cache_help)
    ls = rs.add_parser("list", help="list the finished runs")
    ls.add_argument("--match", nargs="+", metavar="PATTERN")
    ls.add_argument("--cache-dir", help=cache_help)
    p.set_defaults(func=cmd_runs)


SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_train,
    _add_evaluate,
    _add_data,
    _add_ablate,
    _add_gap_sweep,
    _add_runs,
)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with every subcommand."""
    from ucdir_lite import __version__

    parser = argparse.ArgumentParser(
        prog=PROG, description="Unsupervised cross-domain image retrieval (UCDIR), small "
        "and readable.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


# What a user can do after Ctrl-C, per command (only train has --resume).
INTERRUPTED = {
    "train": "continue the run: the same command with --resume",
    "ablate": "run the same command again: finished runs are reused from the cache, an "
              "interrupted one continues",
    "gap-sweep": "run the same command again: finished runs are reused from the cache",
    "data": "run the same command again (nothing half-written is kept; a download resumes)",
}


def _user_error(err: BaseException) -> bool:
    """True for the errors a user can fix, reported in one line; other RuntimeErrors are bugs
    and keep their traceback. ``train`` (and torch) is imported only by the commands that
    train, so ``ucdir-lite --help`` starts fast: a TrainingDiverged can only come from there."""
    if not isinstance(err, RuntimeError):
        return True
    train = sys.modules.get("ucdir_lite.train")
    return train is not None and isinstance(err, train.TrainingDiverged)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse ``argv`` and run the subcommand; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, OSError, RuntimeError) as err:
        if os.environ.get("UCDIR_DEBUG") == "1" or not _user_error(err):
            raise
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = INTERRUPTED.get(args.command)
        print(f"{PROG}: error: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
