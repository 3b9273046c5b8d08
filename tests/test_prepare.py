"""Tests for ucdir_lite.prepare: download, safe extraction, DomainNet and Office-Home.

Everything is served by a local HTTP server the tests start on 127.0.0.1 (Range
support, a switch to ignore Range, and a way to cut a response short); the archives
are tiny hand-made zips/tars in the real layouts.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import stat
import subprocess
import sys
import tarfile
import threading
import uuid
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from ucdir_lite import prepare
from ucdir_lite.prepare import (
    DOMAINNET_SUBSET,
    ChecksumError,
    DownloadError,
    UnsafeArchiveError,
    download,
    prepare_domainnet,
    prepare_office_home,
    safe_extract,
)

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- server
@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    cuts: dict[str, int] = field(default_factory=dict)  # path -> bytes sent once, then close
    ignore_range: bool = False
    log: list[tuple[str, str | None, int]] = field(default_factory=list)  # path, Range, status


class _Handler(BaseHTTPRequestHandler):
    timeout = 10  # seconds a connection may idle

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        body = state.files.get(self.path)
        requested = self.headers.get("Range")
        if body is None:
            state.log.append((self.path, requested, 404))
            self.send_error(404)
            return
        start = 0
        if requested and not state.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", requested).group(1))
            if start >= len(body):
                state.log.append((self.path, requested, 416))
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            status = 206
        else:
            self.send_response(200)
            status = 200
        state.log.append((self.path, requested, status))
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        cut = state.cuts.pop(self.path, None)
        if cut is not None:  # simulate a connection that breaks mid-way
            payload = payload[:cut]
            self.close_connection = True
        self.wfile.write(payload)
        self.wfile.flush()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = ServerState()  # type: ignore[attr-defined]
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield httpd.state, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# ------------------------------------------------------------------------------ data
def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _jpeg(seed: int) -> bytes:
    rng = random.Random(seed)
    image = Image.new("RGB", (8, 8), tuple(rng.randrange(256) for _ in range(3)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


DN_EXTRA = ("aircraft_carrier", "apple")  # classes outside the subset


def _domainnet_files(domains=("clipart", "sketch")) -> tuple[dict[str, bytes], dict]:
    """Tiny DomainNet: 2 images per class, the first listed in train, the second in test."""
    files, images = {}, {}
    for d, domain in enumerate(domains):
        members, train, test = {}, [], []
        for c, name in enumerate(sorted(DOMAINNET_SUBSET + DN_EXTRA)):
            for i in range(2):
                path = f"{domain}/{name}/{domain}_{c:03d}_{i:06d}.jpg"
                members[path] = _jpeg(1000 * d + 10 * c + i)
                (train if i == 0 else test).append(f"{path} {c}")
        images.update(members)
        archive = prepare.DOMAINNET_ARCHIVES[domain]
        files[archive] = _zip_bytes(members)
        files[f"domainnet/txt/{domain}_train.txt"] = ("\n".join(train) + "\n").encode()
        files[f"domainnet/txt/{domain}_test.txt"] = ("\n".join(test) + "\n").encode()
    return files, images


def _serve(state: ServerState, prefix: str, files: dict[str, bytes]) -> dict[str, str]:
    for relative, data in files.items():
        state.files[f"{prefix}/{relative}"] = data
    return {relative: _md5(data) for relative, data in files.items()}


# ========================================================================== download
BLOB = random.Random(0).randbytes(300_000)


def test_download_resumes_after_a_cut_with_range(server, tmp_path):
    state, url = server
    state.files["/blob.bin"] = BLOB
    state.cuts["/blob.bin"] = 100_000
    dest = tmp_path / "blob.bin"
    part = tmp_path / "blob.bin.part"
    with pytest.raises(DownloadError, match="run again to resume"):
        download(f"{url}/blob.bin", dest, md5=_md5(BLOB), progress=False, retries=0)
    assert not dest.exists()
    assert part.read_bytes() == BLOB[:100_000]
    out = download(f"{url}/blob.bin", dest, md5=_md5(BLOB), progress=False, retries=0)
    assert out == dest
    assert state.log[-1] == ("/blob.bin", "bytes=100000-", 206)
    assert dest.read_bytes() == BLOB
    assert not part.exists()


def test_download_retries_within_one_call(server, tmp_path):
    state, url = server
    state.files["/blob.bin"] = BLOB
    state.cuts["/blob.bin"] = 123_456
    dest = download(f"{url}/blob.bin", tmp_path / "b", sha256=hashlib.sha256(BLOB).hexdigest(),
                    progress=False)
    assert [entry[1] for entry in state.log] == [None, "bytes=123456-"]
    assert dest.read_bytes() == BLOB


def test_download_restarts_when_server_ignores_range(server, tmp_path):
    state, url = server
    state.files["/blob.bin"] = BLOB
    state.ignore_range = True
    (tmp_path / "b.part").write_bytes(b"garbage" * 1000)
    dest = download(f"{url}/blob.bin", tmp_path / "b", md5=_md5(BLOB), progress=False)
    assert state.log == [("/blob.bin", "bytes=7000-", 200)]
    assert dest.read_bytes() == BLOB  # restarted from zero, not appended


def test_download_complete_part_gets_416_and_is_kept(server, tmp_path):
    state, url = server
    state.files["/blob.bin"] = BLOB
    (tmp_path / "b.part").write_bytes(BLOB)
    dest = download(f"{url}/blob.bin", tmp_path / "b", md5=_md5(BLOB), progress=False)
    assert state.log == [("/blob.bin", f"bytes={len(BLOB)}-", 416)]
    assert dest.read_bytes() == BLOB


@pytest.mark.parametrize("kind", ["md5", "sha256"])
def test_download_wrong_checksum_leaves_nothing(server, tmp_path, kind):
    state, url = server
    state.files["/blob.bin"] = BLOB
    wrong = "0" * (32 if kind == "md5" else 64)
    actual = hashlib.new(kind, BLOB).hexdigest()
    with pytest.raises(ChecksumError) as info:
        download(f"{url}/blob.bin", tmp_path / "blob.bin", progress=False, **{kind: wrong})
    message = str(info.value)
    assert "blob.bin" in message and wrong in message and actual in message
    assert list(tmp_path.iterdir()) == []


def test_download_existing_dest_is_not_fetched_again(server, tmp_path):
    state, url = server
    state.files["/blob.bin"] = BLOB
    dest = download(f"{url}/blob.bin", tmp_path / "b", md5=_md5(BLOB), progress=False)
    state.log.clear()
    download(f"{url}/blob.bin", dest, md5=_md5(BLOB), progress=False)
    download(f"{url}/blob.bin", dest, progress=False)  # no checksum: trusted as is
    assert state.log == []
    dest.write_bytes(b"corrupt")  # wrong checksum: fetched again
    download(f"{url}/blob.bin", dest, md5=_md5(BLOB), progress=False)
    assert len(state.log) == 1 and dest.read_bytes() == BLOB


def test_download_without_checksum_prints_md5(server, tmp_path, capsys):
    state, url = server
    state.files["/blob.bin"] = BLOB
    download(f"{url}/blob.bin", tmp_path / "b", progress=False)
    assert _md5(BLOB) in capsys.readouterr().out


def test_download_bad_input_and_http_error(server, tmp_path):
    _, url = server
    with pytest.raises(ValueError, match="http"):
        download("ftp://example.org/x", tmp_path / "x")
    with pytest.raises(ValueError, match="md5"):
        download(f"{url}/x", tmp_path / "x", md5="not-a-digest")
    with pytest.raises(ValueError, match="folder"):
        download(f"{url}/x", tmp_path)
    with pytest.raises(DownloadError, match="404"):
        download(f"{url}/missing", tmp_path / "x", progress=False)
    assert list(tmp_path.iterdir()) == []


# ====================================================================== safe_extract
def _make_zip(path: Path, members: list[tuple[str, bytes]], link: tuple[str, str] | None = None,
              special: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            zf.writestr(zipfile.ZipInfo(name), data)
        if link is not None:
            info = zipfile.ZipInfo(link[0])
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, link[1])
        if special is not None:
            info = zipfile.ZipInfo(special)
            info.create_system = 3
            info.external_attr = (stat.S_IFIFO | 0o644) << 16
            zf.writestr(info, b"")
    return path


def _make_tar(path: Path, members: list[tuple[str, bytes]], extra: list[tarfile.TarInfo] = ()):
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra:
            tf.addfile(info)
    return path


def _tar_info(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


GOOD = [("top/a.txt", b"alpha"), ("top/sub/b.txt", b"beta")]
EVIL_ABS = f"/tmp/ucdir-lite-evil-{uuid.uuid4().hex}"

ZIP_ATTACKS = {
    "dotdot": dict(members=[*GOOD, ("../evil.txt", b"x")], bad="../evil.txt"),
    "deep-dotdot": dict(members=[*GOOD, ("top/../../evil.txt", b"x")], bad="top/../../evil.txt"),
    "absolute": dict(members=[*GOOD, (EVIL_ABS, b"x")], bad=EVIL_ABS),
    "drive": dict(members=[*GOOD, ("C:/evil.txt", b"x")], bad="C:/evil.txt"),
    "backslash": dict(members=[*GOOD, ("..\\evil.txt", b"x")], bad="..\\evil.txt"),
    "symlink": dict(members=GOOD, link=("top/link", "../../outside"), bad="top/link"),
    "fifo": dict(members=GOOD, special="top/fifo", bad="top/fifo"),
}

TAR_ATTACKS = {
    "dotdot": dict(members=[*GOOD, ("../evil.txt", b"x")], bad="../evil.txt"),
    "absolute": dict(members=[*GOOD, (EVIL_ABS, b"x")], bad=EVIL_ABS),
    "symlink": dict(extra=[_tar_info("top/link", tarfile.SYMTYPE, "/etc/passwd")],
                    bad="top/link"),
    "hardlink": dict(extra=[_tar_info("top/hard", tarfile.LNKTYPE, "../../outside")],
                     bad="top/hard"),
    "fifo": dict(extra=[_tar_info("top/fifo", tarfile.FIFOTYPE)], bad="top/fifo"),
    "device": dict(extra=[_tar_info("top/dev", tarfile.CHRTYPE)], bad="top/dev"),
}


def _assert_rejected(archive: Path, bad: str, tmp_path: Path) -> None:
    before = _tree(tmp_path)
    dest = tmp_path / "work" / "out"
    with pytest.raises(UnsafeArchiveError) as info:
        safe_extract(archive, dest)
    assert repr(bad) in str(info.value)  # the error names the member
    assert _tree(tmp_path) == before  # nothing written, inside or outside the target
    assert not Path(EVIL_ABS).exists()


@pytest.mark.parametrize("attack", sorted(ZIP_ATTACKS))
def test_safe_extract_rejects_malicious_zip(tmp_path, attack):
    spec = ZIP_ATTACKS[attack]
    (tmp_path / "work").mkdir()
    archive = _make_zip(tmp_path / "work" / "evil.zip", spec["members"], spec.get("link"),
                        spec.get("special"))
    _assert_rejected(archive, spec["bad"], tmp_path)


@pytest.mark.parametrize("attack", sorted(TAR_ATTACKS))
def test_safe_extract_rejects_malicious_tar(tmp_path, attack):
    spec = TAR_ATTACKS[attack]
    (tmp_path / "work").mkdir()
    archive = _make_tar(tmp_path / "work" / "evil.tar.gz", spec.get("members", GOOD),
                        spec.get("extra", []))
    _assert_rejected(archive, spec["bad"], tmp_path)


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_safe_extract_writes_the_tree_and_a_marker(tmp_path, kind):
    make = _make_zip if kind == "zip" else _make_tar
    archive = make(tmp_path / f"good.{kind}", [*GOOD, ("./top/c.txt", b"gamma")])
    dest = safe_extract(archive, tmp_path / "out")
    assert dest == tmp_path / "out"
    assert (dest / "top/a.txt").read_bytes() == b"alpha"
    assert (dest / "top/sub/b.txt").read_bytes() == b"beta"
    assert (dest / "top/c.txt").read_bytes() == b"gamma"
    assert (dest / prepare.COMPLETE_MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([archive.name, "out"])


def test_safe_extract_members_filter(tmp_path):
    archive = _make_zip(tmp_path / "a.zip", GOOD)
    dest = safe_extract(archive, tmp_path / "out", members=lambda name: "sub" not in name)
    assert _tree(dest) == {"top", "top/a.txt", prepare.COMPLETE_MARKER}


def test_interrupted_extraction_leaves_no_half_tree(tmp_path, monkeypatch):
    archive = _make_zip(tmp_path / "a.zip", GOOD)
    calls = []
    real_write = prepare._write_file

    def failing_write(source, target):
        calls.append(target)
        if len(calls) == 2:
            raise KeyboardInterrupt  # e.g. the user pressed Ctrl-C mid-way
        real_write(source, target)

    monkeypatch.setattr(prepare, "_write_file", failing_write)
    with pytest.raises(KeyboardInterrupt):
        safe_extract(archive, tmp_path / "out")
    assert len(calls) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["a.zip"]  # no dest, no temporary folder
    monkeypatch.setattr(prepare, "_write_file", real_write)
    assert (safe_extract(archive, tmp_path / "out") / "top/sub/b.txt").read_bytes() == b"beta"


def test_rerunning_a_complete_extraction_does_nothing(tmp_path, monkeypatch):
    archive = _make_zip(tmp_path / "a.zip", GOOD)
    dest = safe_extract(archive, tmp_path / "out")
    marker_time = (dest / prepare.COMPLETE_MARKER).stat().st_mtime_ns

    def must_not_write(source, target):
        raise AssertionError("a complete extraction was extracted again")

    monkeypatch.setattr(prepare, "_write_file", must_not_write)
    archive.unlink()  # not even the archive is needed
    assert safe_extract(archive, dest) == dest
    assert (dest / prepare.COMPLETE_MARKER).stat().st_mtime_ns == marker_time


def test_safe_extract_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError):
        safe_extract(tmp_path / "missing.zip", tmp_path / "out")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="neither a zip nor a tar"):
        safe_extract(text, tmp_path / "out")
    archive = _make_zip(tmp_path / "a.zip", GOOD)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("user data")
    with pytest.raises(ValueError, match="not a completed extraction"):
        safe_extract(archive, tmp_path / "busy")
    assert _tree(tmp_path / "busy") == {"mine.txt"}


# ========================================================================= DomainNet
def test_prepare_domainnet_end_to_end(server, tmp_path):
    state, url = server
    files, images = _domainnet_files()
    md5s = _serve(state, "/dn", files)
    zip_url = "/dn/groundtruth/clipart.zip"
    cut = len(files["groundtruth/clipart.zip"]) // 2
    state.cuts[zip_url] = cut
    root = prepare_domainnet(tmp_path / "dn", domains=("clipart", "sketch"),
                             base_url=f"{url}/dn/", md5s=md5s, progress=False)
    assert root == tmp_path / "dn"
    # the broken clipart download was resumed with a Range request
    assert [e for e in state.log if e[0] == zip_url] == [
        (zip_url, None, 200), (zip_url, f"bytes={cut}-", 206)]
    archived = root / prepare.ARCHIVE_DIR / "clipart.zip"
    assert archived.read_bytes() == files["groundtruth/clipart.zip"]
    for domain in ("clipart", "sketch"):
        classes = sorted(p.name for p in (root / domain).iterdir() if p.is_dir())
        assert classes == sorted(DOMAINNET_SUBSET)
        for name in DOMAINNET_SUBSET:
            folder = root / domain / name
            assert len(list(folder.iterdir())) == 2
            for image in folder.iterdir():
                assert image.read_bytes() == images[f"{domain}/{name}/{image.name}"]
    assert sorted(p.name for p in root.iterdir()) == sorted([".archives", "clipart", "sketch"])

    datasets = pytest.importorskip("ucdir_lite.datasets")
    dataset = datasets.DomainDataset(root, "clipart")
    assert list(dataset.classes) == sorted(DOMAINNET_SUBSET)
    assert len(dataset) == 14
    assert sorted(dataset.labels.tolist()) == sorted(list(range(7)) * 2)
    x, label, index = dataset[3]
    assert index == 3 and 0 <= int(label) < 7


def test_prepare_domainnet_rerun_split_and_keep_archives(server, tmp_path, monkeypatch):
    state, url = server
    files, _ = _domainnet_files(("sketch",))
    md5s = _serve(state, "/dn", files)
    kwargs = dict(domains=("sketch",), base_url=f"{url}/dn", md5s=md5s, progress=False)
    root = prepare_domainnet(tmp_path, **kwargs)
    state.log.clear()
    with monkeypatch.context() as patch:  # complete: nothing downloaded, nothing rebuilt
        patch.setattr(prepare, "download", None)
        patch.setattr(prepare, "safe_extract", None)
        assert prepare_domainnet(tmp_path, **kwargs) == root
    assert state.log == []
    # another split rebuilds from the kept archive without the network
    prepare_domainnet(tmp_path, split="train", **kwargs)
    assert state.log == []
    images = sorted(p.name for p in (root / "sketch").rglob("*.jpg"))
    assert len(images) == 7 and all(name.endswith("_000000.jpg") for name in images)
    prepare_domainnet(tmp_path, split="all", classes=("zebra", "apple"), keep_archives=False,
                      **kwargs)
    assert sorted(p.name for p in (root / "sketch").iterdir() if p.is_dir()) == ["apple", "zebra"]
    assert len(list((root / "sketch").rglob("*.jpg"))) == 4
    assert not (root / prepare.ARCHIVE_DIR / "sketch.zip").exists()
    assert (root / prepare.ARCHIVE_DIR / "sketch_train.txt").is_file()


def test_prepare_domainnet_checksum_and_class_errors(server, tmp_path, capsys):
    state, url = server
    files, _ = _domainnet_files(("sketch",))
    md5s = _serve(state, "/dn", files)
    bad = {**md5s, "sketch.zip": "f" * 32}
    with pytest.raises(ChecksumError, match="sketch.zip"):
        prepare_domainnet(tmp_path, domains=("sketch",), base_url=f"{url}/dn", md5s=bad,
                          progress=False)
    assert not (tmp_path / "sketch").exists()
    assert not (tmp_path / prepare.ARCHIVE_DIR / "sketch.zip").exists()
    assert not (tmp_path / prepare.ARCHIVE_DIR / "sketch.zip.part").exists()
    with pytest.raises(ValueError, match="did you mean bird"):
        prepare_domainnet(tmp_path, domains=("sketch",), classes=("birdd",),
                          base_url=f"{url}/dn", md5s=None, progress=False)
    assert _md5(files["sketch.zip"]) in capsys.readouterr().out  # unverified: md5 printed
    assert not (tmp_path / "sketch").exists()
    with pytest.raises(ValueError, match="choose from"):
        prepare_domainnet(tmp_path, domains=("photo",))
    with pytest.raises(ValueError, match="split"):
        prepare_domainnet(tmp_path, split="val")
    (tmp_path / "sketch").mkdir()
    with pytest.raises(ValueError, match="not made by prepare_domainnet"):
        prepare_domainnet(tmp_path, domains=("sketch",), base_url=f"{url}/dn", md5s=md5s,
                          progress=False)


# ======================================================================= Office-Home
def _office_home_zip(path: Path, domains=prepare.OFFICE_HOME_DOMAINS) -> dict[str, bytes]:
    members = {}
    for d, domain in enumerate(domains):
        for c, name in enumerate(("Alarm_Clock", "Backpack")):
            for i in range(2):
                members[f"OfficeHomeDataset_10072016/{domain}/{name}/{i + 1:05d}.jpg"] = (
                    _jpeg(100 * d + 10 * c + i))
    members["OfficeHomeDataset_10072016/ImageInfo.csv"] = b"image,label\n"
    members["__MACOSX/OfficeHomeDataset_10072016/._Art"] = b"junk"
    path.write_bytes(_zip_bytes(members))
    return members


def test_prepare_office_home_from_archive(tmp_path, monkeypatch):
    archive = tmp_path / "OfficeHomeDataset_10072016.zip"
    members = _office_home_zip(archive)
    root = prepare_office_home(tmp_path / "oh", archive=archive, md5=_md5(archive.read_bytes()),
                               progress=False)
    assert root == tmp_path / "oh"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(
        ["Art", "Clipart", "Product", "Real World"])
    image = root / "Real World" / "Backpack" / "00002.jpg"
    assert image.read_bytes() == members[f"OfficeHomeDataset_10072016/{image.relative_to(root)}"]
    assert archive.is_file()  # the user's archive is left alone
    # re-running on a complete root does nothing and needs no archive
    monkeypatch.setattr(prepare, "safe_extract", None)
    assert prepare_office_home(root, progress=False) == root

    datasets = pytest.importorskip("ucdir_lite.datasets")
    dataset = datasets.DomainDataset(root, "Real World")
    assert list(dataset.classes) == ["Alarm_Clock", "Backpack"] and len(dataset) == 4


def test_prepare_office_home_needs_an_archive(tmp_path):
    with pytest.raises(FileNotFoundError, match="hemanthdv.org") as info:
        prepare_office_home(tmp_path)
    assert "archive=PATH" in str(info.value)
    with pytest.raises(FileNotFoundError, match="hemanthdv.org"):
        prepare_office_home(tmp_path, archive=tmp_path / "missing.zip")
    with pytest.raises(ValueError, match="not both"):
        prepare_office_home(tmp_path, archive="a.zip", url="http://127.0.0.1/a.zip")
    assert list(tmp_path.iterdir()) == []


def test_prepare_office_home_wrong_archive(tmp_path):
    archive = tmp_path / "a.zip"
    _office_home_zip(archive, domains=("Art", "Clipart", "Product"))
    with pytest.raises(ValueError, match="Real World"):
        prepare_office_home(tmp_path / "oh", archive=archive, progress=False)
    assert not (tmp_path / "oh").exists()  # a failed prepare leaves the disk as it found it
    with pytest.raises(ChecksumError, match="expected 0{32}"):
        prepare_office_home(tmp_path / "oh", archive=archive, md5="0" * 32, progress=False)
    assert archive.is_file()


def test_prepare_office_home_from_url(server, tmp_path):
    state, url = server
    archive = tmp_path / "src.zip"
    _office_home_zip(archive)
    state.files["/oh.zip"] = archive.read_bytes()
    state.files["/drive"] = b"<html>Google Drive can't scan this file for viruses</html>"
    with pytest.raises(ValueError, match="direct link"):
        prepare_office_home(tmp_path / "oh", url=f"{url}/drive", progress=False)
    assert not any((tmp_path / "oh").rglob("*.zip*"))
    root = prepare_office_home(tmp_path / "oh", url=f"{url}/oh.zip",
                               md5=_md5(archive.read_bytes()), progress=False)
    assert (root / "Art" / "Alarm_Clock" / "00001.jpg").is_file()


# ========================================================================= wrappers
def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "data_scripts" / name), *args],
                          capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("name", ["prepare_domainnet.py", "prepare_office_home.py"])
def test_scripts_help(name):
    result = _script(name, "--help")
    assert result.returncode == 0 and "usage" in result.stdout


def test_script_failure_is_one_line(tmp_path):
    result = _script("prepare_office_home.py", str(tmp_path / "oh"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "hemanthdv.org" in lines[0]


def test_domainnet_through_the_cli_with_local_server(server, tmp_path):
    from ucdir_lite.cli import main

    state, url = server
    files, _ = _domainnet_files(("sketch",))
    _serve(state, "/dn", files)
    args = ["data", "prepare", "domainnet", str(tmp_path), "--domains", "sketch", "--base-url",
            f"{url}/dn", "--quiet"]
    assert main([*args, "--no-verify", "--classes", "whale", "zebra"]) == 0
    assert sorted(p.name for p in (tmp_path / "sketch").iterdir() if p.is_dir()) == [
        "whale", "zebra"]
    assert main([*args, "--base-url", f"{url}/nowhere", "--split", "test"]) == 1
    # the --root form is the same command; both at once must agree
    assert main([*args[:3], "--root", str(tmp_path), *args[4:], "--no-verify", "--classes",
                 "whale"]) == 0
    assert main([*args, "--root", str(tmp_path / "other")]) == 1


def test_the_scripts_are_the_cli(tmp_path):
    for name in ("generate_glyphs.py", "prepare_domainnet.py", "prepare_office_home.py"):
        text = (REPO / "data_scripts" / name).read_text()
        assert "from ucdir_lite.cli import main" in text and "argparse" not in text
    result = _script("generate_glyphs.py", str(tmp_path / "g"), "--num-classes", "2",
                     "--images-per-class", "2", "--domains", "clipart", "sketch", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "8 images" in result.stdout


# ================================================================ bounds and leftovers
def _deflated_zip(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def test_safe_extract_refuses_more_than_its_size_limit_before_writing(tmp_path):
    archive = _make_zip(tmp_path / "a.zip", [("d/a.bin", os.urandom(3000)),
                                             ("d/b.bin", os.urandom(3000))])
    with pytest.raises(ValueError, match=r"a\.zip would unpack 6000 bytes, more than the "
                       r"limit of 5000 bytes"):
        safe_extract(archive, tmp_path / "work" / "out", max_bytes=5000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]  # nothing written
    # the limit counts only the members selected
    dest = safe_extract(archive, tmp_path / "out", max_bytes=5000,
                        members=lambda name: name.endswith("a.bin"))
    assert _tree(dest) == {"d", "d/a.bin", prepare.COMPLETE_MARKER}


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_safe_extract_refuses_a_compression_bomb(tmp_path, kind):
    members = [("zeros.bin", bytes(2_000_000))]  # 2 MB that compress to about 2 KB
    if kind == "zip":
        archive = _deflated_zip(tmp_path / "bomb.zip", members)
    else:
        archive = _make_tar(tmp_path / "bomb.tar.gz", members)
    assert archive.stat().st_size < 20_000
    with pytest.raises(ValueError, match=rf"{archive.name} would unpack 2.0 MB from \d+ "
                       r"bytes \(ratio \d+, more than the limit of 100\): a compression bomb"):
        safe_extract(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == [archive.name]


def test_safe_extract_checks_free_disk_space_first(tmp_path, monkeypatch):
    archive = _make_zip(tmp_path / "a.zip", GOOD)
    usage = prepare.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(prepare.shutil, "disk_usage",
                        lambda path: usage._replace(free=5))
    with pytest.raises(OSError, match=r"a\.zip needs 9 bytes .* only 5 bytes are free"):
        safe_extract(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]


def test_stated_limits_fit_the_real_archives():
    assert prepare.OFFICE_HOME_MAX_BYTES > 1.1e9  # the real zip unpacks to ~1.1 GB
    assert prepare.DOMAINNET_MAX_BYTES > 6e9  # the largest DomainNet domain: <= 6 GB
    assert prepare.MAX_COMPRESSION_RATIO == 100  # JPEGs: ~1


def test_a_partial_extraction_left_by_a_killed_run_is_removed(tmp_path):
    archive = _make_zip(tmp_path / "a.zip", GOOD)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a PID no process has any more
    stale = [tmp_path / f".out.partial-{dead.pid}-k2j3h4", tmp_path / ".out.partial-x7wq2m1c"]
    for folder in stale:  # the second: the name an older version gave it
        (folder / "top").mkdir(parents=True)
        (folder / "top" / "a.txt").write_bytes(b"half")
    alive = tmp_path / ".out.partial-1-abcdef"  # PID 1 is alive: another run at work
    alive.mkdir()
    dest = safe_extract(archive, tmp_path / "out")
    assert (dest / "top" / "a.txt").read_bytes() == b"alpha"
    assert not any(folder.exists() for folder in stale) and alive.is_dir()


def _corrupt_member(archive: Path, data: bytes) -> None:
    """Flip one byte of a stored member's data: its CRC no longer matches."""
    raw = archive.read_bytes()
    assert raw.count(data) == 1
    archive.write_bytes(raw.replace(data, data[:-1] + bytes([data[-1] ^ 0xFF])))


