"""Look at the built book the way a reader does (``make check-rendered``).

Builds the book (``tools/build_book.py``; ``--no-build`` uses the existing HTML), serves it on
127.0.0.1, opens every page in headless Chromium (installing Debian's ``chromium`` with apt if
it is missing), saves a screenshot of each page to ``screenshots/`` and checks the DOM after
the page's scripts ran (``--dump-dom``). It fails when a page

- shows raw TeX (``$$``, ``\\(``, ``\\[`` in its text outside code): MathJax did not run;
- shows a Python traceback in an output;
- is a notebook page without a figure (an ``img`` or ``svg`` in a cell output) or without
  its Colab launch link.

``find_leaks`` (no browser needed) reads the built HTML of every page and reports what a reader
cannot follow or should not see: a reference to a file outside the repository ("spec §N",
``shared/spec``), an absolute path of the build machine (``/root/``, ``/home/``, ``/tmp/``,
``/Users/``, the repository's own folder, the user's home or temporary folder, the run cache
and data folders expanded) and a hashed cache folder name. ``tools/build_book.py`` runs it
after every build, so ``make book`` and ``make book-smoke`` (and so ``make test``) fail on one.

Outputs on stderr (warnings, progress bars) are reported as notes, not failures.

Usage: ``python tools/render_check.py [--no-build] [--smoke] [--html DIR] [--out DIR]
[--height PX]``
"""

from __future__ import annotations

import argparse
import functools
import html
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {"_static", "_sources", "_images", "_modules", "mathjax", "_sphinx_design_static"}
SKIP_PAGES = {"genindex.html", "search.html", "py-modindex.html"}
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=5000",
)
RAW_MATH = ("$$", "\\(", "\\[")
# What a built page must not show (find_leaks): references to files outside the repository,
# absolute paths of the build machine, hashed cache folder names.
LEAK_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("a reference to the project spec (cite the paper or a chapter)",
     re.compile(r"\bspec\s*§|shared/spec", re.IGNORECASE)),
    ("an absolute path of the build machine",
     re.compile(r"(?<![\w:/.~-])/(?:root|home|tmp|Users|private/var)/[^\s<>\"']*")),
    ("a hashed cache folder name",
     re.compile(r"\b(?:glyphs-v\d+-[0-9a-f]{8}|[\w]+-[\w]+-s\d+-e\d+-[0-9a-f]{16})\b")),
)
TRACEBACK = "Traceback (most recent call last)"


