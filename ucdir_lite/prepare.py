"""Real datasets: download, verify, extract safely; DomainNet and Office-Home.

Both real layouts reduce to the one the package's loader reads (book chapter 1)::

    root/<domain>/<class>/<image>

``download`` streams a file over HTTP(S), resumes a partial download with a Range
request and renames it into place only after its checksum matched. ``safe_extract``
checks every member of a zip or tar archive before writing anything (no absolute
paths, no ``..``, no drive letters, no links, no device files), extracts into a
temporary folder next to the target and renames it into place at the end, so an
interrupted run never leaves a half-extracted tree. ``prepare_domainnet`` and
``prepare_office_home`` build on the two.

Reference: X. Peng et al., "Moment Matching for Multi-Source Domain Adaptation",
ICCV 2019 (DomainNet, http://ai.bu.edu/M3SDA/); H. Venkateswara et al., "Deep Hashing
Network for Unsupervised Domain Adaptation", CVPR 2017 (Office-Home,
https://www.hemanthdv.org/officeHomeDataset.html).
"""

from __future__ import annotations

import difflib
import functools
import glob
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import stat
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import IO, NamedTuple

from ucdir_lite._progress import tqdm

__all__ = [
    "DOMAINNET_URL",
    "DOMAINNET_DOMAINS",
    "DOMAINNET_SUBSET",
    "DOMAINNET_ARCHIVES",
    "DOMAINNET_MD5",
    "OFFICE_HOME_PAGE",
    "OFFICE_HOME_DOMAINS",
    "ChecksumError",
    "DownloadError",
    "UnsafeArchiveError",
    "file_checksum",
    "download",
    "safe_extract",
    "prepare_domainnet",
    "prepare_office_home",
]

StrPath = str | os.PathLike

# --------------------------------------------------------------------------- DomainNet
#: Base address of the files the official DomainNet page (http://ai.bu.edu/M3SDA/,
#: "cleaned version, recommended") links to.
DOMAINNET_URL = "http://csr.bu.edu/ftp/visda/2019/multi-source"

DOMAINNET_DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")

#: The 7-category subset of the UCDIR experiments. The list is the one hard-coded by
#: a DomainNet loader derived from the official UCDIR code (``folder_content_getter``);
#: it is NOT verified against the paper, which does not list the categories.
DOMAINNET_SUBSET = ("bird", "feather", "teapot", "tiger", "whale", "windmill", "zebra")

#: Image archive of each domain, relative to ``DOMAINNET_URL``. The cleaned clipart and
#: painting archives live under ``groundtruth/``; the other domains were cleaned only
#: through the split files (see ``split`` in ``prepare_domainnet``).
DOMAINNET_ARCHIVES = MappingProxyType({
    "clipart": "groundtruth/clipart.zip",
    "infograph": "infograph.zip",
    "painting": "groundtruth/painting.zip",
    "quickdraw": "quickdraw.zip",
    "real": "real.zip",
    "sketch": "sketch.zip",
})

#: MD5 of every file, keyed by its path relative to ``DOMAINNET_URL``. Not published by
#: the DomainNet authors: these are the sums the Mila dataset mirror
#: (github.com/datasets-mila/datasets--domainnet, file ``md5sums``) computed on the
#: files it fetched from the URLs above. Pass ``md5s=None`` to ``prepare_domainnet`` to
#: skip verification (the computed MD5s are then printed).
DOMAINNET_MD5 = MappingProxyType({
    "groundtruth/clipart.zip": "cd0d8f2d77a4e181449b78ed62bccf1e",
    "infograph.zip": "720380b86f9e6ab4805bb38b6bd135f8",
    "groundtruth/painting.zip": "1ae32cdb4f98fe7ab5eb0a351768abfd",
    "quickdraw.zip": "bdc1b6f09f277da1a263389efe0c7a66",
    "real.zip": "dcc47055e8935767784b7162e7c7cca6",
    "sketch.zip": "658d8009644040ff7ce30bb2e820850f",
    "domainnet/txt/clipart_train.txt": "b4349693a7f9c05c53955725c47ed6cb",
    "domainnet/txt/clipart_test.txt": "f5ddbcfd657a3acf9d0f7da10db22565",
    "domainnet/txt/infograph_train.txt": "379b50054f4ac2018dca4f89421b92d9",
    "domainnet/txt/infograph_test.txt": "779626b50869edffe8ea6941c3755c71",
    "domainnet/txt/painting_train.txt": "7db0e7ca73ad9982f6e1f7f3ef372c0a",
    "domainnet/txt/painting_test.txt": "232b35dc53f26d414686ae579e38d9b5",
    "domainnet/txt/quickdraw_train.txt": "b732ced3939ac8efdd8c0a889dca56cc",
    "domainnet/txt/quickdraw_test.txt": "c1a828fdfe216fb109f1c0083a252c6f",
    "domainnet/txt/real_train.txt": "8ebf02c2075fadd564705f0dc7cd6291",
    "domainnet/txt/real_test.txt": "6098816791c3ebed543c71ffa11b9054",
    "domainnet/txt/sketch_train.txt": "1233bd18aa9a8a200bf4cecf1c34ef3e",
    "domainnet/txt/sketch_test.txt": "d8a222e4672cfd585298aa14d02ea441",
})

