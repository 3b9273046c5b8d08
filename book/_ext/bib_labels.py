"""Sphinx extension of the book: the reference list is labelled author-year.

The book cites author-year (``bibtex_reference_style: author_year``); the default pybtex
style (``alpha``) would label the list's entries ``[HL22]``. This registers the pybtex
style ``ucdir_authoryear``: the ``unsrt`` formatting, sorted by author and year, with labels
such as ``Hu and Lee, 2022`` or ``He et al., 2020`` (``bibtex_default_style`` in _config.yml).
"""

from __future__ import annotations

from typing import Any

from pybtex.plugin import register_plugin
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle


def _last_name(person: Any) -> str:
    name = " ".join(person.last_names) or str(person)
    return name.replace("{", "").replace("}", "")


class AuthorYearLabels(BaseLabelStyle):
    """``Hu and Lee, 2022``; three authors or more: ``He et al., 2020``."""

    def format_labels(self, sorted_entries: Any) -> Any:
        for entry in sorted_entries:
            people = entry.persons.get("author") or entry.persons.get("editor") or []
            names = [_last_name(p) for p in people]
            if len(names) > 2:
                who = f"{names[0]} et al."
            elif len(names) == 2:
                who = f"{names[0]} and {names[1]}"
            else:
                who = names[0] if names else entry.key
            yield f"{who}, {entry.fields.get('year', 'n.d.')}"


class AuthorYearStyle(UnsrtStyle):
    default_label_style = "ucdir_authoryear"
    default_sorting_style = "author_year_title"


def setup(app: Any) -> dict[str, Any]:
    register_plugin("pybtex.style.labels", "ucdir_authoryear", AuthorYearLabels)
    register_plugin("pybtex.style.formatting", "ucdir_authoryear", AuthorYearStyle)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
