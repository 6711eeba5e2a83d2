"""Trifeatures (Hermann & Lampinen, NeurIPS 2020): generator, bimodal pairs, tasks and preprocessing.

Raw layout (``generate``)::

    images_train.npy  (2400, size, size, 3) uint8, sorted-filename order
    images_test.npy   (200, size, size, 3) uint8
    labels.csv        split, index, filename, shape, texture, colour, shape_id, texture_id, colour_id
    manifest.json     sha256 + size of every file, generation parameters

Processed layout (``preprocess``), for split in train / val / test::

    images_<split>.npy                 (N, image_size, image_size, 3) uint8
    attributes_<split>.npy             (N, 3) int64: shape, texture, colour ids
    labels_<split>.csv                 as the raw label table (index = row in images_<split>.npy)
    pairs_<split>_unbiased.npy         (P, 2) int64 indices into images_<split>
    pairs_<split>_biased.npy           (P', 2) int64
    probe_labels_<split>.npy           (P, 4) int64, columns = PROBE_TASKS, rows = the unbiased pairs
    manifest.json

Both directories are written atomically: built in ``.<name>.partial-<pid>`` next to the target, checksummed, then
renamed into place. The manifest is the last file written, so a directory without a valid manifest is never
complete; ``verify`` re-hashes every file.

Only numpy and scipy are needed to generate; torch is imported lazily to resize in ``preprocess``.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import numpy as np

# Both sets are manifest-backed build directories: read_manifest and verify are part of this module's API.
from .manifest import building, finalise, read_manifest, sha256_file, verify  # noqa: F401

# The generator's vocabulary and renderer, part of this module's API.
from .trifeatures_render import (  # noqa: F401
    BACKGROUND_RGB, BACKGROUND_U8, COLOUR_RGB, COLOUR_U8, COLOURS, DEFAULT_SIZE, SHAPES, TEXTURE_PERIOD, TEXTURES,
    Renderer, _attr_id, rain_from_starts, render_image, rotate_centre_crop, shape_template, texture_pattern)

N_TRIPLETS = len(SHAPES) * len(TEXTURES) * len(COLOURS)
N_TEST_TRIPLETS = 200
IMAGES_PER_TRAIN_TRIPLET = 3
PROBE_TASKS = ("share", "unique1", "unique2", "synergy")
SPLITS = ("train", "val", "test")
GENERATOR_VERSION = 1
PREPROCESS_VERSION = 1

RAW_FILES = ("images_train.npy", "images_test.npy", "labels.csv")
LABEL_COLUMNS = ("split", "index", "filename", "shape", "texture", "colour", "shape_id", "texture_id", "colour_id")


# ----------------------------------------------------------------------------------------------------------------
# Split of combinations


def triplet_attributes() -> np.ndarray:
    """(1000, 3) ids in enumeration order: shape-major, then texture, then colour."""
    t = np.arange(N_TRIPLETS)
    return np.stack([t // 100, (t // 10) % 10, t % 10], axis=1)


def image_filename(shape: int, texture: int, colour: int, k: int | None) -> str:
    stem = f"{SHAPES[shape]}_{TEXTURES[texture]}_{COLOURS[colour]}"
    return f"{stem}.png" if k is None else f"{stem}_{k}.png"


def parse_filename(filename: str) -> tuple[int, int, int]:
    """(shape, texture, colour) ids from a file name; the reference parses labels from the name."""
    parts = Path(filename).stem.split("_")
    if len(parts) not in (3, 4):
        raise ValueError(f"filename: cannot parse {filename!r}")
    return (_attr_id(parts[0], SHAPES, "shape"), _attr_id(parts[1], TEXTURES, "texture"),
            _attr_id(parts[2], COLOURS, "colour"))


# ----------------------------------------------------------------------------------------------------------------
# Files: each set is a manifest-backed build directory (data/manifest.py)


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Generation


def generate(out_dir: Path, seed: int = 42, size: int = DEFAULT_SIZE, progress: bool = True) -> dict:
    """Render the Trifeatures set (2400 train + 200 test images) into ``out_dir``; returns the manifest plus
    ``"seconds"`` (wall time).

    One ``default_rng(seed)`` drives everything: first the shuffled 200/800 test/train assignment of the 1000
    triplets, then every image in enumeration order. Images are stored in sorted-filename order per split.
    Any existing ``out_dir`` is replaced (atomically) only once the new set is complete.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: must be a non-negative integer, got {seed!r}")
    renderer = Renderer(size)  # validates size
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    with building(out_dir) as partial:
        manifest = _render_into(partial, out_dir, seed, size, renderer, progress, t0)
    seconds = time.perf_counter() - t0
    _log(progress, f"trifeatures: generated {manifest['params']['n_train'] + manifest['params']['n_test']} images "
                   f"at {size}x{size} in {seconds:.1f} s -> {out_dir}")
    return {**manifest, "seconds": seconds}