def find_chromium(install: bool = True) -> str:
    """Path of a Chromium binary; installs Debian's ``chromium`` with apt when allowed."""
    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path
    if not install:
        raise FileNotFoundError("no chromium on PATH: apt-get install -y chromium")
    if os.geteuid() != 0:
        raise FileNotFoundError("no chromium on PATH and not root: sudo apt-get install chromium")
    print("render_check: installing chromium (apt-get) ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env)
    return find_chromium(install=False)


def html_pages(html_dir: Path) -> list[Path]:
    """The content pages of a built book, relative to ``html_dir``, sorted."""
    pages = []
    for path in sorted(html_dir.rglob("*.html")):
        rel = path.relative_to(html_dir)
        if rel.parts[0] in SKIP_DIRS or rel.parts[0].startswith(".") or rel.name in SKIP_PAGES:
            continue
        if rel == Path("index.html") and "http-equiv" in path.read_text(errors="ignore")[:2000]:
            continue  # Jupyter Book's redirect to the root page
        pages.append(rel)
    return pages


def is_notebook_page(html_dir: Path, page: Path) -> bool:
    """True when the page was built from an .ipynb (Sphinx keeps its source in _sources/)."""
    return (html_dir / "_sources" / page.with_suffix(".ipynb")).exists()


class _DomReader(HTMLParser):
    """Collects a page's visible text outside code, and what its cell outputs hold."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
            "source", "track", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool, bool, bool]] = []  # tag, hidden, code, output
        self.text: list[str] = []
        self.output_text: list[str] = []
        self.output_figures = 0
        self.traceback_outputs = 0
        self.stderr_outputs = 0
        self.links: list[str] = []

    def _state(self) -> tuple[bool, bool, bool]:
        return self.stack[-1][1:] if self.stack else (False, False, False)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        hidden, code, output = self._state()
        hidden = hidden or tag in ("script", "style", "noscript", "template", "mjx-assistive-mml")
        code = code or tag in ("pre", "code", "kbd", "samp", "textarea")
        output = output or "cell_output" in classes
        if output and "traceback" in classes:
            self.traceback_outputs += 1
        if output and "stderr" in classes:
            self.stderr_outputs += 1
        if output and tag in ("img", "svg"):
            self.output_figures += 1
        if tag == "a" and attributes.get("href"):
            self.links.append(attributes["href"] or "")
        if tag not in self.VOID:
            self.stack.append((tag, hidden, code, output))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break

    def handle_data(self, data: str) -> None:
        hidden, code, output = self._state()
        if hidden:
            return
        if output:
            self.output_text.append(data)
        if not code:
            self.text.append(data)


def read_dom(dom: str) -> _DomReader:
    """Parse a rendered page."""
    reader = _DomReader()
    reader.feed(dom)
    return reader


def check_dom(dom: str, notebook: bool) -> list[str]:
    """Problems a reader would see on a page whose rendered DOM is ``dom`` (empty if none)."""
    reader = read_dom(dom)
    text = "".join(reader.text)
    problems = [f"raw math {token!r} in the page text: MathJax did not render it"
                for token in RAW_MATH if token in text]
    if reader.traceback_outputs or TRACEBACK in "".join(reader.output_text):
        problems.append("a Python traceback in a cell output")
    if notebook and reader.output_figures == 0:
        problems.append("a notebook page without a figure (no img/svg in any cell output)")
    if notebook and not any("colab.research.google.com" in link for link in reader.links):
        problems.append("a notebook page without its Colab launch link")
    return problems


def machine_paths() -> list[str]:
    """Absolute folders of this machine that a built page must not show: the repository, the
    home and temporary folders, and the data and run caches (``$UCDIR_DATA``, ``$UCDIR_RUNS``)
    when set. Only folders at least two levels deep (``/a/b``), so that ``/`` never matches."""
    import tempfile

    candidates = [ROOT, Path.home(), Path(tempfile.gettempdir())]
    candidates += [Path(os.environ[name]).expanduser() for name in ("UCDIR_DATA", "UCDIR_RUNS")
                   if os.environ.get(name)]
    paths = {str(p.resolve()) for p in candidates} | {str(p) for p in candidates}
    return sorted((p for p in paths if p.count("/") >= 2), key=len, reverse=True)


def page_leaks(text: str, paths: list[str] | None = None) -> list[str]:
    """What a reader should not see in one page's HTML ``text`` (an empty list if nothing):
    each problem once, with the first offending string."""
    text = html.unescape(text)
    problems = []
    for what, pattern in LEAK_PATTERNS:
        if match := pattern.search(text):
            problems.append(f"{what}: {match.group(0)[:80]!r}")
    for path in machine_paths() if paths is None else paths:
        if re.search(re.escape(path) + r"(?![\w.-])", text):
            problems.append(f"an absolute path of the build machine: {path!r}")
            break
    return problems


def find_leaks(html_dir: Path) -> dict[str, list[str]]:
    """``{page: problems}`` for every content page of a built book that shows a reference
    outside the repository, a machine path or a hashed cache folder (``page_leaks``)."""
    paths = machine_paths()
    found = {}
    for page in html_pages(html_dir):
        problems = page_leaks((html_dir / page).read_text(errors="ignore"), paths)
        if problems:
            found[page.as_posix()] = problems
    return found


@contextmanager
def serve(html_dir: Path) -> Iterator[str]:
    """Serve ``html_dir`` on 127.0.0.1 (a free port) for the duration; yields the base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(html_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def run_chromium(chromium: str, url: str, *extra: str, timeout: float = 120) -> str:
    """Run headless Chromium on ``url`` with a fresh profile; return its stdout."""
    with tempfile.TemporaryDirectory(prefix="ucdir-chromium-") as profile:
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"chromium failed on {url}: {result.stderr.strip()[-500:]}")
    return result.stdout


def check_book(
    html_dir: Path, out_dir: Path, chromium: str, height: int = 2400
) -> dict[str, list[str]]:
    """Screenshot (1280 x ``height`` pixels, the top of the page) and check every page;
    returns the problems per page (all pages listed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, list[str]] = {}
    with serve(html_dir) as base:
        for page in html_pages(html_dir):
            url = f"{base}/{page.as_posix()}"
            shot = out_dir / (page.with_suffix("").as_posix().replace("/", "__") + ".png")
            run_chromium(chromium, url, f"--screenshot={shot}",
                         f"--window-size=1280,{height}")
            dom = run_chromium(chromium, url, "--dump-dom")
            problems = check_dom(dom, is_notebook_page(html_dir, page))
            report[page.as_posix()] = problems
            status = "; ".join(problems) if problems else "OK"
            print(f"render_check: {page.as_posix()}: {status} ({shot.name})")
            if stderr := read_dom(dom).stderr_outputs:
                print(f"render_check: note: {page.as_posix()} shows {stderr} stderr output(s) "
                      "(warnings or progress bars): silence them at their source")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render every page and check what it shows.")
    parser.add_argument("--no-build", action="store_true", help="use the existing HTML")
    parser.add_argument("--smoke", action="store_true", help="the smoke build (_build/smoke)")
    parser.add_argument("--html", type=Path, default=None, help="the built HTML folder")
    parser.add_argument("--out", type=Path, default=ROOT / "screenshots", help="screenshots")
    parser.add_argument("--height", type=int, default=2400, help="screenshot height in pixels "
                        "(default 2400, the top of a page; e.g. 16000 to see whole notebooks)")
    args = parser.parse_args(argv)
    build = ROOT / "_build" / "smoke" / "_build" if args.smoke else ROOT / "_build"
    html_dir = (args.html or build / "html").resolve()
    if not args.no_build:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import build_book

        if build_book.build(smoke=args.smoke) != 0:
            print("render_check: the build failed", file=sys.stderr)
            return 1
    if not (html_dir / "index.html").exists():
        print(f"render_check: no built book in {html_dir}: run `make book` first", file=sys.stderr)
        return 1
    report = check_book(html_dir, args.out.resolve(), find_chromium(), args.height)
    for page, problems in find_leaks(html_dir).items():
        report.setdefault(page, []).extend(problems)
    failed = {page: problems for page, problems in report.items() if problems}
    for page, problems in failed.items():
        for problem in problems:
            print(f"render_check: FAIL {page}: {problem}", file=sys.stderr)
    print(f"render_check: {len(report) - len(failed)}/{len(report)} pages OK; "
          f"screenshots in {args.out}")
    return 1 if failed or not report else 0


if __name__ == "__main__":
    sys.exit(main())