# ------------------------------------------------------------------------- Office-Home
OFFICE_HOME_PAGE = "https://www.hemanthdv.org/officeHomeDataset.html"
OFFICE_HOME_DOMAINS = ("Art", "Clipart", "Product", "Real World")
OFFICE_HOME_FOLDER = "OfficeHomeDataset_10072016"
OFFICE_HOME_HINT = (
    f"Office-Home cannot be downloaded automatically: its authors distribute "
    f"{OFFICE_HOME_FOLDER}.zip through a Google Drive link on {OFFICE_HOME_PAGE}. "
    f"Download the zip there by hand, then pass archive=PATH "
    f"(or: ucdir-lite data prepare office-home --root ROOT --archive PATH)."
)

GB = 10**9
OFFICE_HOME_MAX_BYTES = 2 * GB
"""The most ``prepare_office_home`` unpacks: its zip holds about 1.1 GB of JPEGs."""
DOMAINNET_MAX_BYTES = 8 * GB
"""The most ``prepare_domainnet`` unpacks per domain: the largest (real) holds <= 6 GB."""
MAX_COMPRESSION_RATIO = 100
"""Unpacked size over packed size above which an archive is refused as a compression bomb
(image archives barely compress: about 1). Not checked below ``RATIO_FLOOR`` unpacked."""
RATIO_FLOOR = 1 << 20

COMPLETE_MARKER = ".complete"  # written last into a finished extraction
SUBSET_MARKER = ".ucdir-lite-subset.json"  # inside root/<domain>/ built by prepare_domainnet
OFFICE_HOME_MARKER = ".ucdir-lite-office-home.json"  # inside root/ built by prepare_office_home
ARCHIVE_DIR = ".archives"  # root/.archives/: downloaded archives and split files
EXTRACT_DIR = ".extracted"  # root/.extracted/: archives being unpacked (removed when done)

_HASH_LENGTHS = {"md5": 32, "sha256": 64}


class ChecksumError(ValueError):
    """A file's checksum differs from the expected one."""


class DownloadError(OSError):
    """A download failed (HTTP error, or the connection broke more often than retried)."""


class UnsafeArchiveError(ValueError):
    """An archive member could write outside the target or is a link or device file."""


