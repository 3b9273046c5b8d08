"""Unpack Office-Home so that ROOT/<Domain>/<class>/<image> holds its four domains.

    python data_scripts/prepare_office_home.py data/office-home \
        --archive ~/Downloads/OfficeHomeDataset_10072016.zip

A thin wrapper around ``ucdir_lite.prepare.prepare_office_home``. The authors
distribute the zip through a Google Drive link on
https://www.hemanthdv.org/officeHomeDataset.html: download it by hand (``--url``
accepts only a direct link to the zip).
"""

from __future__ import annotations

import argparse
import sys

from ucdir_lite.prepare import OFFICE_HOME_PAGE, prepare_office_home


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Unpack Office-Home (OfficeHomeDataset_10072016.zip) safely into "
        "ROOT/<Domain>/<class>/<image> (domains Art, Clipart, Product, 'Real World').",
        epilog=f"Get the zip by hand from {OFFICE_HOME_PAGE} (a Google Drive link).",
    )
    parser.add_argument("root", help="folder of the prepared dataset (created)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--archive", help="path of the downloaded OfficeHomeDataset_10072016.zip")
    source.add_argument("--url", help="a DIRECT http(s) link to the zip (not a Google Drive page)")
    parser.add_argument("--md5", help="expected MD5 of the zip (optional)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        root = prepare_office_home(args.root, archive=args.archive, url=args.url, md5=args.md5,
                                   progress=not args.quiet)
    except KeyboardInterrupt:
        print("error: interrupted; run the same command again", file=sys.stderr)
        return 130
    except (OSError, ValueError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"use {root} as the dataset root")
    return 0


if __name__ == "__main__":
    sys.exit(main())