def _render_into(partial: Path, out_dir: Path, seed: int, size: int, renderer: "Renderer", progress: bool,
                 t0: float) -> dict:
    """Render every image into ``partial`` and finalise it as ``out_dir``; returns the manifest."""
    rng = np.random.default_rng(int(seed))
    is_test = np.zeros(N_TRIPLETS, dtype=np.int64)
    is_test[:N_TEST_TRIPLETS] = 1
    rng.shuffle(is_test)
    attrs = triplet_attributes()

    # (split, triplet, k) for every image in render order, and its slot in the sorted-filename order of its split.
    entries = {"train": [], "test": []}
    for t in range(N_TRIPLETS):
        if is_test[t]:
            entries["test"].append((t, None))
        else:
            entries["train"].extend((t, k) for k in range(IMAGES_PER_TRAIN_TRIPLET))
    slots, rows = {}, []
    for split, items in entries.items():
        names = [image_filename(*attrs[t], k) for t, k in items]
        order = np.argsort(np.array(names), kind="stable")
        slot = np.empty(len(items), dtype=np.int64)
        slot[order] = np.arange(len(items))
        slots[split] = slot
        for pos in order:
            t, _ = items[pos]
            rows.append((split, int(slot[pos]), names[pos], *attrs[t]))

    arrays = {
        split: np.lib.format.open_memmap(partial / f"images_{split}.npy", mode="w+", dtype=np.uint8,
                                         shape=(len(entries[split]), size, size, 3))
        for split in ("train", "test")
    }
    # Render in enumeration order (the reference's RNG order), interleaving splits as the reference does.
    cursor = {"train": 0, "test": 0}
    total = len(entries["train"]) + len(entries["test"])
    done, next_report = 0, 0.1
    for t in range(N_TRIPLETS):
        split = "test" if is_test[t] else "train"
        n_img = 1 if is_test[t] else IMAGES_PER_TRAIN_TRIPLET
        for _ in range(n_img):
            arrays[split][slots[split][cursor[split]]] = renderer.render(*attrs[t], rng)
            cursor[split] += 1
            done += 1
        if progress and done / total >= next_report:
            _log(progress, f"trifeatures: rendered {done}/{total} images ({time.perf_counter() - t0:.1f} s)")
            next_report += 0.1
    for a in arrays.values():
        a.flush()
    del arrays

    _write_label_csv(partial / "labels.csv", rows)
    params = {
        "dataset": "trifeatures", "kind": "raw", "generator_version": GENERATOR_VERSION, "seed": int(seed),
        "size": int(size), "n_train": len(entries["train"]), "n_test": len(entries["test"]),
        "shapes": list(SHAPES), "textures": list(TEXTURES), "colours": list(COLOURS),
    }
    return finalise(partial, out_dir, params)


def _write_label_csv(path: Path, rows) -> None:
    rows = sorted(rows, key=lambda r: (r[0], r[1]))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(LABEL_COLUMNS)
        for split, index, filename, s, t, c in rows:
            w.writerow([split, index, filename, SHAPES[s], TEXTURES[t], COLOURS[c], int(s), int(t), int(c)])


def read_labels(path: Path) -> list[dict]:
    """Rows of a label table, with ids checked against both the names and the file name (labels parse back)."""
    out = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != LABEL_COLUMNS:
            raise ValueError(f"path: {path} has columns {reader.fieldnames}, expected {list(LABEL_COLUMNS)}")
        for r in reader:
            ids = (int(r["shape_id"]), int(r["texture_id"]), int(r["colour_id"]))
            names = (_attr_id(r["shape"], SHAPES, "shape"), _attr_id(r["texture"], TEXTURES, "texture"),
                     _attr_id(r["colour"], COLOURS, "colour"))
            if ids != names or parse_filename(r["filename"]) != ids:
                raise ValueError(f"path: {path}: inconsistent labels in row {r}")
            out.append({"split": r["split"], "index": int(r["index"]), "filename": r["filename"],
                        "shape": ids[0], "texture": ids[1], "colour": ids[2]})
    return out


