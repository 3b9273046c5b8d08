"""Generate the embedded glyph benchmark (a thin wrapper around ucdir_lite.glyphs).

Example::

    python data_scripts/generate_glyphs.py data/glyphs --contact-sheet contact_sheet.png
"""

from __future__ import annotations

import argparse
import time

from ucdir_lite import glyphs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="output folder (root/<domain>/<class>/<nnnn>.png)")
    parser.add_argument("--num-classes", type=int, default=30,
                        help=f"number of classes (at most {glyphs.MAX_CLASSES})")
    parser.add_argument("--images-per-class", type=int, default=60)
    parser.add_argument("--domains", nargs="+", default=list(glyphs.DOMAINS),
                        choices=glyphs.DOMAINS)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--imbalance", type=float, default=0.0,
                        help="0 = balanced; r in (0, 1): the last class has (1 - r) as many")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing benchmark made with other parameters")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--contact-sheet", metavar="PNG", default=None,
                        help="also save a contact sheet (rows = domains, columns = classes)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    root = glyphs.generate_benchmark(
        args.root,
        num_classes=args.num_classes,
        images_per_class=args.images_per_class,
        domains=tuple(args.domains),
        image_size=args.image_size,
        seed=args.seed,
        imbalance=args.imbalance,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        workers=args.workers,
    )
    manifest = glyphs.read_manifest(root)
    print(f"{manifest['num_images']} images in {root} ({time.perf_counter() - start:.1f} s)")
    if args.contact_sheet:
        fig = glyphs.contact_sheet(root)
        fig.savefig(args.contact_sheet, dpi=150)
        print(f"contact sheet: {args.contact_sheet}")


if __name__ == "__main__":
    main()
