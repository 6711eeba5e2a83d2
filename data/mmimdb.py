"""MM-IMDb (Arevalo et al. 2017): index, poster/plot loading, frozen-feature cache, data module.

Raw layout (the public ``mmimdb.tar.gz``, extracted)::

    mmimdb/split.json            {"train": [ids], "dev": [ids], "test": [ids]}   (15552 / 2608 / 7799)
    mmimdb/dataset/<id>.json     per movie; keys used: "plot" (list of strings), "genres" (list of strings)
    mmimdb/dataset/<id>.jpeg     poster

Index (``build_index``, in ``processed/mmimdb/index_v<N>/``)::

    index.json     {"genres": [23 names, alphabetical], "ids", "split" (train / val / test; dev -> val),
                    "image" (poster path relative to raw/mmimdb), "plots" (list of strings per movie)}
    labels.npy     (N, 23) uint8 multi-hot, columns = GENRES (lower-cased; genres outside the list dropped)
    manifest.json  sha256 + size of each file, the parameters, and what was skipped and why

A movie whose metadata lacks a usable ``plot`` or ``genres``, or whose poster is missing or cannot be decoded, is
counted, logged as a warning and left out; it never stops preprocessing. Truncated JPEGs are accepted (PIL's
``LOAD_TRUNCATED_IMAGES``), as in the reference.

Loading: posters are decoded with PIL in the loader workers and brought to a fixed uint8 canvas S wide and
round(10 S / 7) high (S = data.image_size): the reference's ``Resize(S)`` (shorter side to S), placed so that the
canvas' centre S x S window is exactly the reference's ``CenterCrop(S)``; a typical 2:3 portrait poster keeps all
but a few rows at the top and bottom, a squarer or landscape one is zero-padded above and below. On the device,
SSL views are RandomResizedCrop(S, scale=(0.08, 1)) of the canvas + colour jitter + grayscale + blur + flip (the
reference crops the whole poster; here the canvas, which differs only for posters cut or padded by it); the probe
input is the centre window, i.e. the reference's ``Resize(S) + CenterCrop(S)``. Normalisation is ImageNet's by
default, as the reference [ODDITY: CLIP was trained with its own statistics]; ``data.image_norm=clip`` uses CLIP's.

Plots: the reference draws one plot string at random from the list on every read (SSL and probe alike). SSL reads
here draw afresh each time (both views share the string); probe reads use one draw per movie, fixed by
``data_seed`` (the same distribution as one reference read, but reproducible features). Text tokens of the training
views are masked with probability ``data.text_mask_prob`` (``models.clip_towers.TokenMasker``); the SSL validation
views are not (the reference masks only with the encoder in train mode).

Feature cache (``data.feature_cache=True``, ``build_feature_cache``): the frozen towers' outputs are precomputed
once per item: copy 0 un-augmented (the probe input, and ``x`` of SSL batches) and ``data.cache_copies`` augmented
copies, grouped in pairs that share one plot draw (two views of one reference read). Training then reads two
copies of a random pair instead of running the towers. Text is tokenised to the full maximum length so that the
tower's outputs at padding positions are exact too (they matter with ``model.mask_padding=False``). Stored float16.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .base import BenchmarkDataModule

log = logging.getLogger("infmask.data")

GENRES = tuple(sorted(("drama", "comedy", "romance", "thriller", "crime", "action", "adventure", "horror",
                       "documentary", "mystery", "sci-fi", "music", "fantasy", "family", "biography", "war",
                       "history", "animation", "musical", "western", "sport", "short", "film-noir")))
SPLIT_NAMES = {"train": "train", "dev": "val", "test": "test"}   # split.json key -> our split
SPLITS = ("train", "val", "test")
INDEX_VERSION = 1
CACHE_VERSION = 1
CANVAS_ASPECT = 10 / 7          # canvas height / width
MAX_POSTER_PIXELS = 200_000_000  # "large images are allowed", within reason
_WARN_EACH = 20                  # individual warnings before only the summary is logged


def canvas_shape(image_size: int) -> tuple[int, int]:
    """(height, width) of the stored poster canvas for crop size S."""
    return int(round(image_size * CANVAS_ASPECT)), int(image_size)


# ----------------------------------------------------------------------------------------------------------------
# files, manifests


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _partial(out_dir: Path) -> Path:
    p = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    if p.exists():
        shutil.rmtree(p)
    p.mkdir(parents=True)
    return p


def _finalise(partial: Path, out_dir: Path, manifest: dict) -> dict:
    """Hash and fsync every file, write the manifest last, then rename the directory into place."""
    files = {}
    for p in sorted(partial.iterdir()):
        if p.is_file():
            _fsync(p)
            files[p.name] = {"sha256": sha256_file(p), "size": p.stat().st_size}
    manifest = {**manifest, "files": files, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tmp = partial / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    _fsync(tmp)
    os.replace(tmp, partial / "manifest.json")
    _fsync(partial)
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        os.replace(out_dir, old)
        os.replace(partial, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(partial, out_dir)
    _fsync(out_dir.parent)
    return manifest


def read_manifest(out_dir: Path) -> dict:
    return json.loads((Path(out_dir) / "manifest.json").read_text())


def verify(out_dir: Path, expect: dict | None = None, deep: bool = True) -> list[str]:
    """Problems with an index or cache directory (empty = complete and intact). ``expect``: manifest params that
    must match; ``deep=False`` checks sizes only."""
    out_dir = Path(out_dir)
    mpath = out_dir / "manifest.json"
    if not mpath.is_file():
        return [f"{out_dir}: no manifest (missing or incomplete)"]
    try:
        manifest = read_manifest(out_dir)
        files, params = manifest["files"], manifest["params"]
    except (ValueError, KeyError, TypeError) as e:
        return [f"{mpath}: unreadable manifest ({e})"]
    problems = []
    for name, meta in sorted(files.items()):
        p = out_dir / name
        if not p.is_file():
            problems.append(f"{p}: missing")
        elif p.stat().st_size != meta.get("size"):
            problems.append(f"{p}: size {p.stat().st_size} != {meta.get('size')} (truncated or corrupt)")
        elif deep and sha256_file(p) != meta.get("sha256"):
            problems.append(f"{p}: sha256 mismatch (corrupt)")
    for k, v in (expect or {}).items():
        if params.get(k) != v:
            problems.append(f"{mpath}: parameter {k}={params.get(k)!r}, expected {v!r}")
    return problems


# ----------------------------------------------------------------------------------------------------------------
# raw data: schema, posters


def find_source(raw_dir: Path) -> Path | None:
    """The extracted ``mmimdb/`` folder (the one holding split.json) under raw/mmimdb, or None."""
    raw_dir = Path(raw_dir)
    for cand in (raw_dir / "extracted" / "mmimdb", raw_dir / "extracted", raw_dir / "mmimdb", raw_dir):
        if (cand / "split.json").is_file() and (cand / "dataset").is_dir():
            return cand
    extracted = raw_dir / "extracted"
    if extracted.is_dir():
        for p in sorted(extracted.glob("*/split.json")):
            if (p.parent / "dataset").is_dir():
                return p.parent
    return None


def read_split(path: Path) -> dict[str, list[str]]:
    """split.json -> {"train": ids, "val": ids, "test": ids} (dev -> val); ValueError naming the file otherwise."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"split file {path}: unreadable ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"split file {path}: expected an object with keys train, dev, test; got "
                         f"{type(raw).__name__}")
    missing = [k for k in SPLIT_NAMES if k not in raw]
    if missing:
        raise ValueError(f"split file {path}: missing key(s) {', '.join(missing)} (expected train, dev, test)")
    out = {}
    for key, split in SPLIT_NAMES.items():
        ids = raw[key]
        if not isinstance(ids, list) or not all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in ids):
            raise ValueError(f"split file {path}: '{key}' must be a list of movie ids")
        out[split] = [str(i) for i in ids]
    return out