# ============================================================================ download
def file_checksum(path: StrPath, algorithm: str = "md5", chunk_size: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks (``algorithm``: any name ``hashlib`` knows)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _expected_checksums(md5: str | None, sha256: str | None) -> dict[str, str]:
    expected = {name: value for name, value in (("md5", md5), ("sha256", sha256)) if value}
    for name, value in expected.items():
        if not re.fullmatch(rf"[0-9a-fA-F]{{{_HASH_LENGTHS[name]}}}", value):
            raise ValueError(
                f"{name}={value!r} is not a {name} hex digest "
                f"({_HASH_LENGTHS[name]} hex digits); pass the published checksum or None"
            )
    return {name: value.lower() for name, value in expected.items()}


def _checksum_mismatch(path: Path, expected: Mapping[str, str]) -> tuple[str, str, str] | None:
    """``(algorithm, expected, actual)`` of the first checksum that differs, else None."""
    for name, value in expected.items():
        actual = file_checksum(path, name)
        if actual != value:
            return name, value, actual
    return None


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """``(start, total)`` from a ``Content-Range: bytes START-END/TOTAL`` (or ``*/TOTAL``)."""
    match = re.fullmatch(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", (header or "").strip())
    if match is None:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total and total != "*" else None)


def _open_url(url: str, offset: int, timeout: float):
    headers = {"User-Agent": "ucdir-lite", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _fetch(url: str, part: Path, *, progress: bool, chunk_size: int, timeout: float) -> None:
    """Fetch ``url`` into ``part``, continuing from its current size when the server allows.

    A 206 reply starting at our offset is appended; a 200 reply (the server ignored the
    Range header) restarts from zero; a 416 reply means ``part`` already holds the whole
    file (or more, then it restarts). A connection that closes early raises
    ``ConnectionError`` and keeps what arrived.
    """
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open_url(url, offset, timeout)
    except urllib.error.HTTPError as err:
        if err.code != 416 or offset == 0:
            raise
        if _content_range(err.headers.get("Content-Range"))[1] == offset:
            return  # the partial file is already complete
        part.unlink()
        offset = 0
        response = _open_url(url, 0, timeout)
    with response:
        if offset and response.status == 206:
            start, _ = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                raise ConnectionError(
                    f"server answered the range request for {url} from byte {start}, "
                    f"not {offset}"
                )
        else:
            offset = 0  # a full reply: start again from the first byte
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with (
            open(part, "ab" if offset else "wb") as f,
            tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                desc=part.name.removesuffix(".part"), disable=not progress,
            ) as bar,
        ):
            while chunk := response.read(chunk_size):
                f.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size != total:
        raise ConnectionError(f"connection closed after {size} of {total} bytes")


def _retryable(err: BaseException) -> bool:
    """Broken or refused connections and server errors are retried; the rest is not."""
    if isinstance(err, urllib.error.HTTPError):
        return err.code >= 500
    return isinstance(
        err, (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException)
    )


def download(
    url: str,
    dest: StrPath,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
    chunk_size: int = 1 << 20,
    retries: int = 3,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest``, resuming a partial download, and verify it.

    The bytes go to ``dest + ".part"``; when that file exists from an interrupted run,
    the download continues from its end with an HTTP ``Range: bytes=<size>-`` request
    (a server that ignores Range and answers 200 makes it restart from zero). A broken
    connection is resumed the same way up to ``retries`` times. Only when the checksum
    (``md5`` and/or ``sha256``) matches is ``.part`` renamed to ``dest``; a mismatch
    deletes ``.part`` and raises ``ChecksumError`` naming the file and both checksums.
    An existing ``dest`` whose checksum matches (or any existing ``dest`` when no
    checksum is given) is returned without downloading. Without a checksum the
    computed MD5 is printed, so it can be pinned next time.

    Args:
        url: an ``http://`` or ``https://`` address (it must serve the file itself,
            not a web page that links to it).
        dest: where the file ends up; parent folders are created.
        md5, sha256: expected hex digests (either, both or neither).
        progress: show a tqdm progress bar.
        chunk_size: bytes per read.
        retries: how many times a broken connection is resumed within this call.
        timeout: seconds a connection may stay silent.

    Returns:
        ``Path(dest)``.
    """
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"url={url!r}: only http:// and https:// addresses can be downloaded")
    if retries < 0:
        raise ValueError(f"retries={retries}: must be >= 0")
    expected = _expected_checksums(md5, sha256)
    dest = Path(dest)
    if dest.is_dir():
        raise ValueError(f"dest={str(dest)!r} is a folder; pass the path of the file to write")
    if dest.is_file():
        if not expected or _checksum_mismatch(dest, expected) is None:
            return dest
        print(f"{dest} exists but its checksum differs: downloading it again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch(url, part, progress=progress, chunk_size=chunk_size, timeout=timeout)
            break
        except Exception as err:
            kept = part.stat().st_size if part.exists() else 0
            if not _retryable(err):
                raise DownloadError(f"downloading {url} failed: {err}") from err
            if attempt == retries:
                raise DownloadError(
                    f"downloading {url} failed after {retries + 1} attempt(s): {err}; "
                    f"{kept} bytes are kept in {part}: run again to resume"
                ) from err
    mismatch = _checksum_mismatch(part, expected)
    if mismatch is not None:
        part.unlink()
        name, want, got = mismatch
        raise ChecksumError(
            f"{dest.name}: {name} mismatch (downloaded from {url}): expected {want}, "
            f"got {got}; the download was deleted. Run again to retry; if the file "
            f"changed on purpose, pass its new checksum"
        )
    if not expected:
        print(f"{dest}: no checksum given; its md5 is {file_checksum(part)}")
    os.replace(part, dest)
    return dest


# ======================================================================== safe_extract
class _Member(NamedTuple):
    name: str  # normalised relative POSIX path
    is_dir: bool
    handle: object  # ZipInfo or TarInfo


def _safe_name(name: str) -> str:
    """The member's path as a clean relative POSIX path; raise if it could escape."""
    if not name or "\x00" in name:
        raise UnsafeArchiveError(f"member {name!r}: empty name or NUL byte")
    unified = name.replace("\\", "/")
    if unified.startswith("/"):
        raise UnsafeArchiveError(f"member {name!r}: absolute path")
    if re.match(r"[A-Za-z]:", unified):
        raise UnsafeArchiveError(f"member {name!r}: Windows drive letter")
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"member {name!r}: '..' component")
    return "/".join(parts)


def _zip_members(zf: zipfile.ZipFile) -> list[_Member]:
    members = []
    for info in zf.infolist():
        name = _safe_name(info.filename)
        kind = stat.S_IFMT(info.external_attr >> 16)
        if info.create_system == 3 and kind:  # Unix file type recorded (0: plain file)
            if kind == stat.S_IFLNK:
                raise UnsafeArchiveError(f"member {info.filename!r}: symbolic link")
            if kind not in (stat.S_IFREG, stat.S_IFDIR):
                raise UnsafeArchiveError(
                    f"member {info.filename!r}: special file (device, FIFO or socket)"
                )
        if name:
            is_dir = info.is_dir() or info.filename.endswith("\\")
            members.append(_Member(name, is_dir, info))
    return members


