"""Trifeatures images as PNG files under the reference's names, to look at a generated set (tests only)."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from infmask.data import trifeatures as T


def png_bytes(img: np.ndarray) -> bytes:
    """A minimal RGB PNG (one IDAT chunk, filter type 0 per row)."""
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def export_png(out_dir: Path, dest: Path, limit: int | None = None) -> int:
    """Write ``dest/<split>/<filename>`` PNGs (the reference's names) for the first ``limit`` images per split."""
    out_dir, dest = Path(out_dir), Path(dest)
    problems = T.verify(out_dir, deep=False)
    if problems:
        raise ValueError(f"out_dir: not a complete Trifeatures directory: {problems[0]}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit: must be >= 0, got {limit}")
    rows = T.read_labels(out_dir / "labels.csv")
    n = 0
    for split in ("train", "test"):
        images = np.load(out_dir / f"images_{split}.npy", mmap_mode="r")
        (dest / split).mkdir(parents=True, exist_ok=True)
        sel = sorted((r for r in rows if r["split"] == split), key=lambda r: r["index"])[:limit]
        for r in sel:
            (dest / split / r["filename"]).write_bytes(png_bytes(np.ascontiguousarray(images[r["index"]])))
            n += 1
    return n