def parse_metadata(meta) -> tuple[list[str] | None, list[str] | None, str | None]:
    """(plots, genres, problem) from one movie's JSON: plots = non-empty strings of "plot" (a bare string is taken
    as a one-element list), genres = the known genres, lower-cased. problem names what is unusable, else None."""
    if not isinstance(meta, dict):
        return None, None, "metadata is not a JSON object"
    if "plot" not in meta:
        return None, None, "missing field 'plot'"
    if "genres" not in meta:
        return None, None, "missing field 'genres'"
    plot, genres = meta["plot"], meta["genres"]
    if isinstance(plot, str):
        plot = [plot]
    if not isinstance(plot, list):
        return None, None, f"'plot' is a {type(plot).__name__}, not a list of strings"
    plots = [p.strip() for p in plot if isinstance(p, str) and p.strip()]
    if not plots:
        return None, None, "'plot' holds no text"
    if isinstance(genres, str):
        genres = [genres]
    if not isinstance(genres, list) or not all(isinstance(g, str) for g in genres):
        return None, None, "'genres' is not a list of strings"
    known = sorted({g.strip().lower() for g in genres} & set(GENRES))
    return plots, known, None


def multi_hot(genres: list[str]) -> np.ndarray:
    row = np.zeros(len(GENRES), dtype=np.uint8)
    for g in genres:
        row[GENRES.index(g)] = 1
    return row