def _tar_members(tf: tarfile.TarFile) -> list[_Member]:
    members = []
    for info in tf.getmembers():
        name = _safe_name(info.name)
        if info.issym() or info.islnk():
            kind = "symbolic" if info.issym() else "hard"
            raise UnsafeArchiveError(
                f"member {info.name!r}: {kind} link to {info.linkname!r}"
            )
        if not (info.isreg() or info.isdir()):
            raise UnsafeArchiveError(
                f"member {info.name!r}: special file (device, FIFO or socket)"
            )
        if name:
            members.append(_Member(name, info.isdir(), info))
    return members


_DAMAGED = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error)


def _damaged(archive: Path, err: BaseException, member: str | None = None) -> ValueError:
    where = f"member {member!r} cannot be read" if member else "it cannot be read"
    return ValueError(f"{archive.name} is damaged: {where} ({err}); download it again")


@contextmanager
def _open_archive(archive: Path) -> Iterator[tuple[list[_Member], Callable[[_Member], IO]]]:
    """Yield the checked members of a zip or tar archive and a function opening one."""
    if zipfile.is_zipfile(archive):
        opened = zipfile.ZipFile
        listing = _zip_members

        def open_member(zf, m):
            return zf.open(m.handle)
    elif tarfile.is_tarfile(archive):
        opened = functools.partial(tarfile.open, mode="r:*")
        listing = _tar_members

        def open_member(tf, m):
            return tf.extractfile(m.handle)
    else:
        raise ValueError(f"{archive} is neither a zip nor a tar archive")
    try:
        handle = opened(archive)
    except _DAMAGED as err:
        raise _damaged(archive, err) from err
    with handle:
        try:
            members = listing(handle)
        except _DAMAGED as err:
            raise _damaged(archive, err) from err
        yield members, functools.partial(open_member, handle)


def _packed_size(archive: Path, members: list[_Member]) -> int:
    """Bytes the members take in the archive (a tar: the whole compressed file)."""
    if members and isinstance(members[0].handle, zipfile.ZipInfo):
        return sum(m.handle.compress_size for m in members)
    return archive.stat().st_size


def _unpacked_size(members: list[_Member]) -> int:
    return sum(m.handle.file_size if isinstance(m.handle, zipfile.ZipInfo) else m.handle.size
               for m in members if not m.is_dir)


def _size(n: float) -> str:
    if n < 10**6:
        return f"{int(n)} bytes"
    return f"{n / 10**6:.1f} MB" if n < GB else f"{n / GB:.2f} GB"


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_bounds(archive: Path, members: list[_Member], dest: Path, max_bytes: int,
                  max_ratio: float) -> None:
    """Refuse, before writing anything, to unpack more than ``max_bytes``, more than
    ``max_ratio`` times the packed size, or more than the free space where ``dest`` goes."""
    total, packed = _unpacked_size(members), _packed_size(archive, members)
    if total > max_bytes:
        raise ValueError(
            f"{archive.name} would unpack {_size(total)}, more than the limit of "
            f"{_size(max_bytes)}; it is not the expected archive: check the file"
        )
    if total > RATIO_FLOOR and total > max_ratio * max(packed, 1):
        raise ValueError(
            f"{archive.name} would unpack {_size(total)} from {_size(packed)} (ratio "
            f"{total // max(packed, 1)}, more than the limit of {max_ratio:g}): a compression "
            "bomb, not an image archive; check the file"
        )
    where = _existing_ancestor(dest.parent)
    free = shutil.disk_usage(where).free
    if total > free:
        raise OSError(
            f"{archive.name} needs {_size(total)} unpacked but only {_size(free)} are free "
            f"on {where}; free some space or choose another root (--root)"
        )


_PARTIAL = ".partial-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _partial_dir(target: Path) -> Path:
    """A new hidden folder ``.<target>.partial-<pid>-<random>`` beside ``target`` (mode:
    the umask's), after deleting those a killed run left (their PID is gone; older
    versions put no PID in the name)."""
    prefix = f".{target.name}{_PARTIAL}"
    for folder in target.parent.glob(f"{glob.escape(prefix)}*"):
        pid = folder.name[len(prefix):].split("-")[0]
        if folder.is_dir() and not (pid.isdigit() and _pid_alive(int(pid))):
            shutil.rmtree(folder, ignore_errors=True)
    while True:
        tmp = target.with_name(f"{prefix}{os.getpid()}-{secrets.token_hex(3)}")
        try:
            tmp.mkdir()
        except FileExistsError:
            continue
        return tmp


