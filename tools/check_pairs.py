"""Check that every notebook's two files agree (``make pairs``; part of ``make test``).

Each notebook is a jupytext pair (``jupytext.toml``): ``notebooks/NN_name.py`` in percent
format, which people edit and review, and ``notebooks/NN_name.ipynb``, the page source of the
book and what Colab opens. For every pair this checks that

1. both files exist;
2. they hold the same notebook (``jupytext.compare.compare_notebooks``, which raises on a
   difference; ``jupytext --diff`` exits 0 even when the files differ);
3. the committed ``.ipynb`` has no outputs and no execution counts, and carries a kernelspec
   (the Colab launch button needs one);
4. the first code cell is the standard Colab setup cell rendered from ``_config.yml``
   (``tools/colab_cell.py``);
5. the notebook is listed in ``_toc.yml``.

It exits non-zero naming each file at fault and the command that fixes it.

Usage: ``python tools/check_pairs.py [--root DIR]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jupytext
import nbformat
import yaml
from jupytext.compare import compare_notebooks

sys.path.insert(0, str(Path(__file__).resolve().parent))
import colab_cell  # noqa: E402  (a sibling script, not a package)

ROOT = Path(__file__).resolve().parents[1]


def toc_files(toc: Path) -> set[str]:
    """Every ``file:`` entry of a Jupyter Book ``_toc.yml`` (without suffix)."""
    found: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("file", "root") and isinstance(value, str):
                    found.add(str(Path(value).with_suffix("")))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    if toc.is_file():
        walk(yaml.safe_load(toc.read_text()))
    return found


def check_pair(py: Path, expected_cell: str, root: Path) -> list[str]:
    """Problems with one notebook pair ``py`` / ``py.with_suffix('.ipynb')`` (empty if none)."""
    rel = py.relative_to(root)
    ipynb = py.with_suffix(".ipynb")
    sync = f"jupytext --sync {rel}"
    if not ipynb.exists():
        return [f"{rel.with_suffix('.ipynb')}: missing; fix: {sync}"]
    problems: list[str] = []
    nb_py = jupytext.read(py)
    nb_ipynb = nbformat.read(ipynb, as_version=4)
    try:
        compare_notebooks(nb_ipynb, nb_py, fmt="py:percent")
    except Exception as err:  # jupytext raises NotebookDifference (and others) on a difference
        detail = str(err).replace("--- expected", "--- .ipynb").replace("+++ actual", "+++ .py")
        problems.append(
            f"{rel} and {rel.with_suffix('.ipynb')} differ; fix: {sync} "
            f"(the newer file wins)\n{detail.strip()}"
        )
    executed = [
        i
        for i, cell in enumerate(nb_ipynb.cells, start=1)
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count"))
    ]
    if executed:
        problems.append(
            f"{rel.with_suffix('.ipynb')}: cells {executed} have outputs or execution counts; "
            f"commit it without outputs; fix: jupytext --to ipynb {rel}"
        )
    if not nb_ipynb.metadata.get("kernelspec"):
        problems.append(
            f"{rel.with_suffix('.ipynb')}: no kernelspec (the Colab button needs one); fix: "
            f"jupytext --set-kernel python3 {rel} && {sync}"
        )
    problems += colab_cell.check_first_cell(nb_py, expected_cell, str(rel))
    if str(rel.with_suffix("")) not in toc_files(root / "_toc.yml"):
        problems.append(f"{rel}: not in _toc.yml; fix: add `- file: {rel.with_suffix('')}`")
    return problems


def check_all(root: Path = ROOT) -> list[str]:
    """Problems with every notebook pair under ``root/notebooks`` (empty if none)."""
    folder = root / "notebooks"
    expected_cell = colab_cell.render_cell(root / "_config.yml")
    problems: list[str] = []
    for py in colab_cell.notebook_sources(folder):
        problems += check_pair(py, expected_cell, root)
    for ipynb in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
        if not ipynb.with_suffix(".py").exists():
            rel = ipynb.relative_to(root)
            fix = f"jupytext --set-formats ipynb,py:percent {rel}"
            problems.append(f"{rel}: no paired .py; fix: {fix}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check the notebook pairs.")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    problems = check_all(root)
    for problem in problems:
        print(f"check_pairs: {problem}", file=sys.stderr)
    if problems:
        return 1
    count = len(colab_cell.notebook_sources(root / "notebooks"))
    print(f"check_pairs: {count} notebook pair(s) OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