def open_poster(path: Path):
    """The poster as a PIL RGB image, fully decoded; truncated JPEGs are tolerated like the reference's loader."""
    from PIL import Image, ImageFile

    old_trunc, old_max = ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS
    ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = True, MAX_POSTER_PIXELS
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = old_trunc, old_max


def poster_canvas(img, image_size: int) -> np.ndarray:
    """The reference's ``Resize(S)`` (shorter side to S, longer side ``int(S * long / short)``, bilinear as
    torchvision on PIL images), placed on the (round(10 S / 7), S) canvas so that the canvas' centre S x S window is
    exactly the reference's ``CenterCrop(S)``; the rest of the poster extends around it (cropped beyond the
    canvas, zero where the poster is shorter). Returns uint8 (H, W, 3)."""
    from PIL import Image

    S = int(image_size)
    H, W = canvas_shape(S)
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ValueError("image has no pixels")
    if w <= h:
        nw, nh = S, int(S * h / w)
    else:
        nw, nh = int(S * w / h), S
    arr = np.asarray(img.resize((nw, nh), Image.Resampling.BILINEAR), dtype=np.uint8)
    # resized pixel (y, x) = canvas pixel (y - oy, x - ox): the CenterCrop window lands on the canvas' centre one
    oy = int(round((nh - S) / 2.0)) - (H - S) // 2
    ox = int(round((nw - S) / 2.0)) - (W - S) // 2
    out = np.zeros((H, W, 3), dtype=np.uint8)
    r0, r1, c0, c1 = max(0, -oy), min(H, nh - oy), max(0, -ox), min(W, nw - ox)
    out[r0:r1, c0:c1] = arr[r0 + oy:r1 + oy, c0 + ox:c1 + ox]
    return out


def _check_item(args) -> tuple:
    """(position, plots, genres, problem) for one movie; run in worker processes."""
    pos, root, mid = args
    meta_path, poster = root / "dataset" / f"{mid}.json", root / "dataset" / f"{mid}.jpeg"
    if not meta_path.is_file():
        return pos, None, None, "no metadata file"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        return pos, None, None, f"unreadable metadata ({type(e).__name__})"
    plots, genres, problem = parse_metadata(meta)
    if problem:
        return pos, None, None, problem
    if not poster.is_file():
        return pos, None, None, "no poster file"
    try:
        img = open_poster(poster)
        if min(img.size) < 1:
            raise ValueError("empty image")
    except Exception as e:  # any decoder failure means a corrupt poster, never a crash
        return pos, None, None, f"corrupt poster ({type(e).__name__}: {str(e)[:80]})"
    return pos, plots, genres, None


_REASONS = (("no metadata file", "missing_metadata"), ("unreadable metadata", "bad_metadata"),
            ("missing field", "missing_field"), ("'plot'", "bad_plot"), ("'genres'", "bad_genres"),
            ("metadata is not", "bad_metadata"), ("no poster file", "missing_poster"),
            ("corrupt poster", "corrupt_poster"))


def _reason_key(problem: str) -> str:
    for prefix, key in _REASONS:
        if problem.startswith(prefix):
            return key
    return "other"