def _missing_folders(path: Path) -> list[Path]:
    """The folders of ``path`` (itself included) that do not exist yet, innermost first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _remove_empty(folders: Sequence[Path]) -> None:
    """Remove each of ``folders`` (innermost first) that is empty: those a failed call made."""
    for folder in folders:
        _remove_if_empty(folder)


def _write_file(source: IO, target: Path) -> None:
    with open(target, "wb") as f:
        shutil.copyfileobj(source, f, 1 << 20)


def safe_extract(
    archive: StrPath,
    dest: StrPath,
    *,
    members: Callable[[str], bool] | None = None,
    progress: bool = False,
    max_bytes: int = DOMAINNET_MAX_BYTES,
    max_ratio: float = MAX_COMPRESSION_RATIO,
) -> Path:
    """Extract a .zip or .tar(.gz/.bz2/.xz) archive into ``dest``, safely and atomically.

    Every member is checked before anything is written: an absolute path, a ``..``
    component, a Windows drive letter, a symbolic or hard link, or a device file,
    FIFO or socket rejects the whole archive with ``UnsafeArchiveError`` naming the
    member. The members are written into a hidden temporary folder next to ``dest``
    (``.<dest name>.partial-<pid>-*``), a ``.complete`` marker is written last, and the
    folder is renamed to ``dest``: an interrupted or failed run removes the temporary
    folder (and the parent folders it created) and leaves no half-extracted ``dest``;
    the folder a hard kill leaves is removed by the next run. Before writing anything,
    the archive is refused if its listing unpacks more than ``max_bytes``, more than
    ``max_ratio`` times its packed size, or more than the free disk space. A member
    that cannot be read (bad CRC) is a ``ValueError`` naming it. Re-running when
    ``dest/.complete`` exists does nothing.

    Args:
        archive: the archive file.
        dest: the folder that will hold the archive's contents. It must not exist
            (an empty folder is accepted) unless it is a completed extraction.
        members: optional predicate on a member's relative POSIX path: only members
            for which it is true are written (all are still checked). ``dest`` then
            holds that selection; the marker does not record the predicate.
        progress: show a tqdm bar over the members.
        max_bytes: the most the selected members may unpack to (default: a DomainNet
            domain's bound, ``DOMAINNET_MAX_BYTES``).
        max_ratio: the largest unpacked / packed size (``MAX_COMPRESSION_RATIO``).

    Returns:
        ``Path(dest)``.
    """
    archive, dest = Path(archive), Path(dest)
    if (dest / COMPLETE_MARKER).is_file():
        return dest
    if not archive.is_file():
        raise FileNotFoundError(f"archive {str(archive)!r} does not exist")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ValueError(
            f"dest={str(dest)!r} exists but is not a completed extraction "
            f"(no {COMPLETE_MARKER} marker): remove it or choose another dest"
        )
    with _open_archive(archive) as (checked, open_member):
        selected = [m for m in checked if members is None or members(m.name)]
        _check_bounds(archive, selected, dest, max_bytes, max_ratio)
        created = _missing_folders(dest.parent)
        tmp = None
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = _partial_dir(dest)
            _write_members(archive, selected, tmp, open_member, progress)
            (tmp / COMPLETE_MARKER).write_text(json.dumps({"archive": archive.name}) + "\n")
            if dest.exists():
                dest.rmdir()  # an empty folder, checked above
            os.rename(tmp, dest)
        except BaseException:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            _remove_empty(created)
            raise
    return dest


def _write_members(archive: Path, selected: list[_Member], tmp: Path,
                   open_member: Callable[[_Member], IO], progress: bool) -> None:
    for member in tqdm(selected, desc=archive.name, unit="file", disable=not progress):
        target = tmp.joinpath(*member.name.split("/"))
        if member.is_dir:
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open_member(member) as source:
                _write_file(source, target)
        except _DAMAGED as err:
            raise _damaged(archive, err, member.name) from err


# =========================================================================== DomainNet
def _selection_tag(classes: Sequence[str] | None) -> str:
    if classes is None:
        return "all"
    return hashlib.md5("\n".join(sorted(classes)).encode()).hexdigest()[:8]


def _archive_classes(archive: Path, domain: str) -> set[str]:
    """Class folders ``<domain>/<class>/`` present in a DomainNet zip (names only)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n.replace("\\", "/") for n in zf.namelist()]
    except _DAMAGED as err:
        raise _damaged(archive, err) from err
    found = {n.split("/")[1] for n in names if n.startswith(f"{domain}/") and n.count("/") >= 2}
    if not found:
        raise ValueError(
            f"{archive} does not have the DomainNet layout {domain}/<class>/<image>"
        )
    return found


