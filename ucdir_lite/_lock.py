"""An exclusive lock on a folder (a run folder, a run-cache entry): one writer at a time.

``folder_lock(folder)`` holds ``fcntl.flock`` on ``folder/.lock`` for the life of the block
(Linux and macOS, Colab included). The kernel drops the lock when its process ends, however
it ends, so the file a killed process leaves never blocks anyone; the file holds the PID of
the holder, for the message another writer gets. Re-entrant within one process (``train``
inside ``ablation.train_cached`` locks the folder the cache entry already locked).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".lock"

_held: dict[Path, int] = {}  # folder -> how many nested blocks of this process hold it


class FolderInUse(BlockingIOError):
    """Another process holds the folder's lock (a user error: one line, exit code 1)."""


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 32).decode(errors="replace").strip()
    return f"PID {text}" if text.isdigit() else "PID unknown"


def _acquire(folder: Path, what: str, hint: str) -> int:
    """Lock ``folder/.lock`` (created with the umask's mode); return its descriptor."""
    for _ in range(10):
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise FolderInUse(
                f"{what} {str(folder)!r} is in use by another process ({holder}); {hint}"
            ) from None
        try:  # a holder that cleaned up may have removed the file we opened: lock the new one
            here, ours = os.stat(path), os.fstat(fd)
            current = (here.st_dev, here.st_ino) == (ours.st_dev, ours.st_ino)
        except FileNotFoundError:
            current = False
        if current:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)
    raise FolderInUse(f"{what} {str(folder)!r}: could not take its lock; {hint}")


def _remove_if_only_the_lock(folder: Path) -> None:
    """Remove ``folder`` when it holds nothing but the lock file (a run that failed at once)."""
    try:
        if [p.name for p in folder.iterdir()] == [LOCK_FILE]:
            (folder / LOCK_FILE).unlink()
            folder.rmdir()
    except OSError:
        pass


@contextmanager
def folder_lock(folder: str | os.PathLike, *, what: str, hint: str) -> Iterator[Path]:
    """Hold the exclusive lock on ``folder`` (created if missing) for the block; yield its
    path. Raises ``FolderInUse`` naming the holder's PID, ``what`` and ``hint`` when another
    process holds it. A folder this block created is removed again if the block fails
    before writing anything else into it."""
    folder = Path(folder).expanduser()  # as given: messages name it as the user wrote it
    key = folder.absolute()
    if key in _held:
        _held[key] += 1
        try:
            yield folder
        finally:
            _held[key] -= 1
        return
    created = not folder.exists()
    fd = _acquire(folder, what, hint)
    _held[key] = 1
    try:
        yield folder
    except BaseException:
        if created:
            _remove_if_only_the_lock(folder)
        raise
    finally:
        del _held[key]
        os.close(fd)
