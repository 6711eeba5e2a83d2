"""Tiny MultiBench files with the real schema, and a real HTTP server on 127.0.0.1 that serves them.

Imported by tests/test_multibench*.py; holds no tests.

* affect pickles (``mosi_data.pkl``, ``humor.pkl``, ``sarcasm.pkl``): {train, valid, test} of dicts with vision /
  audio / text (N, 50, d) float32 front-zero-padded like the real files, nested labels (N, 1, 1), some ``-inf``
  audio, some all-zero-text samples (to be dropped), and a label signal in the text so probes can learn;
* MIMIC ``im.pk``: ep_tdata (N, 24, 12), adm_features_all (N, 5), adm_labels_all (N, 6), y_icd9 (N, 20), with NaN
  and inf in the features;
* Vision&Touch: a zip of a few ``triangle_real_data/*.h5`` episodes with every dataset the reference reads
  (image, depth_data, proprio, ee_forces_continuous, contact, action, optical_flow) at the real per-step shapes.
"""
from __future__ import annotations

import contextlib
import io
import pickle
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from infmask.data import multibench as mb

AFFECT_FILES = {"mosi": "mosi_data.pkl", "humor": "humor.pkl", "sarcasm": "sarcasm.pkl"}
AFFECT_SIZES = {"train": 40, "valid": 16, "test": 16}
N_ZERO_TEXT = 2          # all-zero-text samples added to every split (dropped by preprocessing)
VT_FILES = 5
VT_ZIP_PATH = "juno/triangle_real_data.zip"


# ------------------------------------------------------------------------------------------------ affect

def affect_split(dataset: str, n: int, rng: np.random.Generator, n_zero_text: int = N_ZERO_TEXT) -> dict:
    dims = mb.AFFECT_DIMS[dataset]
    t = mb.AFFECT_SEQ_LEN
    total = n + n_zero_text
    labels = rng.uniform(-3, 3, size=total).astype(np.float32)
    labels[: min(2, n)] = 0.0                         # exactly 0 -> class 0 (label > 0 rule)
    start = rng.integers(0, 45, size=total)           # front padding, as the real (GloVe-aligned) text
    out = {}
    for m, d in dims.items():
        x = rng.normal(0, 1, size=(total, t, d)).astype(np.float32)
        if m == "text":
            x[:, :, 0] += np.where(labels > 0, 1.5, -1.5)[:, None]   # learnable signal
        x[np.arange(t)[None, :] < start[:, None]] = 0
        out[m] = x
    out["audio"][rng.random(out["audio"].shape) < 0.01] = -np.inf
    out["text"][n:] = 0                                # to be dropped
    out["labels"] = labels.reshape(total, 1, 1)
    out["id"] = np.array([f"clip{i}" for i in range(total)])
    return out


def affect_pickle(dataset: str, seed: int = 0, sizes: dict | None = None) -> bytes:
    rng = np.random.default_rng(seed)
    data = {split: affect_split(dataset, n, rng) for split, n in (sizes or AFFECT_SIZES).items()}
    return pickle.dumps(data, protocol=4)


# ------------------------------------------------------------------------------------------------ MIMIC

def mimic_dict(n: int = 80, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, mb.MIMIC_N_ICD9)) < 0.3).astype(np.float64)
    y[:, 7] = np.arange(n) % 2                        # balanced task column
    static = rng.normal(50, 10, size=(n, 5))
    static[:, 0] += 5 * y[:, 7]
    series = rng.normal(0, 3, size=(n, 24, 12))
    series[:, :, 1] += 2 * y[:, 7][:, None]
    static[1, 2] = np.nan
    static[2, 3] = np.inf
    series[3, 4, 5] = -np.inf
    series[4, :, 0] = np.nan
    return {"ep_tdata": series, "adm_features_all": static, "adm_labels_all": (rng.random((n, 6)) < 0.1) * 1.0,
            "y_icd9": y}


def mimic_pickle(n: int = 80, seed: int = 0, **overrides) -> bytes:
    d = mimic_dict(n, seed)
    d.update(overrides)
    return pickle.dumps(d, protocol=4)


