"""Shared by tests/test_mmimdb_*.py: a tiny MM-IMDb archive served over HTTP on 127.0.0.1, and tiny random CLIP
towers in the layout of a downloaded `openai/clip-vit-base-patch32`. Nothing here touches the network."""
from __future__ import annotations

import functools
import http.server
import io
import tarfile
import threading
from contextlib import contextmanager
from pathlib import Path

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