def build_index(source: Path, out_dir: Path, raw_dir: Path, *, params: dict | None = None,
                workers: int | None = None) -> dict:
    """Validate every movie of split.json and write the index (see module docstring) atomically into out_dir.
    Paths in the index are relative to ``raw_dir``. Returns the manifest plus "seconds"."""
    from concurrent.futures import ProcessPoolExecutor

    t0 = time.time()
    source, out_dir, raw_dir = Path(source), Path(out_dir), Path(raw_dir)
    split = read_split(source / "split.json")
    order, seen, duplicates = [], set(), 0
    for s in SPLITS:
        for mid in split[s]:
            if mid in seen:
                duplicates += 1
                continue
            seen.add(mid)
            order.append((s, mid))
    jobs = [(i, source, mid) for i, (_, mid) in enumerate(order)]
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    if workers > 1 and len(jobs) > 2000:
        with ProcessPoolExecutor(workers) as ex:
            results = list(ex.map(_check_item, jobs, chunksize=256))
    else:
        results = [_check_item(j) for j in jobs]
    ids, splits, images, plots, labels = [], [], [], [], []
    skipped: dict[str, int] = {}
    examples: dict[str, list] = {}
    for pos, item_plots, genres, problem in results:
        s, mid = order[pos]
        if problem:
            key = _reason_key(problem)
            skipped[key] = skipped.get(key, 0) + 1
            examples.setdefault(key, [])
            if len(examples[key]) < 5:
                examples[key].append(mid)
            if sum(skipped.values()) <= _WARN_EACH:
                log.warning("mmimdb: skipping movie %s (%s split): %s", mid, s, problem)
            continue
        ids.append(mid)
        splits.append(s)
        images.append(os.path.relpath(source / "dataset" / f"{mid}.jpeg", raw_dir))
        plots.append(item_plots)
        labels.append(multi_hot(genres))
    if duplicates:
        skipped["duplicate_id"] = duplicates
        log.warning("mmimdb: %d movie id(s) listed in more than one split; kept the first listing", duplicates)
    if skipped:
        log.warning("mmimdb: skipped %d of %d movies (%s); see %s/manifest.json", sum(skipped.values()),
                    len(order) + duplicates, ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())), out_dir)
    if not ids:
        raise ValueError(f"source: no usable movie in {source} (skipped: {skipped})")
    counts = {s: splits.count(s) for s in SPLITS}
    empty = [s for s in SPLITS if counts[s] == 0]
    if empty:
        raise ValueError(f"source: no usable movie in split(s) {', '.join(empty)} of {source}")
    partial = _partial(out_dir)
    try:
        index = {"version": INDEX_VERSION, "genres": list(GENRES), "ids": ids, "split": splits, "image": images,
                 "plots": plots}
        (partial / "index.json").write_text(json.dumps(index, ensure_ascii=False))
        np.save(partial / "labels.npy", np.stack(labels).astype(np.uint8))
        manifest = _finalise(partial, out_dir, {
            "params": {**(params or {}), "version": INDEX_VERSION},
            "counts": counts, "skipped": skipped, "skipped_examples": examples,
            "label_frequency": dict(zip(GENRES, np.stack(labels).sum(0).astype(int).tolist()))})
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return {**manifest, "seconds": time.time() - t0}


def load_index(out_dir: Path) -> dict:
    out_dir = Path(out_dir)
    index = json.loads((out_dir / "index.json").read_text())
    labels = np.load(out_dir / "labels.npy")
    n = len(index["ids"])
    for k in ("split", "image", "plots"):
        if len(index[k]) != n:
            raise ValueError(f"index: {out_dir}/index.json has {len(index[k])} '{k}' entries for {n} ids")
    if labels.shape != (n, len(GENRES)) or tuple(index["genres"]) != GENRES:
        raise ValueError(f"index: {out_dir} labels {labels.shape} do not match {n} movies x {len(GENRES)} genres")
    index["labels"] = labels
    return index


def select_items(index: dict, split: str, max_items=None, data_seed: int = 42) -> np.ndarray:
    """Row numbers of a split, capped to max_items by a seeded random subset (kept in index order)."""
    rows = np.flatnonzero(np.asarray(index["split"]) == split)
    if max_items is not None and len(rows) > int(max_items):
        rng = np.random.default_rng([int(data_seed), SPLITS.index(split)])
        rows = np.sort(rng.choice(rows, size=int(max_items), replace=False))
    return rows


def fixed_plot_choice(index: dict, rows: np.ndarray, data_seed: int) -> np.ndarray:
    """One plot per movie for probe reads, drawn once with a seed (see module docstring)."""
    n = np.array([len(index["plots"][r]) for r in rows], dtype=np.int64)
    rng = np.random.default_rng([int(data_seed), 7])
    return (rng.random(len(rows)) * n).astype(np.int64)


# ----------------------------------------------------------------------------------------------------------------
# tokenising