def _check_classes(requested: Sequence[str], available: set[str], archive: Path) -> None:
    for name in requested:
        if name not in available:
            close = difflib.get_close_matches(name, sorted(available), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"class {name!r} is not in {archive.name}{hint}")


def _class_filter(domain: str, classes: Sequence[str]) -> Callable[[str], bool]:
    """Predicate keeping the archive members under ``<domain>/<class>/`` for ``classes``."""
    wanted = set(classes)

    def keep(name: str) -> bool:
        parts = name.split("/")
        return len(parts) > 2 and parts[0] == domain and parts[1] in wanted

    return keep


def _split_paths(split_files: Sequence[Path]) -> set[str]:
    """Relative image paths listed in DomainNet split files (``path label`` lines)."""
    paths = set()
    for path in split_files:
        for line in path.read_text().splitlines():
            if line.strip():
                paths.add(line.rsplit(maxsplit=1)[0].replace("\\", "/"))
    return paths


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _remove_if_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _build_subset(
    source: Path, target: Path, classes: Sequence[str], keep: set[str] | None,
    domain: str, record: dict,
) -> None:
    """Hard-link (or copy) ``source/<class>/*`` into ``target/<class>/``, atomically."""
    tmp = _partial_dir(target)
    old = None
    try:
        for name in classes:
            (tmp / name).mkdir()
            for image in sorted((source / name).iterdir()):
                if image.is_file() and (keep is None or f"{domain}/{name}/{image.name}" in keep):
                    _link_or_copy(image, tmp / name / image.name)
            if not any((tmp / name).iterdir()):
                raise ValueError(
                    f"class {name!r} of {domain} has no image in split {record['split']!r}"
                )
        (tmp / SUBSET_MARKER).write_text(json.dumps(record, indent=1) + "\n")
        if target.exists():  # an earlier subset of ours (checked by the caller)
            old = target.with_name(f".{target.name}.old-{tmp.name[-8:]}")
            os.rename(target, old)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def prepare_domainnet(
    root: StrPath,
    *,
    domains: Sequence[str] = DOMAINNET_DOMAINS,
    classes: Sequence[str] | None = DOMAINNET_SUBSET,
    base_url: str = DOMAINNET_URL,
    keep_archives: bool = True,
    md5s: Mapping[str, str] | None = DOMAINNET_MD5,
    split: str | None = None,
    progress: bool = True,
) -> Path:
    """Download DomainNet and build ``root/<domain>/<class>/<image>`` for a class subset.

    For each domain: download its image zip and its ``<domain>_train.txt`` /
    ``<domain>_test.txt`` split files into ``root/.archives/`` (``download``: resumable,
    MD5-verified), extract the requested classes of the zip (``safe_extract``) and
    hard-link the images into ``root/<domain>/<class>/`` (copies where the file system
    has no hard links), so the subset costs no extra disk. The unpacked copy is then
    removed; the archives stay unless ``keep_archives=False``. A domain whose subset is
    already complete (marker file ``root/<domain>/.ucdir-lite-subset.json`` with the
    same classes and split) is skipped without any download.

    Sources: the URLs the official DomainNet page (http://ai.bu.edu/M3SDA/, "cleaned
    version, recommended") links to, under ``DOMAINNET_URL``
    (``http://csr.bu.edu/ftp/visda/2019/multi-source/``; clipart and painting from
    ``groundtruth/``, split files from ``domainnet/txt/``). The authors publish no
    checksums: ``DOMAINNET_MD5`` holds the MD5s of a third-party mirror (the Mila
    dataset mirror, github.com/datasets-mila/datasets--domainnet). Disk: the zips take
    0.4-6 GB each (about 18 GB for all six); the default 7-class subset is small.

    Args:
        root: folder of the prepared dataset (created).
        domains: any of ``DOMAINNET_DOMAINS``.
        classes: class names (DomainNet folder names such as ``"bird"``); the default
            ``DOMAINNET_SUBSET`` is the 7-category subset of the UCDIR experiments
            (hard-coded by a loader derived from the official code; not verified
            against the paper). ``None`` keeps all 345 classes.
        base_url: where the files are (override for a mirror or a local test server);
            file paths below it as in ``DOMAINNET_ARCHIVES``.
        keep_archives: keep the downloaded zips in ``root/.archives/``.
        md5s: expected MD5 per file path relative to ``base_url``; files missing from
            it, or all files when ``None``, are not verified and their MD5 is printed.
        split: ``None`` keeps every image of the class folders, as the official UCDIR
            code reads them; ``"train"``, ``"test"`` or ``"all"`` (train and test) keep
            only the images those split files list (the authors' cleaned lists).
        progress: show progress bars and messages.

    Returns:
        ``Path(root)``: the root for ``ucdir_lite.datasets.DomainDataset``.
    """
    unknown = [d for d in domains if d not in DOMAINNET_DOMAINS]
    if unknown or not domains:
        raise ValueError(f"domains={tuple(domains)!r}: choose from {DOMAINNET_DOMAINS}")
    if isinstance(classes, str):
        raise ValueError(f"classes={classes!r}: pass a sequence of class names, not a string")
    if classes is not None and (not classes or len(set(classes)) != len(classes)):
        raise ValueError(f"classes={classes!r}: give distinct class names, or None for all")
    if split not in (None, "train", "test", "all"):
        raise ValueError(f"split={split!r}: choose None, 'train', 'test' or 'all'")
    root = Path(root)
    archives = root / ARCHIVE_DIR
    base_url = base_url.rstrip("/")
    md5s = md5s if md5s is not None else {}

    def fetch(relative: str) -> Path:
        return download(
            f"{base_url}/{relative}", archives / Path(relative).name,
            md5=md5s.get(relative), progress=progress,
        )

    for domain in domains:
        target = root / domain
        wanted = {"classes": sorted(classes) if classes is not None else None, "split": split}
        if target.exists():
            marker = _read_marker(target / SUBSET_MARKER)
            if marker is None:
                raise ValueError(
                    f"{target} exists but was not made by prepare_domainnet "
                    f"(no {SUBSET_MARKER}): move it away or choose another root"
                )
            if {k: marker.get(k) for k in wanted} == wanted:
                if progress:
                    print(f"{domain}: already prepared in {target}")
                continue
        zip_path = fetch(DOMAINNET_ARCHIVES[domain])
        split_files = [fetch(f"domainnet/txt/{domain}_{part}.txt") for part in ("train", "test")]
        available = _archive_classes(zip_path, domain)
        chosen = sorted(available) if classes is None else list(classes)
        _check_classes(chosen, available, zip_path)
        extracted = safe_extract(
            zip_path, root / EXTRACT_DIR / f"{domain}-{_selection_tag(classes)}",
            members=_class_filter(domain, chosen),
            progress=progress, max_bytes=DOMAINNET_MAX_BYTES,
        )
        keep = None
        if split is not None:
            parts = split_files if split == "all" else [archives / f"{domain}_{split}.txt"]
            keep = _split_paths(parts)
        record = {**wanted, "source": f"{base_url}/{DOMAINNET_ARCHIVES[domain]}"}
        _build_subset(extracted / domain, target, chosen, keep, domain, record)
        shutil.rmtree(extracted)
        if not keep_archives:
            zip_path.unlink()
        if progress:
            print(f"{domain}: {len(chosen)} classes in {target}")
    _remove_if_empty(root / EXTRACT_DIR)
    return root