def test_a_corrupt_member_is_one_clear_error_and_leaves_nothing(tmp_path):
    archive = _make_zip(tmp_path / "a.zip", [("top/a.txt", b"alpha-alpha-alpha")])
    _corrupt_member(archive, b"alpha-alpha-alpha")
    with pytest.raises(ValueError, match=r"a\.zip is damaged: member 'top/a\.txt' .*CRC.*"
                       "download it again"):
        safe_extract(archive, tmp_path / "work" / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]  # no empty work/


def _office_home_archive(tmp_path: Path) -> Path:
    archive = tmp_path / "OfficeHomeDataset_10072016.zip"
    _office_home_zip(archive)
    return archive


def test_failed_office_home_prepare_leaves_the_disk_as_it_found_it(tmp_path, monkeypatch):
    archive = _office_home_archive(tmp_path)
    root = tmp_path / "oh"
    # an existing domain folder: refused before anything is extracted
    (root / "Art").mkdir(parents=True)
    (root / "Art" / "mine.jpg").write_bytes(b"user data")
    with pytest.raises(ValueError, match=r"Art exists already"):
        prepare_office_home(root, archive=archive, progress=False)
    assert _tree(root) == {"Art", "Art/mine.jpg"}
    # Ctrl-C mid-extract, into a root that did not exist
    real_write = prepare._write_file

    def interrupted(source, target):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "_write_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_office_home(tmp_path / "new", archive=archive, progress=False)
    assert not (tmp_path / "new").exists()
    monkeypatch.setattr(prepare, "_write_file", real_write)
    # a zip over the stated limit
    monkeypatch.setattr(prepare, "OFFICE_HOME_MAX_BYTES", 1000)
    with pytest.raises(ValueError, match="more than the limit of 1000 bytes"):
        prepare_office_home(tmp_path / "new", archive=archive, progress=False)
    assert not (tmp_path / "new").exists()


def test_a_damaged_office_home_zip_leaves_nothing(tmp_path):
    archive = tmp_path / "OfficeHomeDataset_10072016.zip"
    _make_zip(archive, [("OfficeHomeDataset_10072016/Art/Bike/1.jpg", b"jpeg-bytes-here")])
    _corrupt_member(archive, b"jpeg-bytes-here")
    with pytest.raises(ValueError, match="is damaged"):
        prepare_office_home(tmp_path / "oh", archive=archive, progress=False)
    assert not (tmp_path / "oh").exists()


def test_an_archive_path_that_is_a_folder_says_so(tmp_path):
    with pytest.raises(ValueError, match=r"is a folder, not the zip file"):
        prepare_office_home(tmp_path / "oh", archive=tmp_path, progress=False)
    assert not (tmp_path / "oh").exists()