def tokenize(tokenizer, texts: list[str], max_length: int, pad_to_max: bool = False) -> torch.Tensor:
    """(B, L) int64 token ids with -1 at padding positions (CLIP's pad id is also its end-of-text id)."""
    enc = tokenizer(list(texts), padding="max_length" if pad_to_max else "longest", truncation=True,
                    max_length=int(max_length), return_tensors="pt")
    ids = enc["input_ids"].long()
    return ids.masked_fill(enc["attention_mask"] == 0, -1)


# ----------------------------------------------------------------------------------------------------------------
# datasets (what the loaders yield; see data/base.py for the batch contract)


class PosterPlotDataset(Dataset):
    """Posters and plots of the given index rows, fetched a batch at a time.

    SSL (``labels=None``): ``{"raw": [uint8 (B, H, W, 3), ids (B, L)]}``, one fresh plot draw per read.
    Probe: ``{"raw": [...], "y": {"genres": int64 (B, 23)}}``, the fixed plot of each movie.
    """

    def __init__(self, index: dict, rows: np.ndarray, raw_dir: Path, tokenizer, max_length: int, image_size: int,
                 labels: bool, fixed_plots: np.ndarray | None = None):
        self.rows = np.asarray(rows, dtype=np.int64)
        self.images = [index["image"][r] for r in self.rows]
        self.plots = [index["plots"][r] for r in self.rows]
        self.labels = index["labels"][self.rows].astype(np.int64) if labels else None
        self.fixed = fixed_plots
        self.raw_dir = Path(raw_dir)
        self.tokenizer, self.max_length, self.image_size = tokenizer, int(max_length), int(image_size)

    def __len__(self) -> int:
        return len(self.rows)

    def _poster(self, i: int) -> np.ndarray:
        path = self.raw_dir / self.images[i]
        try:
            return poster_canvas(open_poster(path), self.image_size)
        except Exception as e:
            raise RuntimeError(f"poster {path} cannot be read any more ({type(e).__name__}: {e}); the raw data "
                               f"changed after preprocessing: rerun `infmask preprocess mmimdb --force`") from e

    def __getitems__(self, indices) -> dict:
        idx = [int(i) for i in indices]
        images = torch.from_numpy(np.stack([self._poster(i) for i in idx]))
        if self.fixed is not None:
            texts = [self.plots[i][int(self.fixed[i])] for i in idx]
        else:
            texts = [self.plots[i][int(torch.randint(len(self.plots[i]), ()))] for i in idx]
        batch = {"raw": [images, tokenize(self.tokenizer, texts, self.max_length)]}
        if self.labels is not None:
            batch["y"] = {"genres": torch.from_numpy(self.labels[idx])}
        return batch

    def __getitem__(self, i: int) -> dict:
        b = self.__getitems__([i])
        return {"raw": [t[0] for t in b["raw"]], **({"y": {k: v[0] for k, v in b["y"].items()}} if "y" in b else {})}


class CachedFeatureDataset(Dataset):
    """Rows of a feature cache (see ``build_feature_cache``).

    SSL: ``{"cached": [img (B, 3, Li, Di) f16, txt (B, 3, L, Dt + 1) f16]}``: copy 0 and the two copies of a random
    pair; probe: the same with copy 0 only and ``"y"``. The last text channel is the padding flag; L is the longest
    text among the batch's copies.
    """

    def __init__(self, cache_dir: Path, split: str, labels: np.ndarray | None, ssl: bool):
        cache_dir = Path(cache_dir)
        self.img = np.load(cache_dir / f"image_{split}.npy", mmap_mode="r")
        self.txt = np.load(cache_dir / f"text_{split}.npy", mmap_mode="r")
        self.tlen = np.load(cache_dir / f"text_len_{split}.npy")
        self.labels = None if labels is None else labels.astype(np.int64)
        self.ssl = bool(ssl)
        self.pairs = (self.img.shape[1] - 1) // 2
        if self.ssl and self.pairs < 1:
            raise ValueError(f"cache_dir: {cache_dir} holds no augmented copies for split {split}")

    def __len__(self) -> int:
        return self.img.shape[0]

    def __getitems__(self, indices) -> dict:
        rows = np.asarray([int(i) for i in indices], dtype=np.int64)
        if self.ssl:
            p = torch.randint(self.pairs, (len(rows),)).numpy()
            copies = np.stack([np.zeros_like(p), 1 + 2 * p, 2 + 2 * p], axis=1)
        else:
            copies = np.zeros((len(rows), 1), dtype=np.int64)
        img = self.img[rows[:, None], copies]                                  # (B, C, Li, Di)
        lens = self.tlen[rows[:, None], copies]                                # (B, C)
        L = int(lens.max())
        txt = self.txt[rows[:, None], copies, :L]                              # (B, C, L, Dt)
        flag = (np.arange(L)[None, None, :] >= lens[..., None]).astype(txt.dtype)[..., None]
        batch = {"cached": [torch.from_numpy(np.ascontiguousarray(img)),
                            torch.from_numpy(np.concatenate([txt, flag], axis=-1))]}
        if self.labels is not None:
            batch["y"] = {"genres": torch.from_numpy(self.labels[rows])}
        return batch

    def __getitem__(self, i: int) -> dict:
        b = self.__getitems__([i])
        return {k: v for k, v in b.items()}


