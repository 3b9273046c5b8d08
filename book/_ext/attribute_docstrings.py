"""Sphinx extension of the book: attribute docstrings render as prose.

``sphinx.ext.napoleon`` reads the first line of an attribute's docstring as ``type:
description`` when it holds a colon, so ``"Generated benchmark only: number of classes."``
(a ``TrainConfig`` field) rendered as "Type: Generated benchmark only". The package's
attribute docstrings never state a type (the annotation does), so this handler, run after
napoleon's, puts the text back together: it removes the ``:type:`` lines napoleon added (one
per pass, Google then NumPy) and restores the words before each colon.
"""

from __future__ import annotations

from typing import Any


def _restore_first_line(app: Any, what: str, name: str, obj: Any, options: Any,
                        lines: list[str]) -> None:
    if what not in ("attribute", "data", "property"):
        return
    # napoleon's Google and NumPy passes each split one colon off: undo the last split first
    while typed := [i for i, line in enumerate(lines) if line.startswith(":type: ")]:
        i = typed[-1]
        head = lines[i][len(":type: "):].strip()
        del lines[i]
        if i > 0 and not lines[i - 1].strip():
            del lines[i - 1]
        first = next((j for j, line in enumerate(lines) if line.strip()), None)
        if first is None:
            lines.append(head)
        else:
            lines[first] = f"{head}: {lines[first].lstrip()}"


def setup(app: Any) -> dict[str, Any]:
    app.connect("autodoc-process-docstring", _restore_first_line, priority=600)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