# ========================================================================= Office-Home
def _office_home_source(extracted: Path) -> Path | None:
    """The folder of an unpacked Office-Home zip that holds (or held) the domain folders."""
    candidates = [extracted / OFFICE_HOME_FOLDER, extracted]
    candidates += sorted(p for p in extracted.iterdir() if p.is_dir())
    for folder in candidates:
        if folder.is_dir() and (
            folder.name == OFFICE_HOME_FOLDER
            or any((folder / d).is_dir() for d in OFFICE_HOME_DOMAINS)
        ):
            return folder
    return None


def _office_home_archive(archive: Path, md5: str | None) -> Path:
    """``archive`` checked: an existing file, with the expected MD5 if one is given."""
    if archive.is_dir():
        raise ValueError(
            f"archive {str(archive)!r} is a folder, not the zip file; pass the path of "
            f"{OFFICE_HOME_FOLDER}.zip (--archive)"
        )
    if not archive.is_file():
        raise FileNotFoundError(f"archive {str(archive)!r} does not exist. {OFFICE_HOME_HINT}")
    mismatch = _checksum_mismatch(archive, _expected_checksums(md5, None))
    if mismatch is not None:
        raise ChecksumError(
            f"{archive.name}: md5 mismatch: expected {mismatch[1]}, got {mismatch[2]}; "
            f"download it again from {OFFICE_HOME_PAGE}"
        )
    return archive


def _download_office_home(url: str, root: Path, md5: str | None, progress: bool) -> Path:
    archive = download(
        url, root / ARCHIVE_DIR / f"{OFFICE_HOME_FOLDER}.zip", md5=md5, progress=progress
    )
    if not zipfile.is_zipfile(archive):
        archive.unlink()
        raise ValueError(
            f"{url} did not serve a zip file (Google Drive serves an HTML confirmation "
            f"page for large files): url must be a direct link to the zip. "
            + OFFICE_HOME_HINT
        )
    return archive


def _move_all(moves: Sequence[tuple[Path, Path]]) -> None:
    """Rename each (here, there); if one fails, the ones done are renamed back."""
    done: list[tuple[Path, Path]] = []
    try:
        for here, there in moves:
            os.rename(here, there)
            done.append((here, there))
    except BaseException:
        for here, there in reversed(done):
            os.rename(there, here)
        raise


