"""The standard first code cell of every notebook, rendered from ``_config.yml``.

Every notebook opens with the same setup cell: on Google Colab it installs ucdir-lite from
the repository named in ``_config.yml`` (``repository.url`` at ``repository.branch``), the
one place where that URL lives; anywhere else it does nothing, since ``make install`` (or
``pip install -e .``) has installed the package already. Colab is recognised by
``"google.colab" in sys.modules``.

Usage::

    python tools/colab_cell.py            # print the cell
    python tools/colab_cell.py --check    # exit 1 if a notebook's first code cell differs
    python tools/colab_cell.py --write    # put the cell into every notebooks/NN_*.py
                                          # (then syncs the paired .ipynb with jupytext)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import jupytext
import yaml
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "_config.yml"
NOTEBOOK_GLOB = "[0-9][0-9]_*.py"
MARKER = "# Colab setup"

CELL_TEMPLATE = '''{marker}: on Google Colab, install ucdir-lite from its repository.
# Anywhere else this does nothing (`make install` has installed it).
import subprocess
import sys

PACKAGE = "git+{url}@{branch}"
if "google.colab" in sys.modules:
    pip = [sys.executable, "-m", "pip", "install", "-q", PACKAGE]
    subprocess.run(pip, check=True)'''


def read_repository(config: Path = CONFIG) -> tuple[str, str]:
    """Return ``(url, branch)`` from the ``repository`` section of a Jupyter Book config."""
    if not config.is_file():
        raise FileNotFoundError(f"no Jupyter Book config at {config}: run from the repository root")
    repository = (yaml.safe_load(config.read_text()) or {}).get("repository") or {}
    url = str(repository.get("url", "")).rstrip("/")
    if not url.startswith("https://"):
        raise ValueError(
            f"repository.url in {config} is {url!r}: set it to the https URL of the repository"
        )
    return url, str(repository.get("branch") or "main")


def render_cell(config: Path = CONFIG) -> str:
    """The source of the standard first code cell, for the repository named in ``config``."""
    url, branch = read_repository(config)
    return CELL_TEMPLATE.format(marker=MARKER, url=url, branch=branch)


def notebook_sources(folder: Path) -> list[Path]:
    """The paired notebook sources ``NN_name.py`` in ``folder``, sorted by name."""
    return sorted(folder.glob(NOTEBOOK_GLOB))


def first_code_cell(nb: NotebookNode) -> NotebookNode | None:
    """The first code cell of a notebook, or None if it has none."""
    return next((cell for cell in nb.cells if cell.cell_type == "code"), None)


def check_first_cell(nb: NotebookNode, expected: str, name: str) -> list[str]:
    """Problems with a notebook's first code cell (an empty list when it is the standard one)."""
    cell = first_code_cell(nb)
    if cell is None:
        return [f"{name}: has no code cell; the first one must be the Colab setup cell"]
    if cell.source.strip() != expected.strip():
        return [
            f"{name}: the first code cell is not the standard Colab setup cell rendered from "
            "_config.yml; fix: python tools/colab_cell.py --write"
        ]
    return []


def write_first_cell(path: Path, expected: str) -> bool:
    """Put the standard cell first in the notebook at ``path``; return True if it changed.

    A first code cell that starts with the setup marker is replaced; otherwise the setup cell
    is inserted before the first code cell.
    """
    nb = jupytext.read(path)
    cell = first_code_cell(nb)
    if cell is not None and cell.source.strip() == expected.strip():
        return False
    if cell is not None and cell.source.lstrip().startswith(MARKER):
        cell.source = expected
    else:
        position = nb.cells.index(cell) if cell is not None else len(nb.cells)
        nb.cells.insert(position, new_code_cell(expected))
    jupytext.write(nb, path, fmt="py:percent")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="verify every notebook")
    mode.add_argument("--write", action="store_true", help="update every notebook's .py")
    parser.add_argument("--config", type=Path, default=CONFIG, help="the Jupyter Book config")
    parser.add_argument(
        "--notebooks", type=Path, default=ROOT / "notebooks", help="folder of NN_name.py files"
    )
    args = parser.parse_args(argv)
    expected = render_cell(args.config)
    if not (args.check or args.write):
        print(expected)
        return 0
    paths = notebook_sources(args.notebooks)
    if args.write:
        for path in paths:
            if write_first_cell(path, expected):
                print(f"updated {path}")
                if path.with_suffix(".ipynb").exists():
                    sync = [sys.executable, "-m", "jupytext", "--sync", str(path)]
                    subprocess.run(sync, check=True)
        return 0
    problems = [
        problem
        for path in paths
        for problem in check_first_cell(jupytext.read(path), expected, str(path))
    ]
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"colab_cell: {len(paths)} notebook(s) start with the standard setup cell")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
