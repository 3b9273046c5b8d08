"""Tests of the book tooling in tools/: notebook pairs, the Colab cell, the build cache key,
the rendered-page checks, and the API page's coverage of the package."""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

build_book = importlib.import_module("build_book")
check_pairs = importlib.import_module("check_pairs")
colab_cell = importlib.import_module("colab_cell")
render_check = importlib.import_module("render_check")

NAME = "01_demo"


def _write_config(root: Path, url: str = "https://github.com/example/demo") -> None:
    (root / "_config.yml").write_text(
        f"title: demo\nrepository:\n  url: {url}\n  branch: main\n", encoding="utf-8"
    )


@pytest.fixture
def book(tmp_path: Path) -> Path:
    """A minimal repository with one consistent notebook pair notebooks/01_demo.{py,ipynb}."""
    _write_config(tmp_path)
    (tmp_path / "_toc.yml").write_text(
        f"format: jb-book\nroot: intro\nchapters:\n  - file: notebooks/{NAME}\n",
        encoding="utf-8",
    )
    (tmp_path / "notebooks").mkdir()
    nb = new_notebook(
        cells=[
            new_markdown_cell("# Demo\n\nSome $x$."),
            new_code_cell(colab_cell.render_cell(tmp_path / "_config.yml")),
            new_code_cell("x = 1\nprint(x)"),
        ],
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
    )
    jupytext.write(nb, tmp_path / "notebooks" / f"{NAME}.py", fmt="py:percent")
    paired = jupytext.read(tmp_path / "notebooks" / f"{NAME}.py")
    jupytext.write(paired, tmp_path / "notebooks" / f"{NAME}.ipynb")
    return tmp_path


def _edit_ipynb(root: Path, edit) -> None:
    path = root / "notebooks" / f"{NAME}.ipynb"
    nb = nbformat.read(path, as_version=4)
    edit(nb)
    nbformat.write(nb, path)


# ------------------------------------------------------------------------- check_pairs


def test_consistent_pair_passes(book: Path) -> None:
    assert check_pairs.check_all(book) == []
    assert check_pairs.main(["--root", str(book)]) == 0


