"""Build the book: ``make book`` (full) and ``make book-smoke`` (``--smoke``, part of CI).

Steps:

1. make sure the offline MathJax 3 is unpacked in ``book/_mathjax/mathjax/`` (git-ignored;
   from the npm registry with ``npm pack mathjax@3``, else from the PyPI wheel
   ``django-static-mathjax``); ``_config.yml`` serves it through ``html_extra_path``;
2. make sure the embedded data set exists (``ucdir_lite.glyphs.ensure_benchmark``), and
   write the generated parts of the prose pages into ``book/_generated/`` (git-ignored): the
   method overview figure (``ucdir_lite.plots.method_overview``), the ``cpu`` preset's
   objective and the table of presets (``ucdir_lite.chapter``), so that the introduction and
   the differences page print what the code trains instead of typing it;
3. clear the notebook execution cache when the package changed: jupyter-cache keys a notebook
   only on its code cells, so a change in ``ucdir_lite`` alone would otherwise keep serving
   outputs computed with the old code. The key is a hash of ``ucdir_lite/**/*.py``,
   ``pyproject.toml`` and ``UCDIR_SMOKE``, kept in ``<build>/.ucdir_hash``; on a mismatch the
   cache is deleted and every page is re-read (``--all``);
4. ``jupyter-book build . -W -n --keep-going`` (a warning or a failing cell fails the build);
5. ``render_check.find_leaks`` on the built HTML: a page that shows "spec §", an absolute path
   of the build machine or a hashed cache folder fails the build too;
   exits non-zero on failure and prints the build time.

Build folders: the full book goes to ``_build/html`` (its cache in ``_build/.jupyter_cache``).
``--smoke`` sets ``UCDIR_SMOKE=1`` (smaller workloads through the same code paths) and builds
into ``_build/smoke/_build/html`` with its own cache, so smoke outputs never reach the full
book (and a smoke build never invalidates the full book's cache); the full build unsets
``UCDIR_SMOKE``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MATHJAX_VERSION = "3.2.2"
MATHJAX_PYPI = "django-static-mathjax==3.2.2.1"
MATHJAX_DIR = ROOT / "book" / "_mathjax" / "mathjax"
MATHJAX_ENTRY = "tex-mml-chtml.js"
HASH_FILE = ".ucdir_hash"
JUPYTER_BOOK = "import sys; from jupyter_book.cli.main import main; sys.exit(main())"


def package_hash(root: Path = ROOT, smoke: str | None = None) -> str:
    """SHA-256 over the package sources, ``pyproject.toml`` and the smoke switch.

    Args:
        root: repository root holding ``ucdir_lite/`` and ``pyproject.toml``.
        smoke: the value of ``UCDIR_SMOKE`` to fold in (``None``: read the environment).
    """
    if not (root / "ucdir_lite").is_dir():
        raise FileNotFoundError(f"no ucdir_lite/ package under {root}: pass the repository root")
    digest = hashlib.sha256()
    files = sorted((root / "ucdir_lite").rglob("*.py")) + [root / "pyproject.toml"]
    for path in files:
        if path.is_file():
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    smoke = os.environ.get("UCDIR_SMOKE", "") if smoke is None else smoke
    digest.update(f"UCDIR_SMOKE={smoke}".encode())
    return digest.hexdigest()


def invalidate_stale_cache(build_dir: Path, digest: str) -> bool:
    """Delete ``build_dir/.jupyter_cache`` if ``build_dir/.ucdir_hash`` differs from ``digest``.

    Returns True when the cache was stale (the caller then re-reads every page).
    """
    stamp = build_dir / HASH_FILE
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return False
    shutil.rmtree(build_dir / ".jupyter_cache", ignore_errors=True)
    return True


def _unpack_npm(dest: Path, tmp: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm not found")
    subprocess.run(
        [npm, "pack", f"mathjax@{MATHJAX_VERSION}", "--silent", "--pack-destination", str(tmp)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with tarfile.open(tmp / f"mathjax-{MATHJAX_VERSION}.tgz") as tar:
        tar.extractall(tmp, filter="data")
    shutil.copytree(tmp / "package" / "es5", dest)
    shutil.copy(tmp / "package" / "LICENSE", dest / "LICENSE")


def _unpack_pypi(dest: Path, tmp: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(tmp), MATHJAX_PYPI],
        check=True,
    )
    wheel = next(tmp.glob("*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp / "wheel")
    entry = next((tmp / "wheel").rglob(MATHJAX_ENTRY))
    shutil.copytree(entry.parent, dest)


def ensure_mathjax(dest: Path = MATHJAX_DIR) -> Path:
    """Unpack MathJax 3 (es5 build) into ``dest`` unless it is there; return ``dest``."""
    if (dest / MATHJAX_ENTRY).is_file():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for unpack in (_unpack_npm, _unpack_pypi):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                unpack(dest, Path(tmp))
                print(f"build_book: MathJax {MATHJAX_VERSION} unpacked into {dest}")
                return dest
            except (OSError, RuntimeError, StopIteration, subprocess.CalledProcessError) as err:
                errors.append(f"{unpack.__name__}: {err!r}")
                shutil.rmtree(dest, ignore_errors=True)
    raise RuntimeError(
        "could not fetch MathJax 3 (" + "; ".join(errors) + "): install npm or pip access, or "
        f"unpack MathJax's es5/ folder into {dest} by hand"
    )


def ensure_data(smoke: bool) -> None:
    """Generate the embedded glyph benchmark the notebooks use, unless it is there.

    That is the benchmark of the ``smoke`` or ``cpu`` preset, through the trainer's own
    ``ucdir_lite.data.data_root``.
    """
    from ucdir_lite.config import book_preset, get_preset
    from ucdir_lite.data import data_root

    root = data_root(get_preset(book_preset(smoke)))
    print(f"build_book: embedded data ready in {root}")


def check_leaks(html_dir: Path) -> int:
    """1 (and the problems on stderr) when a built page shows a reference outside the
    repository, a machine path or a hashed cache folder (``render_check.find_leaks``), else 0."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from render_check import find_leaks

    leaks = find_leaks(html_dir)
    for page, problems in leaks.items():
        for problem in problems:
            print(f"build_book: FAIL {page}: {problem}", file=sys.stderr)
    return 1 if leaks else 0


