"""The run cache as one archive: ``ucdir-lite runs export`` / ``ucdir-lite runs import``.

Every training run of the book lives in the run cache (``ucdir_lite.runcache``:
``$UCDIR_RUNS``, else ``~/.cache/ucdir_lite/runs``), one folder per run,
``<A>-<B>-s<seed>-e<epochs>-<key>``, keyed by its config, the training code and the data. A
fresh machine (a new Colab runtime, say) has an empty cache and would train every run again.
``export_runs`` packs the finished runs into one tar archive (gzip-compressed when the name
ends in ``.gz`` or ``.tgz``), which a release can carry; ``import_runs`` unpacks such an
archive into a cache, checking every member first (``ucdir_lite.prepare.safe_extract``: no
absolute path, no ``..``, no link, no device file) and accepting only run folders that hold
a finished run's ``cache.json``. A run whose key is already in the cache is left as it is.

An imported run is reused only when its key matches: the same config, the same training code
(the package version and its training modules) and the same data. Runs of another version of
the package are imported but never reused; they can be deleted.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path

__all__ = ["MARKER", "default_cache_dir", "finished_runs", "export_runs", "import_runs"]

MARKER = "cache.json"
"""The file that marks a finished run in the cache (written by ``runcache.train_cached``)."""
_RUN_NAME = re.compile(r"^[\w.+-]+$")


def default_cache_dir() -> Path:
    """``$UCDIR_RUNS``, else ``~/.cache/ucdir_lite/runs`` (beside the generated data)."""
    return Path(os.environ.get("UCDIR_RUNS") or "~/.cache/ucdir_lite/runs").expanduser()


def _cache(cache_dir: str | os.PathLike | None) -> Path:
    """``cache_dir`` (user folder expanded), or ``default_cache_dir()`` when None."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def _finished(run_dir: Path) -> bool:
    try:
        return bool(json.loads((run_dir / MARKER).read_text()).get("finished"))
    except (OSError, ValueError, AttributeError):
        return False


def finished_runs(cache_dir: str | os.PathLike | None = None,
                  match: Iterable[str] | None = None) -> list[Path]:
    """The folders of the finished runs in ``cache_dir`` (default: the run cache), sorted;
    with ``match``, only the folders whose name fits one of these shell patterns (e.g.
    ``clipart-sketch-*``)."""
    cache = _cache(cache_dir)
    if not cache.is_dir():
        return []
    patterns = list(match or [])
    return [d for d in sorted(cache.iterdir())
            if d.is_dir() and not d.name.startswith(".") and _finished(d)
            and (not patterns or any(fnmatch.fnmatch(d.name, p) for p in patterns))]


def export_runs(archive: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                match: Iterable[str] | None = None) -> list[str]:
    """Write the finished runs of ``cache_dir`` (optionally only those whose folder name fits
    a pattern of ``match``) into the tar archive ``archive``, one top-level folder per run;
    return the run names. Raises ValueError when there is nothing to export."""
    runs = finished_runs(cache_dir, match)
    if not runs:
        raise ValueError(
            f"no finished runs in {_cache(cache_dir)}"
            + (f" matching {', '.join(match or [])}" if match else "")
            + ": train them first (e.g. ucdir-lite ablate), or pass --cache-dir")
    archive = Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    mode = "w:gz" if archive.name.endswith((".gz", ".tgz")) else "w"
    partial = archive.with_name(archive.name + ".part")
    with tarfile.open(partial, mode) as tar:
        for run in runs:
            for path in sorted(run.iterdir()):
                if path.is_file() and not path.is_symlink() and not path.name.startswith("."):
                    tar.add(path, arcname=f"{run.name}/{path.name}", recursive=False)
    partial.replace(archive)
    return [run.name for run in runs]


def import_runs(archive: str | os.PathLike, cache_dir: str | os.PathLike | None = None
                ) -> dict[str, list[str]]:
    """Unpack the runs of ``archive`` (made by ``export_runs``) into ``cache_dir`` (default:
    the run cache). Every member is checked before anything is written
    (``ucdir_lite.prepare.safe_extract``); an archive with a member outside a run folder
    (``<run>/<file>``), an unsafe member or a run folder without a finished ``cache.json`` is
    refused as a whole with ``ucdir_lite.prepare.UnsafeArchiveError`` or ValueError. Returns
    ``{"imported": [...], "skipped": [...]}``: runs already in the cache are skipped."""
    from ucdir_lite.prepare import UnsafeArchiveError, safe_extract

    archive = Path(archive)
    if not archive.is_file():
        raise FileNotFoundError(f"archive {str(archive)!r} does not exist")
    if not tarfile.is_tarfile(archive):
        raise ValueError(f"{str(archive)!r} is not a tar archive (made by ucdir-lite runs export)")
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            parts = member.name.split("/")
            if member.isdir() and len(parts) == 1:
                continue
            if len(parts) != 2 or not _RUN_NAME.match(parts[0]) or not parts[1]:
                raise UnsafeArchiveError(
                    f"member {member.name!r}: not a file of a run folder (<run>/<file>); "
                    "refusing the whole archive")
    cache = _cache(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".import-", dir=cache) as tmp:
        unpacked = safe_extract(archive, Path(tmp) / "runs")
        runs = sorted(d for d in unpacked.iterdir() if d.is_dir())
        broken = [d.name for d in runs if not _finished(d)]
        if broken:
            raise ValueError(f"run folder(s) {', '.join(broken)} hold no finished {MARKER}: "
                             "not an archive of finished runs; nothing imported")
        imported, skipped = [], []
        for run in runs:
            target = cache / run.name
            if target.exists():
                skipped.append(run.name)
                continue
            shutil.move(str(run), str(target))
            imported.append(run.name)
    return {"imported": imported, "skipped": skipped}