def _attributes_of(rows: list[dict], split: str) -> np.ndarray:
    sel = sorted((r for r in rows if r["split"] == split), key=lambda r: r["index"])
    if [r["index"] for r in sel] != list(range(len(sel))):
        raise ValueError(f"labels: indices of split {split!r} are not 0..N-1")
    return np.array([(r["shape"], r["texture"], r["colour"]) for r in sel], dtype=np.int64).reshape(-1, 3)


# ----------------------------------------------------------------------------------------------------------------
# Bimodal pairs and tasks


def colour_permutation(data_seed: int) -> np.ndarray:
    """π: correlated pairs are C = {(texture k, colour π[k])}. The first draw of a fresh default_rng(data_seed)."""
    return np.random.default_rng(int(data_seed)).permutation(len(COLOURS))


def allowed_pairs(attributes: np.ndarray, perm: np.ndarray, biased: bool) -> np.ndarray:
    """All ordered (a, b) with the same shape (a == b included), lexicographic; biased: (tex(a), col(b)) ∈ C."""
    attributes = np.asarray(attributes)
    ok = attributes[:, 0][:, None] == attributes[None, :, 0]
    if biased:
        ok &= perm[attributes[:, 1]][:, None] == attributes[None, :, 2]
    a, b = np.nonzero(ok)
    return np.stack([a, b], axis=1).astype(np.int64)


def sample_pairs(attributes: np.ndarray, data_seed: int, biased: bool, max_size: int) -> np.ndarray:
    """The reference's pair draw: each dataset object has its own default_rng(data_seed); π is its first draw,
    then ``min(max_size, #allowed)`` allowed pairs are chosen without replacement (kept in draw order)."""
    if max_size < 1:
        raise ValueError(f"max_size: must be >= 1, got {max_size}")
    rng = np.random.default_rng(int(data_seed))
    perm = rng.permutation(len(COLOURS))
    pairs = allowed_pairs(attributes, perm, biased)
    if len(pairs) == 0:
        return pairs
    chosen = rng.choice(len(pairs), size=min(int(max_size), len(pairs)), replace=False)
    return pairs[chosen]


