"""Sphinx extension of the book: attribute docstrings render as prose.

``sphinx.ext.napoleon`` reads the first line of an attribute's docstring as ``type:
description`` when it holds a colon, so ``"Generated benchmark only: number of classes."``
(a ``TrainConfig`` field) rendered as "Type: Generated benchmark only". The package's
attribute docstrings never state a type (the annotation does), so this handler, run before
napoleon's, puts an empty first line in front of them: napoleon then finds no type and keeps
the text as it is.
"""

from __future__ import annotations

from typing import Any


def _no_inline_type(app: Any, what: str, name: str, obj: Any, options: Any,
                    lines: list[str]) -> None:
    if what in ("attribute", "data", "property") and lines and lines[0].strip():
        lines.insert(0, "")


def setup(app: Any) -> dict[str, Any]:
    app.connect("autodoc-process-docstring", _no_inline_type, priority=400)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