GENERATED = ROOT / "book" / "_generated"


def write_generated(dest: Path = GENERATED) -> list[Path]:
    """Write the parts of the prose pages that come from the code into ``dest``: the method
    overview figure, the ``cpu`` preset's objective (a MyST math block) and the presets table.
    Returns the files written."""
    from ucdir_lite import chapter, plots
    from ucdir_lite.config import get_preset

    dest.mkdir(parents=True, exist_ok=True)
    cpu = get_preset("cpu")
    dd_start = cpu.dd_start if cpu.dd_start is not None else cpu.warmup_epochs
    files = {
        "cpu_objective.md": (
            "$$\n" + chapter.objective(cpu) + "\n$$\n\n"
            f"after a warm-up of {cpu.warmup_epochs} epochs on $\\mathcal{{L}}_{{IW}}$ alone, "
            f"for {cpu.epochs - cpu.warmup_epochs} more epochs; $\\mathcal{{L}}_{{DD}}$ starts "
            f"at epoch {dd_start}. The loss forms are `cw_variant=\"{cpu.cw_variant}\"`, "
            f"`se_variant=\"{cpu.se_variant}\"` and `dd_variant=\"{cpu.dd_variant}\"`, with "
            f"$K = {cpu.num_clusters}$ clusters per domain for {cpu.num_classes} classes.\n"),
        "presets.md": chapter.preset_table(("cpu",)) + "\n\nThe paper-protocol presets "
        "(the official code's values), for comparison:\n\n"
        + chapter.preset_table(("office-home", "domainnet")) + "\n",
    }
    written = []
    for name, text in files.items():
        path = dest / name
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
        written.append(path)
    figure = dest / "method_overview.png"
    plots.save_png(plots.method_overview(), figure, dpi=150)
    return [*written, figure]


def build(smoke: bool, force_all: bool = False, root: Path = ROOT) -> int:
    """Run the whole build; return the exit code of ``jupyter-book build``."""
    env = dict(os.environ)
    if smoke:
        env["UCDIR_SMOKE"] = "1"
    else:
        env.pop("UCDIR_SMOKE", None)  # the full book never holds smoke outputs
    path_output = root / "_build" / "smoke" if smoke else root
    build_dir = path_output / "_build"
    start = time.perf_counter()
    ensure_mathjax()
    ensure_data(smoke)
    write_generated()
    digest = package_hash(root, env.get("UCDIR_SMOKE", ""))
    if invalidate_stale_cache(build_dir, digest):
        print(f"build_book: package sources changed: cleared {build_dir / '.jupyter_cache'}")
        force_all = True
    cmd = [sys.executable, "-c", JUPYTER_BOOK, "build", str(root), "-W", "-n", "--keep-going"]
    if smoke:
        cmd += ["--path-output", str(path_output)]
    if force_all:
        cmd.append("--all")
    code = subprocess.run(cmd, cwd=root, env=env).returncode
    if code == 0:
        code = check_leaks(build_dir / "html")
    elapsed = time.perf_counter() - start
    if code == 0:
        build_dir.mkdir(parents=True, exist_ok=True)
        (build_dir / HASH_FILE).write_text(digest + "\n")
    status = "OK" if code == 0 else f"FAILED (exit {code})"
    print(f"build_book: {status}: {build_dir / 'html'} in {elapsed:.1f} s")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the ucdir-lite book.")
    parser.add_argument(
        "--smoke", action="store_true", help="UCDIR_SMOKE=1, separate build dir _build/smoke"
    )
    parser.add_argument("--all", action="store_true", help="re-read every page")
    args = parser.parse_args(argv)
    return build(smoke=args.smoke, force_all=args.all)


if __name__ == "__main__":
    sys.exit(main())