def task_labels(pairs: np.ndarray, attributes: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """(P, 4) labels in PROBE_TASKS order: share = shape(im1), unique1/2 = texture(im1/2),
    synergy = 1 if (texture(im1), colour(im2)) ∈ C."""
    a1, a2 = attributes[pairs[:, 0]], attributes[pairs[:, 1]]
    synergy = (perm[a1[:, 1]] == a2[:, 2]).astype(np.int64)
    return np.stack([a1[:, 0], a1[:, 1], a2[:, 1], synergy], axis=1).astype(np.int64)


def validation_triplets(train_attributes: np.ndarray, val_fraction: float, data_seed: int) -> np.ndarray:
    """Sorted triplet ids (shape*100 + texture*10 + colour) held out from the train combinations for val."""
    triplets = np.unique(train_attributes @ np.array([100, 10, 1]))
    n_val = int(round(val_fraction * len(triplets)))
    # A stream of its own: the pair RNG restarts at default_rng(data_seed) and must not be correlated with this.
    rng = np.random.default_rng(np.random.SeedSequence([int(data_seed), 0x7A1]))
    return np.sort(rng.choice(triplets, size=n_val, replace=False))


# ----------------------------------------------------------------------------------------------------------------
# Preprocessing


def resize_images(images: np.ndarray, image_size: int, chunk: int = 256) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, image_size, image_size, 3) uint8, antialiased bilinear, rounded to nearest."""
    n, h, w, _ = images.shape
    if (h, w) == (image_size, image_size):
        return np.array(images, dtype=np.uint8, copy=True)
    import torch
    import torch.nn.functional as F

    out = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    for s in range(0, n, chunk):
        x = torch.from_numpy(np.ascontiguousarray(images[s:s + chunk])).permute(0, 3, 1, 2).float()
        y = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
        out[s:s + chunk] = y.round().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def preprocess(raw_dir: Path, out_dir: Path, image_size: int = DEFAULT_SIZE, val_fraction: float = 0.1,
               max_size: int = 10000, data_seed: int = 42, progress: bool = True) -> dict:
    """Build the train / val / test arrays, pair indices and probe labels from a generated set; returns the manifest
    plus ``"seconds"``.

    The validation split is a ``val_fraction`` of the train *combinations* (all images of a held-out triplet), so
    val combinations are disjoint from both train and test. Pairs are built within each split.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 8:
        raise ValueError(f"image_size: must be an integer >= 8, got {image_size!r}")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction: must be in [0, 1), got {val_fraction}")
    if isinstance(max_size, bool) or not isinstance(max_size, (int, np.integer)) or max_size < 1:
        raise ValueError(f"max_size: must be a positive integer, got {max_size!r}")
    if isinstance(data_seed, bool) or not isinstance(data_seed, (int, np.integer)) or data_seed < 0:
        raise ValueError(f"data_seed: must be a non-negative integer, got {data_seed!r}")
    problems = verify(raw_dir)
    if problems:
        raise ValueError(f"raw_dir: generated Trifeatures set is not valid: {'; '.join(problems[:3])}")
    t0 = time.perf_counter()
    raw_manifest = read_manifest(raw_dir)
    rows = read_labels(raw_dir / "labels.csv")
    raw_attrs = {s: _attributes_of(rows, s) for s in ("train", "test")}
    raw_names = {s: [r["filename"] for r in sorted((r for r in rows if r["split"] == s), key=lambda r: r["index"])]
                 for s in ("train", "test")}
    val_t = validation_triplets(raw_attrs["train"], float(val_fraction), data_seed)
    in_val = np.isin(raw_attrs["train"] @ np.array([100, 10, 1]), val_t)
    select = {"train": ("train", np.nonzero(~in_val)[0]), "val": ("train", np.nonzero(in_val)[0]),
              "test": ("test", np.arange(len(raw_attrs["test"])))}

    with building(out_dir) as partial:
        perm = colour_permutation(data_seed)
        counts = {}
        for split in SPLITS:
            source, idx = select[split]
            raw_images = np.load(raw_dir / f"images_{source}.npy", mmap_mode="r")
            images = resize_images(raw_images[idx] if len(idx) else raw_images[:0], image_size)
            np.save(partial / f"images_{split}.npy", images)
            attrs = raw_attrs[source][idx].reshape(-1, 3)
            np.save(partial / f"attributes_{split}.npy", attrs)
            _write_label_csv(partial / f"labels_{split}.csv",
                             [(split, k, raw_names[source][i], *attrs[k]) for k, i in enumerate(idx)])
            pairs = {}
            for biased in (False, True):
                tag = "biased" if biased else "unbiased"
                pairs[tag] = sample_pairs(attrs, data_seed, biased, max_size).reshape(-1, 2)
                np.save(partial / f"pairs_{split}_{tag}.npy", pairs[tag])
            np.save(partial / f"probe_labels_{split}.npy", task_labels(pairs["unbiased"], attrs, perm).reshape(-1, 4))
            counts[split] = {"images": int(len(idx)), "triplets": int(len(np.unique(attrs @ np.array([100, 10, 1])))),
                             "pairs_unbiased": int(len(pairs["unbiased"])), "pairs_biased": int(len(pairs["biased"]))}
            _log(progress, f"trifeatures: {split}: {counts[split]}")
        params = {
            "dataset": "trifeatures", "kind": "processed", "preprocess_version": PREPROCESS_VERSION,
            "image_size": int(image_size), "val_fraction": float(val_fraction), "max_size": int(max_size),
            "data_seed": int(data_seed), "raw_seed": raw_manifest["params"]["seed"],
            "raw_size": raw_manifest["params"]["size"],
            "raw_manifest_sha256": sha256_file(raw_dir / "manifest.json"),
            "colour_permutation": [int(p) for p in perm], "probe_tasks": list(PROBE_TASKS), "counts": counts,
        }
        manifest = finalise(partial, out_dir, params)
    seconds = time.perf_counter() - t0
    _log(progress, f"trifeatures: preprocessed in {seconds:.1f} s -> {out_dir}")
    return {**manifest, "seconds": seconds}


def load_processed(out_dir: Path, split: str, mmap: bool = True) -> dict:
    """Arrays of one processed split: images, attributes, pairs_unbiased, pairs_biased, probe_labels, plus the
    colour permutation. Does not verify (call ``verify`` first)."""
    if split not in SPLITS:
        raise ValueError(f"split: must be one of {SPLITS}, got {split!r}")
    out_dir = Path(out_dir)
    mode = "r" if mmap else None
    return {
        "images": np.load(out_dir / f"images_{split}.npy", mmap_mode=mode),
        "attributes": np.load(out_dir / f"attributes_{split}.npy"),
        "pairs_unbiased": np.load(out_dir / f"pairs_{split}_unbiased.npy"),
        "pairs_biased": np.load(out_dir / f"pairs_{split}_biased.npy"),
        "probe_labels": np.load(out_dir / f"probe_labels_{split}.npy"),
        "colour_permutation": np.array(read_manifest(out_dir)["params"]["colour_permutation"], dtype=np.int64),
    }