# ------------------------------------------------------------------------------------------------ Vision&Touch

def vt_episode(path: Path, rng: np.random.Generator, compression: str | None = "gzip") -> None:
    import h5py

    t = mb.VT_EPISODE_LEN
    yy, xx = np.mgrid[0:128, 0:128]
    base = ((xx + yy) % 256).astype(np.uint8)
    images = np.stack([np.stack([np.roll(base, s, axis=c % 2) for c in range(3)], axis=-1) for s in range(t)])
    contact = (rng.random((t, 50)) < 0.02).astype(np.float32)
    contact[rng.random(t) < 0.5] = 0.0
    force = rng.normal(0, 2, size=(t, 50, 6)).astype(np.float32)
    force[:, :, 2] += 3 * contact.any(axis=1)[:, None]   # contact shows in the force
    proprio = np.cumsum(rng.normal(0, 0.01, size=(t, 8)), axis=0).astype(np.float64)
    with h5py.File(path, "w") as f:
        kw = {"compression": compression} if compression else {}
        f.create_dataset("image", data=images, **kw)
        f.create_dataset("depth_data", data=np.zeros((t, 128, 128, 1), np.float32), **kw)
        f.create_dataset("optical_flow", data=np.zeros((t, 128, 128, 2), np.float32), **kw)
        f.create_dataset("proprio", data=proprio)
        f.create_dataset("ee_forces_continuous", data=force)
        f.create_dataset("contact", data=contact)
        f.create_dataset("action", data=rng.normal(size=(t, 4)).astype(np.float32))
        for key, d in (("ee_pos", 3), ("ee_ori", 4), ("ee_vel", 3), ("ee_yaw", 4), ("joint_pos", 7)):
            f.create_dataset(key, data=rng.normal(size=(t, d)).astype(np.float32))


def vt_raw_dir(d: Path, seed: int, episodes: int = 4, prefix: str = "ep") -> Path:
    """A Vision&Touch raw folder of `episodes` uncompressed episode files drawn from `seed`."""
    rng = np.random.default_rng(seed)
    for i in range(episodes):
        vt_episode(d / f"{prefix}{i}.h5", rng, compression=None)
    return d


def vt_zip(tmp: Path, n_files: int = VT_FILES, seed: int = 0, extra_members: dict | None = None) -> bytes:
    rng = np.random.default_rng(seed)
    tmp.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for i in range(n_files):
            p = tmp / f"triangle_{i:03d}_1000.h5"
            vt_episode(p, rng)
            z.write(p, f"triangle_real_data/{p.name}")
        for name, data in (extra_members or {}).items():
            z.writestr(name, data)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ HTTP mirror

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        files = self.server.files
        path = self.path.split("?", 1)[0].lstrip("/")
        self.server.hits.append(path)
        body = files.get(path)
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[6:-1])
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        self.wfile.write(body[start:])


class MirrorServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 8


@contextlib.contextmanager
def serve(files: dict[str, bytes]):
    """Serve ``{path: bytes}`` on 127.0.0.1 (threaded, daemon threads, socket timeout); yields the base URL and
    the server (``server.files`` may be edited, ``server.hits`` lists the paths requested)."""
    httpd = MirrorServer(("127.0.0.1", 0), _Handler)
    httpd.timeout = 10
    httpd.files = dict(files)
    httpd.hits = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/mirror", httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def mirror_files(tmp: Path, which=("mosi", "humor", "sarcasm", "visionandtouch")) -> dict[str, bytes]:
    """The files of a mirror for ``which`` datasets, at the paths ``--base-url`` maps the registry URLs to."""
    out = {}
    for name in which:
        if name in AFFECT_FILES:
            out[f"mirror/{AFFECT_FILES[name]}"] = affect_pickle(name, seed=len(name))
        elif name == "visionandtouch":
            out[f"mirror/{VT_ZIP_PATH}"] = vt_zip(tmp / "vt_build")
    return out


class Exploit:
    """A pickle whose reduce would run a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)
