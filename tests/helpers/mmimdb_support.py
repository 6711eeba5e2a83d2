"""Shared by the MM-IMDb tests: a tiny archive with the public layout (``make_fixture``), served over HTTP on
127.0.0.1, and tiny random CLIP towers in the layout of a downloaded `openai/clip-vit-base-patch32`. Nothing here
touches the network."""
from __future__ import annotations

import functools
import http.server
import io
import json
import tarfile
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from infmask.data.mmimdb import GENRES

HUB_NAME = "openai/clip-vit-base-patch32"
TEST_IMAGE_SIZE = 64   # tiny towers take 64 px posters (2 x 2 patches of 32): same code, far less compute
TEST_MAX_LENGTH = 32   # and plots of at most 32 tokens (the byte-level test tokenizer spends one per character)


def write_archive(src_root: Path, archive: Path, extra: dict[str, bytes] | None = None) -> Path:
    """tar.gz of src_root/mmimdb as `mmimdb/...` (the public archive's layout), plus raw `extra` members."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src_root / "mmimdb", arcname="mmimdb")
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return archive


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextmanager
def serve(directory: Path):
    """Serve `directory` on 127.0.0.1 (a free port); yields the base URL."""
    handler = functools.partial(_Quiet, directory=str(directory))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def mirror_tree(base: Path, archive_bytes_from: Path) -> Path:
    """A mirror directory serving the archive at the registry URL's path (/download/mmimdb/mmimdb.tar.gz)."""
    target = base / "download" / "mmimdb" / "mmimdb.tar.gz"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(archive_bytes_from.read_bytes())
    return base


def tiny_clip(weights_dir: Path, **kw) -> Path:
    """Random CLIP towers with ViT-B/32's token widths (768 image, 512 text) at TEST_IMAGE_SIZE, one layer."""
    from infmask.models.clip_towers import save_random_clip

    kw.setdefault("image_size", TEST_IMAGE_SIZE)
    kw.setdefault("max_length", TEST_MAX_LENGTH)
    return save_random_clip(Path(weights_dir) / HUB_NAME, **kw)


@contextmanager
def single_thread_blas():
    """sklearn's lbfgs on tiny problems is many times slower with multi-threaded OpenBLAS on a busy 2-core machine;
    limit the already-loaded BLAS libraries to one thread (import them first so the limit reaches them)."""
    import scipy.optimize  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.multioutput  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        yield


_WORDS = ("a detective hunts a killer in the city while love and war tear a family apart as aliens land on a "
          "farm where music and dance bring hope to a small town haunted by its history").split()


def make_fixture(root: Path, *, n_train: int = 30, n_dev: int = 10, n_test: int = 10, seed: int = 0,
                 defects: bool = True) -> dict:
    """Write ``root/mmimdb/{split.json, dataset/<id>.json, dataset/<id>.jpeg}`` like the public archive, with
    random posters (mostly 2:3 portrait, one landscape) and plots. Genre names come capitalised as in IMDb, with
    unknown genres mixed in; every genre column has both classes in every split. With ``defects``: one train
    poster is not an image ("corrupt"), one train plot file lacks "plot" ("missing_field"), one poster is a
    truncated JPEG (tolerated) and one dev movie has a bare-string plot (accepted). Returns the ids by role."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = Path(root) / "mmimdb"
    ds = base / "dataset"
    ds.mkdir(parents=True, exist_ok=True)
    sizes = {"train": n_train, "dev": n_dev, "test": n_test}
    ids, k = {}, 0
    for s, n in sizes.items():
        ids[s] = [f"{1000000 + k + i:07d}" for i in range(n)]
        k += n
    roles = {}
    for s, members in ids.items():
        n = len(members)
        labels = rng.random((n, len(GENRES))) < 0.5
        for g in range(len(GENRES)):
            labels[g % n, g], labels[(g + 1) % n, g] = True, False
        for i, mid in enumerate(members):
            genres = [GENRES[g].title() for g in np.flatnonzero(labels[i])] + (["Reality-TV"] if i % 3 == 0 else [])
            plots = [" ".join(rng.choice(_WORDS, size=int(rng.integers(5, 40)))).capitalize() + "."
                     for _ in range(int(rng.integers(1, 4)))]
            (ds / f"{mid}.json").write_text(json.dumps({"title": f"Movie {mid}", "genres": genres, "plot": plots}))
            w, h = (268, 182) if (s, i) == ("test", 0) else (182, 268)
            colour = rng.integers(0, 256, size=3)
            arr = np.clip(colour + rng.normal(0, 40, size=(h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(ds / f"{mid}.jpeg", quality=85)
    if defects:
        roles["corrupt_poster"] = ids["train"][1]
        (ds / f"{ids['train'][1]}.jpeg").write_bytes(b"this is not a JPEG\x00" * 10)
        roles["missing_plot"] = ids["train"][2]
        (ds / f"{ids['train'][2]}.json").write_text(json.dumps({"title": "No plot", "genres": ["Drama"]}))
        roles["truncated_poster"] = ids["train"][3]
        p = ds / f"{ids['train'][3]}.jpeg"
        p.write_bytes(p.read_bytes()[: p.stat().st_size * 2 // 3])
        roles["string_plot"] = ids["dev"][0]
        meta = json.loads((ds / f"{ids['dev'][0]}.json").read_text())
        meta["plot"] = meta["plot"][0]
        (ds / f"{ids['dev'][0]}.json").write_text(json.dumps(meta))
    (base / "split.json").write_text(json.dumps(ids))
    return {"root": base, "ids": ids, "roles": roles}