def _unpack_office_home(archive: Path, root: Path, extract_dir: Path, progress: bool) -> None:
    """Extract the zip (or reuse a complete extraction) and move the domains to ``root``."""
    extracted = safe_extract(
        archive, extract_dir, members=lambda name: not name.startswith("__MACOSX/"),
        progress=progress, max_bytes=OFFICE_HOME_MAX_BYTES,
    )
    source = _office_home_source(extracted)
    moves = []
    for domain in OFFICE_HOME_DOMAINS:
        here = source / domain if source is not None else None
        if here is not None and here.is_dir():
            if (root / domain).exists():
                raise ValueError(
                    f"{root / domain} exists already: move it away or choose another root "
                    "(--root)"
                )
            moves.append((here, root / domain))
        elif not (root / domain).is_dir():  # not moved by an interrupted earlier run either
            top = sorted(p.name for p in extracted.iterdir() if p.name != COMPLETE_MARKER)
            shutil.rmtree(extracted)
            raise ValueError(
                f"{archive.name} does not look like Office-Home: expected "
                f"{OFFICE_HOME_FOLDER}/<{'|'.join(OFFICE_HOME_DOMAINS)}>/<class>/, "
                f"no folder {domain!r}; the archive's top level holds {top}"
            )
    _move_all(moves)
    (root / OFFICE_HOME_MARKER).write_text(
        json.dumps({"archive": archive.name, "domains": list(OFFICE_HOME_DOMAINS)}) + "\n"
    )
    shutil.rmtree(extracted)
    _remove_if_empty(root / EXTRACT_DIR)


def prepare_office_home(
    root: StrPath,
    *,
    archive: StrPath | None = None,
    url: str | None = None,
    md5: str | None = None,
    progress: bool = True,
) -> Path:
    """Unpack Office-Home so that ``root/<Domain>/<class>/<image>`` holds its four domains.

    The authors distribute ``OfficeHomeDataset_10072016.zip`` through a Google Drive
    link on https://www.hemanthdv.org/officeHomeDataset.html. Google Drive answers a
    large file with an HTML "cannot scan for viruses" confirmation page, and scripting
    around it is unreliable, so this function does not try: download the zip by hand
    and pass ``archive=PATH``, or pass ``url`` only when it is a direct link to the zip
    (e.g. your own mirror). The zip unpacks to ``OfficeHomeDataset_10072016/<Domain>/``
    (``safe_extract``); the domain folders ``Art``, ``Clipart``, ``Product`` and
    ``Real World`` (with a space) are then moved to ``root/<Domain>/`` and the rest is
    removed. Re-running on a complete root does nothing.

    Args:
        root: folder of the prepared dataset (created).
        archive: path of the downloaded zip (it is read, never modified or deleted).
        url: a direct ``http(s)`` link to the zip; it is downloaded (resumable) to
            ``root/.archives/OfficeHomeDataset_10072016.zip``.
        md5: expected MD5 of the zip, checked for ``archive`` and ``url`` alike.
        progress: show progress bars and messages.

    Returns:
        ``Path(root)``: the root for ``ucdir_lite.datasets.DomainDataset`` (domains
        ``"Art"``, ``"Clipart"``, ``"Product"``, ``"Real World"``).
    """
    root = Path(root)
    if (root / OFFICE_HOME_MARKER).is_file() and all(
        (root / d).is_dir() for d in OFFICE_HOME_DOMAINS
    ):
        if progress:
            print(f"Office-Home already prepared in {root}")
        return root
    if archive is not None and url is not None:
        raise ValueError("pass either archive=PATH or url=URL, not both")
    if archive is None and url is None:
        raise FileNotFoundError(OFFICE_HOME_HINT)
    if archive is not None:
        archive = _office_home_archive(Path(archive), md5)
    extract_dir = root / EXTRACT_DIR / "office_home"
    resuming = (extract_dir / COMPLETE_MARKER).is_file()  # an earlier run was interrupted
    if not resuming:
        taken = [root / d for d in OFFICE_HOME_DOMAINS if (root / d).exists()]
        if taken:
            raise ValueError(
                f"{taken[0]} exists already: move it away or choose another root (--root)"
            )
    created = _missing_folders(extract_dir)
    try:
        if url is not None:
            archive = _download_office_home(url, root, md5, progress)
        _unpack_office_home(Path(archive), root, extract_dir, progress)
    except BaseException:  # leave the disk as it was (a download is kept: it resumes)
        if extract_dir in created:
            shutil.rmtree(extract_dir, ignore_errors=True)
        _remove_empty(created)
        raise
    if progress:
        print(f"Office-Home: domains {', '.join(OFFICE_HOME_DOMAINS)} in {root}")
    return root