def test_differing_pair_is_caught(book: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def change_code(nb):
        nb.cells[2].source = "x = 2\nprint(x)"

    _edit_ipynb(book, change_code)
    problems = check_pairs.check_all(book)
    assert len(problems) == 1
    assert "differ" in problems[0] and f"jupytext --sync notebooks/{NAME}.py" in problems[0]
    assert check_pairs.main(["--root", str(book)]) == 1
    assert f"notebooks/{NAME}.py" in capsys.readouterr().err


def test_differing_markdown_is_caught(book: Path) -> None:
    def change_text(nb):
        nb.cells[0].source = "# Demo\n\nOther text."

    _edit_ipynb(book, change_text)
    assert any("differ" in p for p in check_pairs.check_all(book))


def test_ipynb_with_outputs_is_caught(book: Path) -> None:
    def execute(nb):
        nb.cells[2].outputs = [new_output("stream", name="stdout", text="1\n")]
        nb.cells[2].execution_count = 1

    _edit_ipynb(book, execute)
    problems = check_pairs.check_all(book)
    assert len(problems) == 1 and "outputs" in problems[0] and f"{NAME}.ipynb" in problems[0]


def test_execution_count_alone_is_caught(book: Path) -> None:
    def count(nb):
        nb.cells[2].execution_count = 3

    _edit_ipynb(book, count)
    assert any("execution counts" in p for p in check_pairs.check_all(book))


def test_drifted_first_cell_is_caught(book: Path) -> None:
    # The repository URL changes in _config.yml: every notebook's first cell is now stale.
    _write_config(book, url="https://github.com/example/moved")
    problems = check_pairs.check_all(book)
    assert len(problems) == 1
    assert "Colab setup cell" in problems[0] and "colab_cell.py --write" in problems[0]


def test_missing_ipynb_kernelspec_and_toc_entry_are_caught(book: Path) -> None:
    (book / "_toc.yml").write_text("format: jb-book\nroot: intro\n", encoding="utf-8")
    assert any("not in _toc.yml" in p for p in check_pairs.check_all(book))
    (book / "notebooks" / f"{NAME}.ipynb").unlink()
    assert any(f"{NAME}.ipynb: missing" in p for p in check_pairs.check_all(book))


def test_missing_kernelspec_is_caught(book: Path) -> None:
    for suffix in (".py", ".ipynb"):
        path = book / "notebooks" / f"{NAME}{suffix}"
        nb = jupytext.read(path)
        nb.metadata.pop("kernelspec")
        jupytext.write(nb, path, fmt="py:percent" if suffix == ".py" else None)
    assert any("kernelspec" in p for p in check_pairs.check_all(book))


def test_orphan_ipynb_is_caught(book: Path) -> None:
    shutil.copy(book / "notebooks" / f"{NAME}.ipynb", book / "notebooks" / "02_orphan.ipynb")
    assert any("02_orphan.ipynb: no paired .py" in p for p in check_pairs.check_all(book))


def test_toc_files_reads_nested_entries(tmp_path: Path) -> None:
    toc = tmp_path / "_toc.yml"
    toc.write_text(
        "format: jb-book\nroot: book/intro\nparts:\n  - caption: A\n    chapters:\n"
        "      - file: notebooks/01_a.ipynb\n        sections:\n          - file: book/b\n",
        encoding="utf-8",
    )
    assert check_pairs.toc_files(toc) == {"book/intro", "notebooks/01_a", "book/b"}


def test_repository_notebooks_pass() -> None:
    assert check_pairs.check_all(ROOT) == []


# ------------------------------------------------------------------------- colab_cell


def test_cell_is_rendered_from_config(tmp_path: Path) -> None:
    _write_config(tmp_path, url="https://github.com/example/other/")
    cell = colab_cell.render_cell(tmp_path / "_config.yml")
    assert '"git+https://github.com/example/other@main"' in cell
    assert '"google.colab" in sys.modules' in cell
    compile(cell, "<colab cell>", "exec")  # valid Python


def test_the_repository_url_lives_only_in_config() -> None:
    url, _ = colab_cell.read_repository(ROOT / "_config.yml")
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")):
        assert url in path.read_text(encoding="utf-8")  # rendered into the first cell
    for path in sorted((ROOT / "tools").glob("*.py")):
        assert url not in path.read_text(encoding="utf-8"), f"{path} hard-codes the URL"


def test_bad_repository_url_is_a_value_error(tmp_path: Path) -> None:
    _write_config(tmp_path, url="github.com/example/demo")
    with pytest.raises(ValueError, match="repository.url"):
        colab_cell.render_cell(tmp_path / "_config.yml")
    with pytest.raises(FileNotFoundError):
        colab_cell.render_cell(tmp_path / "missing.yml")


def test_running_the_cell_locally_does_nothing() -> None:
    namespace: dict = {}
    exec(colab_cell.render_cell(), namespace)  # not on Colab: no pip call, no error
    assert "google.colab" not in sys.modules


def test_write_replaces_a_drifted_cell_and_inserts_a_missing_one(book: Path) -> None:
    _write_config(book, url="https://github.com/example/moved")
    expected = colab_cell.render_cell(book / "_config.yml")
    py = book / "notebooks" / f"{NAME}.py"
    assert colab_cell.write_first_cell(py, expected) is True
    assert colab_cell.write_first_cell(py, expected) is False  # idempotent
    nb = jupytext.read(py)
    assert colab_cell.check_first_cell(nb, expected, "demo") == []
    assert sum(cell.cell_type == "code" for cell in nb.cells) == 2

    nb.cells = [c for c in nb.cells if c.cell_type == "markdown" or "x = 1" in c.source]
    jupytext.write(nb, py, fmt="py:percent")
    assert colab_cell.write_first_cell(py, expected) is True
    nb = jupytext.read(py)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert code[0].strip() == expected.strip() and "x = 1" in code[1]


# ------------------------------------------------------------------------- build_book


@pytest.fixture
def package(tmp_path: Path) -> Path:
    (tmp_path / "ucdir_lite" / "sub").mkdir(parents=True)
    (tmp_path / "ucdir_lite" / "__init__.py").write_text("x = 1\n")
    (tmp_path / "ucdir_lite" / "sub" / "mod.py").write_text("y = 2\n")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'demo'\n")
    return tmp_path


def test_package_hash_changes_when_a_package_file_changes(package: Path) -> None:
    before = build_book.package_hash(package, smoke="")
    assert build_book.package_hash(package, smoke="") == before  # deterministic
    (package / "ucdir_lite" / "sub" / "mod.py").write_text("y = 3\n")
    after = build_book.package_hash(package, smoke="")
    assert after != before
    (package / "ucdir_lite" / "new.py").write_text("")
    assert build_book.package_hash(package, smoke="") != after


def test_package_hash_covers_pyproject_and_smoke(package: Path) -> None:
    before = build_book.package_hash(package, smoke="")
    assert build_book.package_hash(package, smoke="1") != before
    (package / "pyproject.toml").write_text("[project]\nname = 'demo2'\n")
    assert build_book.package_hash(package, smoke="") != before


def test_package_hash_ignores_non_python_files(package: Path) -> None:
    before = build_book.package_hash(package, smoke="")
    (package / "ucdir_lite" / "notes.txt").write_text("scratch")
    assert build_book.package_hash(package, smoke="") == before


def test_package_hash_of_the_repository_runs() -> None:
    assert len(build_book.package_hash(ROOT, smoke="")) == 64
    with pytest.raises(FileNotFoundError, match="ucdir_lite"):
        build_book.package_hash(ROOT / "tools")


def test_stale_cache_is_deleted_and_a_fresh_one_kept(tmp_path: Path) -> None:
    cache = tmp_path / ".jupyter_cache"
    cache.mkdir()
    (cache / "global.db").write_text("outputs")
    (tmp_path / build_book.HASH_FILE).write_text("abc\n")
    assert build_book.invalidate_stale_cache(tmp_path, "abc") is False
    assert cache.exists()
    assert build_book.invalidate_stale_cache(tmp_path, "def") is True
    assert not cache.exists()
    # No stamp yet (first build): stale too.
    assert build_book.invalidate_stale_cache(tmp_path / "fresh", "abc") is True


# ------------------------------------------------------------------------- render_check

PAGE = """<html><body><main>{body}</main></body></html>"""
COLAB = '<a href="https://colab.research.google.com/github/x/y/blob/main/nb.ipynb">Colab</a>'
FIGURE = '<div class="cell_output docutils container"><img src="a.png"></div>'


def test_stderr_outputs_are_counted() -> None:
    body = '<div class="cell_output"><div class="output stderr"><pre>Warn</pre></div></div>'
    assert render_check.read_dom(PAGE.format(body=body)).stderr_outputs == 1
    assert render_check.check_dom(PAGE.format(body=COLAB + FIGURE + body), True) == []


def test_clean_pages_pass() -> None:
    rendered = '<p>Text <mjx-container class="MathJax"><mjx-math>x</mjx-math></mjx-container></p>'
    assert render_check.check_dom(PAGE.format(body=rendered), notebook=False) == []
    assert render_check.check_dom(PAGE.format(body=COLAB + FIGURE), notebook=True) == []


def test_raw_math_is_caught_outside_code_only() -> None:
    for raw in ('<span class="math">\\(x^2\\)</span>', "<p>$$x$$</p>", "<div>\\[a\\]</div>"):
        problems = render_check.check_dom(PAGE.format(body=raw), notebook=False)
        assert problems and "MathJax" in problems[0]
    in_code = "<pre>price = $$ + \\(</pre><code>\\[</code>"
    assert render_check.check_dom(PAGE.format(body=in_code), notebook=False) == []
    in_script = "<script>var s = '$$';</script>"
    assert render_check.check_dom(PAGE.format(body=in_script), notebook=False) == []


def test_traceback_in_an_output_is_caught() -> None:
    error = (
        '<div class="cell_output docutils container"><div class="output traceback">'
        "<pre>ValueError: bad</pre></div></div>"
    )
    text = (
        '<div class="cell_output docutils container"><pre>Traceback (most recent call last):'
        "\n  File x</pre></div>"
    )
    for body in (error, text):
        problems = render_check.check_dom(PAGE.format(body=COLAB + FIGURE + body), True)
        assert problems == ["a Python traceback in a cell output"]


def test_notebook_without_figure_or_colab_link_is_caught() -> None:
    text_only = '<div class="cell_output docutils container"><pre>1</pre></div>'
    problems = render_check.check_dom(PAGE.format(body=COLAB + text_only), notebook=True)
    assert problems == ["a notebook page without a figure (no img/svg in any cell output)"]
    figure_outside = '<img src="logo.png">'
    assert render_check.check_dom(PAGE.format(body=COLAB + figure_outside), notebook=True)
    assert render_check.check_dom(PAGE.format(body=FIGURE), notebook=True) == [
        "a notebook page without its Colab launch link"
    ]


def test_html_pages_skip_assets_and_the_redirect(tmp_path: Path) -> None:
    for rel in ("index.html", "book/intro.html", "_static/x.html", "search.html",
                "genindex.html", "mathjax/a.html", "notebooks/01_a.html"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("<html></html>")
    redirect = '<meta http-equiv="Refresh" content="0; url=book/intro.html" />'
    (tmp_path / "index.html").write_text(redirect)
    pages = [p.as_posix() for p in render_check.html_pages(tmp_path)]
    assert pages == ["book/intro.html", "notebooks/01_a.html"]


# ------------------------------------------------------------------------- the book


def test_api_page_documents_every_public_module() -> None:
    api = (ROOT / "book" / "api.md").read_text(encoding="utf-8")
    modules = sorted(
        p.stem for p in (ROOT / "ucdir_lite").glob("*.py") if not p.stem.startswith("_")
    )
    missing = [m for m in modules if f".. automodule:: ucdir_lite.{m}\n" not in api]
    assert not missing, f"add these modules to book/api.md: {missing}"


def test_every_cited_key_is_in_the_bibliography() -> None:
    import re

    bib = (ROOT / "references.bib").read_text(encoding="utf-8")
    keys = set(re.findall(r"@\w+\{([^,]+),", bib))
    sources = list((ROOT / "book").glob("*.md")) + list((ROOT / "notebooks").glob("*.py"))
    cited = {
        key.strip()
        for path in sources
        for group in re.findall(r"\{cite[pt]?\}`([^`]+)`", path.read_text(encoding="utf-8"))
        for key in group.split(",")
    }
    assert cited and cited <= keys, f"unknown citation keys: {sorted(cited - keys)}"


# --- find_leaks: what a built page must not show ---------------------------------------------

LEAKS = {
    "<p>as in spec §5</p>": "project spec",
    "<p>see <code>shared/spec/method.md</code></p>": "project spec",
    "<pre>benchmark in /root/.cache/ucdir_lite/x</pre>": "absolute path",
    "<pre>/home/alice/runs</pre>": "absolute path",
    "<pre>written to /tmp/abc/def</pre>": "absolute path",
    "<pre>run folder clipart-sketch-s0-e60-5d4fb245697c5977</pre>": "hashed cache folder",
    "<pre>glyphs-v1-93ffba02</pre>": "hashed cache folder",
}


@pytest.mark.parametrize("text", sorted(LEAKS))
def test_leaks_are_caught(text: str) -> None:
    problems = render_check.page_leaks(text, paths=[])
    assert len(problems) == 1 and LEAKS[text] in problems[0], problems


def test_machine_paths_are_caught(tmp_path: Path) -> None:
    problems = render_check.page_leaks(f"<pre>{tmp_path}/data</pre>", paths=[str(tmp_path)])
    assert any(str(tmp_path) in p for p in problems)


def test_clean_text_has_no_leaks() -> None:
    text = ("<p>the run cache <code>~/.cache/ucdir_lite/runs</code>, "
            "<a href='https://example.org/home/page'>a link</a>, Hu &amp; Lee 2022, §3</p>")
    assert render_check.page_leaks(text, paths=[]) == []


def test_find_leaks_reads_every_page(tmp_path: Path) -> None:
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01.html").write_text("<p>spec §1</p>")
    (tmp_path / "intro.html").write_text("<p>fine</p>")
    assert list(render_check.find_leaks(tmp_path)) == ["notebooks/01.html"]


def test_build_fails_on_a_leak(tmp_path: Path) -> None:
    (tmp_path / "intro.html").write_text(f"<pre>{Path.home()}/secret</pre>")
    assert build_book.check_leaks(tmp_path) == 1
    (tmp_path / "intro.html").write_text("<p>fine</p>")
    assert build_book.check_leaks(tmp_path) == 0


def test_generated_parts_of_the_prose_pages(tmp_path: Path) -> None:
    files = build_book.write_generated(tmp_path)
    assert sorted(p.name for p in files) == ["cpu_objective.md", "method_overview.png",
                                             "presets.md"]
    text = (tmp_path / "cpu_objective.md").read_text()
    assert text.startswith("$$\n\\mathcal{L} = ") and "epoch" in text
    assert "| `num_clusters` |" in (tmp_path / "presets.md").read_text()


@pytest.mark.parametrize("doc", [
    "ResNets: 3x3 stem without max-pool (None: automatic, True when image_size <= 64).",
    "Generated benchmark only: number of classes.",
    "lambda_SE.",
])
def test_attribute_docstrings_keep_their_text(doc: str) -> None:
    """napoleon (Google, then NumPy) splits 'a: b' into a type; the book's extension undoes it."""
    from sphinx.ext.napoleon import Config
    from sphinx.ext.napoleon.docstring import GoogleDocstring, NumpyDocstring

    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    extension = importlib.import_module("attribute_docstrings")
    config = Config()
    lines = GoogleDocstring([doc], config, what="attribute", name="x").lines()
    lines = NumpyDocstring(lines, config, what="attribute", name="x").lines()
    extension._restore_first_line(None, "attribute", "x", None, None, lines)
    assert lines == [doc]


def test_every_named_package_object_exists() -> None:
    """Every ``ucdir_lite.module.name`` the prose names (book pages, notebooks, README) exists:
    a function moved to another module leaves no reference a reader cannot follow (the
    differences page still sent readers to ``ucdir_lite.train.epoch_indices`` after it moved
    to ``ucdir_lite.data``)."""
    import re

    texts = [*ROOT.glob("book/*.md"), *ROOT.glob("notebooks/*.py"), ROOT / "README.md"]
    named = set()
    for path in texts:
        for match in re.finditer(r"ucdir_lite\.([a-z_]+)\.([A-Za-z_]\w*)", path.read_text()):
            named.add((path.name, match.group(1), match.group(2)))
    assert len(named) > 20, "the pattern no longer finds the references"
    missing = []
    for page, module, name in sorted(named):
        try:
            found = hasattr(importlib.import_module(f"ucdir_lite.{module}"), name)
        except ImportError:
            found = False
        if not found:
            missing.append(f"{page}: ucdir_lite.{module}.{name}")
    assert not missing, missing