# ----------------------------------------------------------------------------------------------------------------
# device transforms


class PosterTransforms:
    """Device-side image transforms on uint8 canvases: SSL view, probe input (centre crop); both normalised."""

    def __init__(self, image_size: int, norm: str = "imagenet", crop_scale: tuple = (0.08, 1.0)):
        from infmask.models.clip_towers import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD

        from .augment import ImageSSLAugment

        if norm not in ("imagenet", "clip"):
            raise ValueError(f"norm (data.image_norm): must be 'imagenet' (the reference) or 'clip', got {norm!r}")
        self.size = int(image_size)
        self.mean, self.std = (IMAGENET_MEAN, IMAGENET_STD) if norm == "imagenet" else (CLIP_MEAN, CLIP_STD)
        self.ssl_ops = ImageSSLAugment(self.size, scale=tuple(crop_scale)).ops

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        m = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        s = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - m) / s

    @torch.no_grad()
    def ssl(self, x: torch.Tensor) -> torch.Tensor:
        from .augment import to_float_nchw

        return self._normalize(self.ssl_ops(to_float_nchw(x)))

    @torch.no_grad()
    def probe(self, x: torch.Tensor) -> torch.Tensor:
        from .augment import to_float_nchw

        x = to_float_nchw(x)
        H, W = x.shape[-2:]
        S = self.size
        if H < S or W < S:
            raise ValueError(f"x: poster canvas {H}x{W} is smaller than the crop {S}")
        top, left = (H - S) // 2, (W - S) // 2      # where poster_canvas put the reference's CenterCrop
        return self._normalize(x[..., top:top + S, left:left + S].contiguous())


# ----------------------------------------------------------------------------------------------------------------
# data module


