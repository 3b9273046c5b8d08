"""Small helpers of the trainer: seeding, device choice, atomic file writes."""

from __future__ import annotations

import ctypes
import json
import os
import random
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import torch


def derive_seed(*parts: int) -> int:
    """A 31-bit seed derived from integers, e.g. ``derive_seed(seed, epoch, domain)``.

    Uses numpy's SeedSequence, so nearby inputs give unrelated seeds.
    """
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] >> 1)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (the trainer's only global seeding)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> cuda if available, else cpu; otherwise ``torch.device(name)`` (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={name!r} but CUDA is not available here; use --device cpu (device='cpu')"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"device={name!r} but MPS (Apple GPU) is not available here; use --device cpu "
            "(device='cpu')"
        )
    return device


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory(block: int = 32 << 20) -> bool:
    """Let this process reuse freed memory instead of handing it back to the system (glibc).

    glibc serves a large block (above 128 KiB, a threshold that grows only after frees) with
    a fresh ``mmap`` and returns it to the system on ``free``; a CPU training step allocates
    and frees megabyte-sized activations, so every step paid thousands of page faults to get
    zeroed pages back. This keeps blocks up to ``block`` bytes in the heap and never trims it:
    the memory stays with the process (its peak does not grow), the numbers computed do not
    change. Returns whether it took effect (False off glibc, e.g. on macOS or Windows).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, block)
                    and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False


PART_SUFFIX = ".part"
"""Temporary files of the atomic writes: ``.<name>.<random>.part`` beside the target."""


def _new_part(path: Path) -> Path:
    """Create an empty temporary file beside ``path``, with the mode any new file gets here
    (0666 less the umask; ``mkstemp`` would give 0600)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{PART_SUFFIX}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {str(path)!r}")


def atomic_write(path: str | os.PathLike, write: Any) -> Path:
    """Write through ``write(tmp)`` to a temporary file beside ``path``, then rename it to
    ``path``: a reader (or a crash) never sees a half-written file. An OSError names ``path``
    (the file asked for), not the temporary file."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_part(path)
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None:
            raise OSError(err.errno, f"cannot write {str(path)!r}: {err.strerror}") from err
        raise
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temp file in the same folder, then ``os.replace``: a reader (or a
    crash) never sees a half-written file."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON atomically (same scheme as ``atomic_torch_save``)."""
    text = json.dumps(obj, indent=2, allow_nan=True) + "\n"
    return atomic_write_text(text, path)


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` to ``path`` atomically (same scheme as ``atomic_torch_save``)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))
