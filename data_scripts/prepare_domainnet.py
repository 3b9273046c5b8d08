"""Download DomainNet and build root/<domain>/<class>/<image> for a class subset.

    python data_scripts/prepare_domainnet.py data/domainnet --domains clipart sketch

A thin wrapper around ``ucdir_lite.prepare.prepare_domainnet``: see its docstring for
the sources, the checksums and the layout.
"""

from __future__ import annotations

import argparse
import sys

from ucdir_lite.prepare import (
    DOMAINNET_DOMAINS,
    DOMAINNET_MD5,
    DOMAINNET_SUBSET,
    DOMAINNET_URL,
    prepare_domainnet,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Download DomainNet (resumable, MD5-verified), extract it safely and "
        "build ROOT/<domain>/<class>/<image> for a class subset.",
    )
    parser.add_argument("root", help="folder of the prepared dataset (created)")
    parser.add_argument("--domains", nargs="+", choices=DOMAINNET_DOMAINS,
                        default=list(DOMAINNET_DOMAINS), help="domains (default: all six)")
    parser.add_argument("--classes", nargs="+", default=list(DOMAINNET_SUBSET),
                        help="class folder names, or 'all' (default: the 7-category UCDIR "
                        f"subset {' '.join(DOMAINNET_SUBSET)})")
    parser.add_argument("--split", choices=("train", "test", "all"), default=None,
                        help="keep only the images of these split files (default: every "
                        "image of the class folders, as the official UCDIR code)")
    parser.add_argument("--base-url", default=DOMAINNET_URL,
                        help=f"where the files are (default: {DOMAINNET_URL})")
    parser.add_argument("--delete-archives", action="store_true",
                        help="delete each zip once its domain is prepared")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the MD5 list (third-party mirror's sums); print the "
                        "computed MD5s instead")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    classes = None if args.classes == ["all"] else args.classes
    try:
        prepare_domainnet(
            args.root, domains=args.domains, classes=classes, base_url=args.base_url,
            keep_archives=not args.delete_archives,
            md5s=None if args.no_verify else DOMAINNET_MD5, split=args.split,
            progress=not args.quiet,
        )
    except KeyboardInterrupt:
        print("error: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except (OSError, ValueError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