class MMIMDbDataModule(BenchmarkDataModule):
    """Posters + plots -> [image, text] modalities; one multilabel task "genres" (23 genres).

    Online mode: raw uint8 canvases and token ids; the model's frozen towers run on the device.
    Cached mode (``cache_dir``): the frozen towers' outputs from ``build_feature_cache``.
    """

    tasks = {"genres": "multilabel"}
    modalities = ("image", "text")

    def __init__(self, index_dir: Path, raw_dir: Path, *, tokenizer=None, max_length: int = 77,
                 text_mask_prob: float = 0.15, image_size: int = 224, image_norm: str = "imagenet",
                 max_items=None, data_seed: int = 42, cache_dir: Path | None = None, batch_size: int = 64,
                 num_workers: int = 0, crop_scale: tuple = (0.08, 1.0), drop_last: bool = False,
                 pin_memory: bool = False):
        super().__init__(batch_size=batch_size, num_workers=num_workers, drop_last=drop_last,
                         pin_memory=pin_memory)
        from infmask.models.clip_towers import TokenMasker

        self.index_dir, self.raw_dir = Path(index_dir), Path(raw_dir)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        if self.cache_dir is None and tokenizer is None:
            raise ValueError("tokenizer: required in online mode (no cache_dir)")
        self.tokenizer, self.max_length = tokenizer, int(max_length)
        self.masker = TokenMasker(tokenizer, text_mask_prob) if tokenizer is not None else None
        self.transforms = PosterTransforms(image_size, image_norm, crop_scale)
        self.image_size = int(image_size)
        self.max_items, self.data_seed = max_items, int(data_seed)
        self._index = None
        self._rows: dict[str, np.ndarray] = {}

    # --- data -----------------------------------------------------------------------------------------
    def index(self) -> dict:
        if self._index is None:
            self._index = load_index(self.index_dir)
            self._rows = {s: select_items(self._index, s, self.max_items, self.data_seed) for s in SPLITS}
        return self._index

    def rows(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise ValueError(f"split: must be one of {', '.join(SPLITS)}; got {split!r}")
        self.index()
        return self._rows[split]

    def setup(self, stage: str | None = None) -> None:
        self.index()

    def _dataset(self, split: str, probe: bool) -> Dataset:
        index, rows = self.index(), self.rows(split)
        if self.cache_dir is not None:
            return CachedFeatureDataset(self.cache_dir, split, index["labels"][rows] if probe else None,
                                        ssl=not probe)
        fixed = fixed_plot_choice(index, rows, self.data_seed) if probe else None
        return PosterPlotDataset(index, rows, self.raw_dir, self.tokenizer, self.max_length, self.image_size,
                                 labels=probe, fixed_plots=fixed)

    def ssl_dataset(self, split: str) -> Dataset:
        return self._dataset(split, probe=False)

    def probe_dataset(self, split: str) -> Dataset:
        return self._dataset(split, probe=True)

    # --- device transforms -----------------------------------------------------------------------------
    def _training(self) -> bool:
        trainer = getattr(self, "trainer", None)
        return trainer is None or bool(trainer.training)

    def augment(self, modality: int, x: torch.Tensor) -> torch.Tensor:
        if modality == 0:
            return self.transforms.ssl(x)
        return self.masker(x) if self._training() and self.masker.prob > 0 else x

    def prepare_input(self, modality: int, x: torch.Tensor) -> torch.Tensor:
        return self.transforms.probe(x) if modality == 0 else x

    def transform_batch(self, batch: dict) -> dict:
        if isinstance(batch, dict) and "cached" in batch:
            parts = [t.float() for t in batch["cached"]]
            x = [p[:, 0] for p in parts]
            if "y" in batch:
                return {"x": x, "y": batch["y"]}
            out = {"views": [[p[:, 1] for p in parts], [p[:, 2] for p in parts]], "x": x}
            return {k: v for k, v in out.items() if k in self.ssl_inputs}
        return super().transform_batch(batch)

    def probe_batches(self, split: str, device="cpu") -> Iterator[dict]:
        for batch in self.probe_dataloader(split):
            key = "cached" if "cached" in batch else "raw"
            moved = {key: [t.to(device, non_blocking=True) for t in batch[key]],
                     "y": {k: v.to(device, non_blocking=True) for k, v in batch["y"].items()}}
            yield self.transform_batch(moved)


# ----------------------------------------------------------------------------------------------------------------
# feature cache


def _first(batch):
    return batch


class _CacheSource(Dataset):
    """Posters plus the token ids of every copy of a movie: copy 0's fixed plot, then one plot per pair, each
    padded to the full maximum length (so the tower's outputs at padding positions are exact)."""

    def __init__(self, base: PosterPlotDataset, fixed: np.ndarray, pair_plots: np.ndarray):
        self.base, self.fixed, self.pair_plots = base, fixed, pair_plots

    def __len__(self) -> int:
        return len(self.base)

    def __getitems__(self, indices) -> dict:
        idx = [int(i) for i in indices]
        b = self.base
        images = torch.from_numpy(np.stack([b._poster(i) for i in idx]))
        choices = [[int(self.fixed[i])] + [int(c) for c in self.pair_plots[i]] for i in idx]
        texts = [b.plots[i][c] for i, ch in zip(idx, choices) for c in ch]
        ids = tokenize(b.tokenizer, texts, b.max_length, pad_to_max=True).view(len(idx), len(choices[0]), -1)
        return {"img": images, "ids": ids, "pos": torch.tensor(idx)}


def build_feature_cache(dm, out_dir: Path, image_tower, text_tower, *, copies: int, params: dict,
                        device="cpu", autocast_dtype: torch.dtype | None = None, seed: int = 42,
                        batch_size: int | None = None, num_workers: int = 0) -> dict:
    """Precompute the frozen towers' outputs for every selected movie of an online ``MMIMDbDataModule`` ``dm``
    into ``out_dir`` (atomic; see the module docstring for what is stored). ``image_tower`` / ``text_tower``
    are ``ClipImageEncoder`` / ``ClipTextEncoder``; only their frozen parts are used.

    Files per split: ``image_<split>.npy`` (N, C, Li, Di) f16, ``text_<split>.npy`` (N, C, Lmax, Dt) f16,
    ``text_len_<split>.npy`` (N, C) int32 (real tokens, left-aligned); C = 1 + copies for train and val (copy 0 =
    un-augmented, then pairs of augmented views sharing one plot draw) and 1 for test (never used by SSL)."""
    from numpy.lib.format import open_memmap

    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 2 or copies % 2:
        raise ValueError(f"copies (data.cache_copies): must be an even number >= 2 (pairs of views), got {copies!r}")
    if dm.cache_dir is not None or dm.tokenizer is None:
        raise ValueError("dm: needs an online MMIMDbDataModule (with a tokenizer, without cache_dir)")
    t0 = time.time()
    device = torch.device(device)
    out_dir = Path(out_dir)
    index = dm.index()
    partial = _partial(out_dir)
    rng = np.random.default_rng([int(seed), 11])
    bs = int(batch_size or dm.batch_size)
    counts = {}
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(int(seed))
            for split in SPLITS:
                rows = dm.rows(split)
                n, pairs = len(rows), (copies // 2 if split != "test" else 0)
                counts[split] = n
                nplots = np.array([len(index["plots"][r]) for r in rows], dtype=np.int64)
                pair_plots = (rng.random((n, pairs)) * nplots[:, None]).astype(np.int64)
                base = PosterPlotDataset(index, rows, dm.raw_dir, dm.tokenizer, dm.max_length, dm.image_size,
                                         labels=False)
                src = _CacheSource(base, fixed_plot_choice(index, rows, dm.data_seed), pair_plots)
                loader = DataLoader(src, batch_size=bs, shuffle=False, num_workers=num_workers,
                                    collate_fn=_first)
                C = 1 + 2 * pairs
                img_mm = txt_mm = None
                lens = np.zeros((n, C), dtype=np.int32)
                for batch in loader:
                    pos = batch["pos"].numpy()
                    img = batch["img"].to(device)
                    ids = batch["ids"].to(device)
                    outs_i, outs_t = [], []
                    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                        outs_i.append(image_tower.run_tower(dm.transforms.probe(img)))
                        outs_t.append(text_tower.run_tower(ids[:, 0])[0])
                        for p in range(pairs):
                            views = torch.cat([dm.transforms.ssl(img), dm.transforms.ssl(img)])
                            tid = ids[:, 1 + p].repeat(2, 1)
                            if split == "train" and dm.masker.prob > 0:  # SSL val views: eval mode, no masking
                                tid = dm.masker(tid)
                            outs_i.extend(image_tower.run_tower(views).chunk(2))
                            outs_t.extend(text_tower.run_tower(tid)[0].chunk(2))
                    img_t = torch.stack(outs_i, 1).to(torch.float16).cpu().numpy()
                    txt_t = torch.stack(outs_t, 1).to(torch.float16).cpu().numpy()
                    if img_mm is None:
                        img_mm = open_memmap(partial / f"image_{split}.npy", mode="w+", dtype=np.float16,
                                             shape=(n, C) + img_t.shape[2:])
                        txt_mm = open_memmap(partial / f"text_{split}.npy", mode="w+", dtype=np.float16,
                                             shape=(n, C) + txt_t.shape[2:])
                    img_mm[pos] = img_t
                    txt_mm[pos] = txt_t
                    # copy 0 is unmasked; pair p's two views share its (possibly masked) ids' real length
                    real = (ids >= 0).sum(-1).cpu().numpy()
                    lens[pos] = np.concatenate([real[:, :1]] + [real[:, 1 + p:2 + p].repeat(2, 1)
                                                                for p in range(pairs)], axis=1)
                if img_mm is None:
                    raise ValueError(f"dm: split {split} has no movies to cache")
                img_mm.flush()
                txt_mm.flush()
                del img_mm, txt_mm
                np.save(partial / f"text_len_{split}.npy", lens)
        manifest = _finalise(partial, out_dir, {"params": params, "counts": counts})
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return {**manifest, "seconds": time.time() - t0}


# ----------------------------------------------------------------------------------------------------------------
# fixture (tests and demos): a tiny archive with the real layout


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
