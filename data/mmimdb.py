"""MM-IMDb (Arevalo et al. 2017): the raw archive's schema, posters and the index (this module); the datasets,
device transforms and data module (``mmimdb_datamodule``); the frozen-feature cache (``mmimdb_cache``).

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
views are masked with probability ``data.text_mask_prob`` (``data/text_masking.py``); the SSL validation
views are not (the reference masks only with the encoder in train mode).

Feature cache (``data.feature_cache=True``, ``build_feature_cache``): the frozen towers' outputs are precomputed
once per item: copy 0 un-augmented (the probe input, and ``x`` of SSL batches) and ``data.cache_copies`` augmented
copies, grouped in pairs that share one plot draw (two views of one reference read). Training then reads two
copies of a random pair instead of running the towers. Text is tokenised to the full maximum length so that the
tower's outputs at padding positions are exact too (they matter with ``model.mask_padding=False``). Stored float16.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

# The index and the feature cache are manifest-backed build directories: read_manifest, verify and sha256_file are
# part of this module's API.
from .manifest import building, finalise, read_manifest, sha256_file, verify  # noqa: F401

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
    with building(out_dir) as partial:
        index = {"version": INDEX_VERSION, "genres": list(GENRES), "ids": ids, "split": splits, "image": images,
                 "plots": plots}
        (partial / "index.json").write_text(json.dumps(index, ensure_ascii=False))
        np.save(partial / "labels.npy", np.stack(labels).astype(np.uint8))
        manifest = finalise(partial, out_dir, {**(params or {}), "version": INDEX_VERSION},
                            counts=counts, skipped=skipped, skipped_examples=examples,
                            label_frequency=dict(zip(GENRES, np.stack(labels).sum(0).astype(int).tolist())))
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
