"""A first download is complete and consistent or not stamped, and nothing wrong is ever recorded as trusted:
downloads against a real fault-injecting HTTP server on 127.0.0.1 (data/fetch.py, data/transfer.py), and
`infmask download` against a misbehaving mirror (data/acquire.py, the trust store, credentials in --base-url)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infmask.data.fetch import DownloadError, download, verified_record
from infmask.data.registry import DATASETS
from infmask.cli import main
from helpers import multibench_fixtures as fx
from helpers.fault_server import Served, serve

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)

A = bytes((i * 7 + i // 251) % 256 for i in range(300_000))
B = bytes((i * 13 + 5) % 251 for i in range(300_000))
FAST = {"retries": 3, "backoff": 0.01, "timeout": 5.0, "progress": False}
MOSI = DATASETS["mosi"].files[0]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def records(store: Path) -> dict:
    return json.loads(store.read_text())["files"] if store.exists() else {}


# ------------------------------------------------------------------------------------------------ splices and lies

def test_first_download_without_validators_is_restarted_not_spliced(tmp_path):
    # No ETag, no Last-Modified, no known sha256: after a hang-up the file changes upstream; resuming would glue
    # the old version's first bytes to the new version's rest, and record that splice as the trusted first use.
    item = Served(A, etag=False, cuts=[70_000], then=B)
    store, dest = tmp_path / "checksums.json", tmp_path / "f.bin"
    with serve({"/f.bin": item}) as server:
        download(server.url("/f.bin"), dest, tofu_store=store, **FAST)
        assert [r for _, r, _ in server.log] == [None, None]  # started again from byte 0
    assert dest.read_bytes() == B
    assert records(store)[server.url("/f.bin")]["sha256"] == sha(B) == verified_record(dest)["sha256"]


def test_lying_206_is_detected_and_the_file_fetched_whole(tmp_path):
    # The server answers a resume with correct-looking headers but the bytes from the start of the file.
    item = Served(A, lie_206=True, cuts=[100_000])
    store, dest = tmp_path / "checksums.json", tmp_path / "f.bin"
    with serve({"/f.bin": item}) as server:
        download(server.url("/f.bin"), dest, tofu_store=store, **FAST)
        statuses = [(r is not None, s) for _, r, s in server.log]
    assert statuses == [(False, 200), (True, 206), (False, 200)]  # the 206 was checked, found wrong, not used
    assert dest.read_bytes() == A and records(store)[server.url("/f.bin")]["sha256"] == sha(A)


def test_honest_206_still_resumes(tmp_path):
    item = Served(A, cuts=[100_000])
    with serve({"/f.bin": item}) as server:
        download(server.url("/f.bin"), tmp_path / "f.bin", tofu_store=tmp_path / "c.json", **FAST)
        assert [(r, s) for _, r, s in server.log] == [(None, 200), (f"bytes={100_000 - (64 << 10)}-", 206)]
    assert (tmp_path / "f.bin").read_bytes() == A


def test_body_without_length_cut_short_is_not_accepted(tmp_path):
    # No Content-Length: the body ends when the connection closes, so a hang-up looks like the end of the file.
    item = Served(A, length=False, cuts=[120_000])
    store, dest = tmp_path / "checksums.json", tmp_path / "f.bin"
    with serve({"/f.bin": item}) as server:
        download(server.url("/f.bin"), dest, tofu_store=store, **FAST)
        log = [(r, s) for _, r, s in server.log]
    assert log[:2] == [(None, 200), ("bytes=120000-", 206)]  # asked what follows: more, so it was cut short
    assert dest.read_bytes() == A and records(store)[server.url("/f.bin")]["size"] == len(A)


def test_body_without_length_is_accepted_once_the_server_confirms_its_size(tmp_path):
    with serve({"/f.bin": Served(A, length=False)}) as server:
        download(server.url("/f.bin"), tmp_path / "f.bin", **FAST)
        assert [(r, s) for _, r, s in server.log] == [(None, 200), (f"bytes={len(A)}-", 416)]
    assert (tmp_path / "f.bin").read_bytes() == A


def test_body_without_length_from_a_server_without_ranges_is_refused(tmp_path):
    item = Served(A, length=False, ranges=False, cuts=[120_000] * 10)
    store, dest = tmp_path / "checksums.json", tmp_path / "f.bin"
    with serve({"/f.bin": item}) as server, pytest.raises(DownloadError, match="unknown length"):
        download(server.url("/f.bin"), dest, tofu_store=store, **FAST)
    assert not dest.exists() and verified_record(dest) is None and not store.exists()


@pytest.mark.parametrize("ctype", ["text/html; charset=utf-8", "application/octet-stream"])
def test_html_page_is_never_the_file(tmp_path, ctype):
    page = b"<!DOCTYPE html>\n<html><head><title>503 Mirror over quota</title></head><body>try later</body></html>"
    store, dest = tmp_path / "checksums.json", tmp_path / "f.bin"
    with serve({"/f.bin": Served(page, content_type=ctype)}) as server:
        with pytest.raises(DownloadError, match="HTML page") as info:
            download(server.url("/f.bin"), dest, tofu_store=store, **FAST)
    assert "Mirror over quota" in str(info.value)
    assert not dest.exists() and not store.exists() and verified_record(dest) is None


def test_content_check_runs_before_anything_is_recorded(tmp_path):
    from infmask.data.fetch import ContentError

    def check(path: Path) -> None:
        if path.read_bytes()[:1] != b"\x80":
            raise ValueError("not a pickle")

    store, dest = tmp_path / "checksums.json", tmp_path / "f.pkl"
    with serve({"/f.pkl": Served(A)}) as server:
        with pytest.raises(ContentError, match="not a pickle"):
            download(server.url("/f.pkl"), dest, tofu_store=store, check=check, **FAST)
    assert not dest.exists() and not store.exists() and verified_record(dest) is None
    assert (tmp_path / "f.pkl.quarantine").read_bytes() == A


def test_unreadable_trust_store_is_an_error_and_is_not_rewritten(tmp_path):
    from infmask.data.trust_store import TrustStoreError

    store, dest = tmp_path / "checksums.json", tmp_path / "f.bin"
    store.write_text('{"version": 1, "files": {"http://x/a": {"sha256": "00')  # cut short mid-write
    before = store.read_bytes()
    with serve({"/f.bin": Served(A)}) as server:
        with pytest.raises(TrustStoreError, match="move it aside"):
            download(server.url("/f.bin"), dest, tofu_store=store, **FAST)
        assert server.log == []  # refused before downloading
    assert store.read_bytes() == before and not dest.exists()


# ------------------------------------------------------------------------------------------------ the CLI, a mirror

def cli(*args) -> int:
    return main([str(a) for a in args])


def _nothing_trusted(ws: Path) -> None:
    dest = ws / "raw" / "mosi" / MOSI.name
    assert not dest.exists() and verified_record(dest) is None
    assert MOSI.url not in records(ws / "raw" / "checksums.json")


def test_html_from_a_mirror_is_refused_not_pinned(ws, capsys):
    page = b"<html><head><title>Mirror: file not found</title></head><body>404</body></html>"
    with serve({"/mirror/mosi_data.pkl": Served(page, content_type="text/html")}) as server:
        assert cli("download", "mosi", "--base-url", server.url("/mirror"), "--root", ws) == 2
    err = capsys.readouterr().err
    assert "HTML page" in err and "file not found" in err and len(err.strip().splitlines()) == 1
    _nothing_trusted(ws)
    assert not (ws / "raw" / "checksums.json").exists()


def test_mirror_bytes_are_never_recorded_under_the_registry_url(ws, capsys):
    good = fx.affect_pickle("mosi", sizes={"train": 4, "valid": 3, "test": 3})
    with serve({"/mirror/mosi_data.pkl": Served(good)}) as server:
        assert cli("download", "mosi", "--base-url", server.url("/mirror"), "--root", ws) == 0
        rec = records(ws / "raw" / "checksums.json")
        assert set(rec) == {server.url("/mirror/mosi_data.pkl")} and rec[server.url("/mirror/mosi_data.pkl")][
            "sha256"] == sha(good)
    assert MOSI.url not in rec


def test_unreadable_trust_store_stops_the_download(ws, capsys):
    store = ws / "raw" / "checksums.json"
    store.parent.mkdir(parents=True)
    store.write_bytes(b"\x00\x01 not json")
    good = fx.affect_pickle("mosi", sizes={"train": 4, "valid": 3, "test": 3})
    with serve({"/mirror/mosi_data.pkl": Served(good)}) as server:
        assert cli("download", "mosi", "--base-url", server.url("/mirror"), "--root", ws) == 2
        assert server.log == []
    err = capsys.readouterr().err
    assert str(store) in err and "move it aside" in err and len(err.strip().splitlines()) == 1
    assert store.read_bytes() == b"\x00\x01 not json"
    assert not (ws / "raw" / "mosi" / MOSI.name).exists()


def _mmimdb_tar(path: Path) -> bytes:
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tf:
        for name, data in (("mmimdb/split.json", b'{"train": [], "dev": [], "test": []}'),
                           ("mmimdb/dataset/0001.json", b'{"plot": ["x"], "genres": ["Drama"]}')):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path.read_bytes()


@pytest.mark.parametrize("token", [None, "T0kenValue77"])
def test_credentials_in_the_mirror_url_are_used_but_never_printed_or_written(tmp_path, token):
    password = "S3cretPa55word"
    ws = tmp_path / "ws"
    auth = {"auth": ("mirror-user", password), "token": token}
    files = {"/mirror/mosi_data.pkl": Served(fx.affect_pickle("mosi", sizes={"train": 4, "valid": 3, "test": 3}),
                                             **auth),
             f"/mirror/{fx.VT_ZIP_PATH}": Served(fx.vt_zip(tmp_path / "vt", n_files=1), **auth),
             "/mirror/download/mmimdb/mmimdb.tar.gz": Served(_mmimdb_tar(tmp_path / "m.tar.gz"), **auth)}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "INFMASK_"))}
    env.update(INFMASK_ROOT=str(ws), WANDB_MODE="offline", PYTHONPATH=str(ROOT))
    outputs = []
    with serve(files) as server:
        base = server.url("/mirror", userinfo=f"mirror-user:{password}") + (f"?token={token}" if token else "")
        for dataset in ("mosi", "visionandtouch", "mmimdb"):
            ok = subprocess.run([sys.executable, "-m", "infmask", "download", dataset, "--base-url", base],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
            assert ok.returncode == 0, ok.stderr[-2000:]
            outputs += [ok.stdout, ok.stderr]
        bad = subprocess.run([sys.executable, "-m", "infmask", "download", "sarcasm", "--base-url",
                              base.replace(password, password + "-wrong")],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and ("401" in bad.stderr or "404" in bad.stderr), bad.stderr[-2000:]
    outputs += [bad.stdout, bad.stderr]
    for secret in [password] + ([token] if token else []):
        assert not [text for text in outputs if secret in text]
        leaks = [str(p) for p in ws.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
        assert leaks == [], leaks
    # each finished download's offline W&B run is grepped too; the refused one (exit 2) leaves no run to sync
    assert len(list((ws / "wandb").glob("offline-run-*"))) == 3
    for written in ("raw/checksums.json", "raw/mosi/mosi_data.pkl.verified.json", "raw/visionandtouch/manifest.json",
                    "raw/mmimdb/extracted.json"):
        assert (ws / written).is_file(), written
    assert server.url("/mirror/mosi_data.pkl") in json.loads((ws / "raw" / "checksums.json").read_text())["files"]


def test_ftp_mirror_is_a_one_line_error(ws, capsys):
    for name in ("mosi", "mmimdb"):
        assert cli("download", name, "--base-url", "ftp://user:pw@mirror.example/m", "--root", ws) == 2
        err = capsys.readouterr().err
        assert "http(s) URL" in err and "pw" not in err and len(err.strip().splitlines()) == 1
    assert not (ws / "raw" / "checksums.json").exists()


def test_failed_fetch_messages_hold_no_credentials(tmp_path):
    with serve({}) as server:
        url = server.url("/missing.bin", userinfo="u:Hunter2Secret") + "?X-Amz-Signature=Sig999"
        with pytest.raises(DownloadError) as info:
            download(url, tmp_path / "x.bin", **FAST)
    assert "404" in str(info.value)
    assert "Hunter2Secret" not in str(info.value) and "Sig999" not in str(info.value)
    assert info.value.url == server.url("/missing.bin")


def test_connection_errors_quote_no_token(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nobody listens on: connection refused, whose message quotes the URL
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://u:Hunter2Secret@127.0.0.1:{port}/x.bin?id=7&access_token=Tok3nValue"
    with pytest.raises(DownloadError, match="giving up") as info:
        download(url, tmp_path / "x.bin", retries=0, backoff=0.0, timeout=2.0, progress=False)
    assert "Tok3nValue" not in str(info.value) and "Hunter2Secret" not in str(info.value)
    assert "id=7" in str(info.value)
