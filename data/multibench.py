"""MultiBench preprocessing: the affect pickles (MOSI, UR-FUNNY, MUSTARD), MIMIC-III's ``im.pk``
and the Vision&Touch HDF5 episodes, each turned into one canonical set of ``.npy`` arrays.

Every raw file is untrusted: pickles go through ``safe_io.safe_unpickle`` and every array is checked against the
schema below before anything is written; a violation raises ``SchemaError`` naming the file, the key, and what was
expected. Non-finite inputs are replaced by 0 (and counted in the manifest); non-finite labels are an error.

Processed layouts (``<split>`` in train / val / test)::

    affect   vision_<split>.npy (N, 50, d_v) float32   sequences cropped at the first non-zero text row and moved
             text_<split>.npy   (N, 50, 300) float32   to the front: rows [0, length) hold the sample, the rest 0
             audio_<split>.npy  (N, 50, d_a) float32
             length_<split>.npy (N,) int64             50 - start, in [1, 50]
             label_<split>.npy  (N,) int64             1 if label > 0 else 0 (every dataset, the reference)
             label_raw_<split>.npy (N,) float32        the pickle's label, for reference
    mimic    static_<split>.npy (N, 5) float32         z-scored with statistics over all N patients
             timeseries_<split>.npy (N, 24, 12) float32
             y_icd9_<split>.npy (N, 20) int64          every ICD-9 group; the task column is picked at load time
             adm_labels_<split>.npy (N, K) float32
             index_<split>.npy (N,) int64              row in im.pk
    v&t      image_<split>.npy (N, 128, 128, 3) uint8  one row per item: 49 items per episode file
             force_<split>.npy (N, 32, 6) float32      tanh of the last 32 force/torque readings
             proprio_<split>.npy (N, 8) float32
             ee_yaw_next_<split>.npy (N, 4) float32    proprio[s+1][:4]   (regression target)
             contact_next_<split>.npy (N,) int64       sum(contact[s+1]) > 0   (binary target)
             file_<split>.npy, step_<split>.npy (N,) int64   episode (index into the sorted file list) and step

A processed directory is built in ``.<name>.partial-<pid>``, every file is hashed into ``manifest.json`` (written
last), and the directory is renamed into place, so a directory with a valid manifest is complete. ``verify``
re-hashes (or, with ``deep=False``, checks sizes).
"""
from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import numpy as np

from .manifest import building, finalise, read_manifest, verify  # noqa: F401

PREPROCESS_VERSION = 1
SPLITS = ("train", "val", "test")

# ------------------------------------------------------------------------------------------------ schema constants

AFFECT_DATASETS = ("mosi", "humor", "sarcasm")
AFFECT_MODALITIES = ("vision", "text", "audio")
AFFECT_SEQ_LEN = 50
AFFECT_DIMS = {  # the reference (MOSI audio from the 3-modality config)
    "mosi": {"vision": 20, "audio": 5, "text": 300},
    "humor": {"vision": 371, "audio": 81, "text": 300},
    "sarcasm": {"vision": 371, "audio": 81, "text": 300},
}
AFFECT_PICKLE_SPLITS = {"train": "train", "val": "valid", "test": "test"}

MIMIC_STATIC_DIM = 5
MIMIC_SERIES_SHAPE = (24, 12)
MIMIC_N_ICD9 = 20
MIMIC_SPLIT_SEED = 10  # the reference's random.seed(10), independent of any run or data seed

VT_EPISODE_LEN = 50
VT_ITEMS_PER_FILE = VT_EPISODE_LEN - 1      # item s uses step s and the labels of step s+1
VT_IMAGE_SHAPE = (128, 128, 3)
VT_FORCE_READINGS = 32
VT_TEST_FRACTION = 0.2                      # the reference's n_test = int(0.2 * #files)
VT_FILE_SPLIT_SEED = 42                     # the reference's default_rng(42) file shuffle
VT_REQUIRED = {                             # dataset -> shape after the episode axis
    "image": VT_IMAGE_SHAPE, "proprio": (8,), "ee_forces_continuous": (50, 6), "contact": (50,),
}


class SchemaError(ValueError):
    """A raw file does not have the expected structure; the message names the file and the key."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ builds
# Each processed set is a manifest-backed build directory (data/manifest.py): read_manifest and verify are part of
# this module's API.

def load_split(out_dir: Path, split: str, mmap: bool = True) -> dict[str, np.ndarray]:
    """Every ``<name>_<split>.npy`` array of a processed directory, keyed by name (memory-mapped)."""
    if split not in SPLITS:
        raise ValueError(f"split: must be one of {SPLITS}, got {split!r}")
    out = {}
    for p in sorted(Path(out_dir).glob(f"*_{split}.npy")):
        out[p.name[: -len(f"_{split}.npy")]] = np.load(p, mmap_mode="r" if mmap else None)
    if not out:
        raise ValueError(f"out_dir: no arrays for split {split!r} in {out_dir}")
    return out


# ------------------------------------------------------------------------------------------------ checks

def _array(container: dict, key: str, where: str) -> np.ndarray:
    if not isinstance(container, dict):
        raise SchemaError(f"{where}: expected a dict, got {type(container).__name__}", key)
    if key not in container:
        raise SchemaError(f"{where}: missing key '{key}' (keys present: {', '.join(map(str, container))})", key)
    value = container[key]
    try:
        arr = np.asarray(value)
    except Exception as e:  # ragged lists and the like
        raise SchemaError(f"{where}['{key}']: not an array ({type(e).__name__}: {e})", key) from None
    if arr.dtype == object:
        raise SchemaError(f"{where}['{key}']: expected a numeric array, got dtype object", key)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise SchemaError(f"{where}['{key}']: expected a numeric array, got dtype {arr.dtype}", key)
    return arr


def _shape(arr: np.ndarray, expected: tuple, where: str, key: str) -> None:
    """``expected`` may hold None for a free axis."""
    ok = arr.ndim == len(expected) and all(e is None or a == e for a, e in zip(arr.shape, expected))
    if not ok:
        want = "(" + ", ".join("N" if e is None else str(e) for e in expected) + ")"
        raise SchemaError(f"{where}['{key}']: expected shape {want}, got {tuple(arr.shape)}", key)


def _finite_float(arr: np.ndarray) -> tuple[np.ndarray, int]:
    """float32 copy with NaN and ±inf replaced by 0, and how many were replaced."""
    out = np.asarray(arr, dtype=np.float32)
    bad = ~np.isfinite(out)
    n = int(bad.sum())
    if n:
        out = np.where(bad, np.float32(0), out)
    return out, n


def _labels(arr: np.ndarray, n: int, where: str, key: str) -> np.ndarray:
    """One value per sample, possibly nested as (N, 1) or (N, 1, 1)."""
    if arr.ndim == 0 or arr.shape[0] != n or int(np.prod(arr.shape[1:], dtype=np.int64)) != 1:
        raise SchemaError(f"{where}['{key}']: expected one label per sample, shape (N,), (N, 1) or (N, 1, 1) with "
                          f"N={n}, got {tuple(arr.shape)}", key)
    flat = arr.reshape(n).astype(np.float64)
    if not np.isfinite(flat).all():
        bad = int(np.flatnonzero(~np.isfinite(flat))[0])
        raise SchemaError(f"{where}['{key}']: non-finite label at sample {bad}", key)
    return flat


# ------------------------------------------------------------------------------------------------ affect

def validate_affect(data, dataset: str, source: str = "pickle") -> None:
    """Raise SchemaError unless ``data`` is the MultiBench affect layout with the reference's feature sizes."""
    if dataset not in AFFECT_DIMS:
        raise ValueError(f"dataset: must be one of {', '.join(AFFECT_DATASETS)}, got {dataset!r}")
    if not isinstance(data, dict):
        raise SchemaError(f"{source}: expected a dict with keys train/valid/test, got {type(data).__name__}")
    dims = AFFECT_DIMS[dataset]
    for split in AFFECT_PICKLE_SPLITS.values():
        where = f"{source}['{split}']"
        if split not in data:
            raise SchemaError(f"{source}: missing key '{split}' (keys present: {', '.join(map(str, data))})", split)
        part = data[split]
        n = None
        for m in AFFECT_MODALITIES:
            arr = _array(part, m, where)
            _shape(arr, (None, AFFECT_SEQ_LEN, dims[m]), where, m)
            if n is not None and arr.shape[0] != n:
                raise SchemaError(f"{where}['{m}']: {arr.shape[0]} samples, but '{AFFECT_MODALITIES[0]}' has {n}", m)
            n = arr.shape[0]
        _labels(_array(part, "labels", where), n, where, "labels")


def _align_front(x: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Row i of the output holds x[i, start[i]:] at the front, zero-padded at the end."""
    n, t = x.shape[:2]
    src = np.arange(t)[None, :] + start[:, None]
    valid = src < t
    out = np.take_along_axis(x, np.minimum(src, t - 1)[:, :, None], axis=1)
    out[~valid] = 0
    return out


def process_affect_split(part: dict, dataset: str) -> tuple[dict[str, np.ndarray], dict]:
    """The reference's cleaning of one split: drop all-zero text, audio -inf -> 0 (and any other non-finite -> 0), crop each
    sample at its first non-zero text row, binarise labels > 0. Returns arrays and counts."""
    n0 = len(np.asarray(part["text"]))
    text_raw = np.asarray(part["text"])
    keep = text_raw.reshape(n0, -1).sum(axis=1) != 0  # MultiBench's drop_entry (NaN sums are kept, then zeroed)
    stats = {"raw": int(n0), "dropped_zero_text": int((~keep).sum()), "nonfinite_replaced": {}}
    arrays = {}
    for m in AFFECT_MODALITIES:
        x = np.asarray(part[m])[keep]
        if m == "audio":
            neginf = np.isneginf(x)
            stats["audio_neginf_zeroed"] = int(neginf.sum())
            x = np.where(neginf, 0, x)  # the reference's rule; other non-finite values are ours
        arrays[m], stats["nonfinite_replaced"][m] = _finite_float(x)
    labels = _labels(np.asarray(part["labels"]), n0, "labels", "labels")[keep]
    nz = np.abs(arrays["text"]).sum(axis=2) != 0                  # (N, 50): rows with any non-zero entry
    has = nz.any(axis=1)                                          # text that was only NaN/inf is now all zero
    stats["dropped_nonfinite_text"] = int((~has).sum())
    if not has.all():
        arrays = {m: a[has] for m, a in arrays.items()}
        labels, nz = labels[has], nz[has]
    start = nz.argmax(axis=1)
    for m in AFFECT_MODALITIES:
        arrays[m] = np.ascontiguousarray(_align_front(arrays[m], start), dtype=np.float32)
    arrays["length"] = (AFFECT_SEQ_LEN - start).astype(np.int64)
    arrays["label"] = (labels > 0).astype(np.int64)
    arrays["label_raw"] = labels.astype(np.float32)
    stats["kept"] = int(len(labels))
    stats["positives"] = int(arrays["label"].sum())
    return arrays, stats


def preprocess_affect(pickle_path: Path, out_dir: Path, dataset: str, progress: bool = True,
                      extra_params: dict | None = None) -> dict:
    from .safe_io import safe_unpickle

    pickle_path, out_dir = Path(pickle_path), Path(out_dir)
    t0 = time.perf_counter()
    data = safe_unpickle(pickle_path)
    validate_affect(data, dataset, source=str(pickle_path))
    with building(out_dir) as partial:
        counts = {}
        for split, key in AFFECT_PICKLE_SPLITS.items():
            arrays, counts[split] = process_affect_split(data[key], dataset)
            if counts[split]["kept"] == 0:
                raise SchemaError(f"{pickle_path}['{key}']: no sample left after dropping all-zero text", key)
            for name, arr in arrays.items():
                np.save(partial / f"{name}_{split}.npy", arr)
            _log(progress, f"{dataset}: {split}: {counts[split]}")
        params = {"dataset": dataset, "kind": "affect", "preprocess_version": PREPROCESS_VERSION,
                  "dims": AFFECT_DIMS[dataset], "seq_len": AFFECT_SEQ_LEN, "counts": counts,
                  "tasks": {"label": "binary"}, **(extra_params or {})}
        manifest = finalise(partial, out_dir, params)
    return {**manifest, "seconds": time.perf_counter() - t0}


# ------------------------------------------------------------------------------------------------ MIMIC

def validate_mimic(data, source: str = "im.pk") -> int:
    """Raise SchemaError unless ``data`` is MultiBench's MIMIC dict; returns N."""
    if not isinstance(data, dict):
        raise SchemaError(f"{source}: expected a dict, got {type(data).__name__}")
    ts = _array(data, "ep_tdata", source)
    _shape(ts, (None, *MIMIC_SERIES_SHAPE), source, "ep_tdata")
    n = ts.shape[0]
    _shape(_array(data, "adm_features_all", source), (n, MIMIC_STATIC_DIM), source, "adm_features_all")
    adm = _array(data, "adm_labels_all", source)
    if adm.ndim != 2 or adm.shape[0] != n:
        raise SchemaError(f"{source}['adm_labels_all']: expected shape (N, K) with N={n}, got {tuple(adm.shape)}",
                          "adm_labels_all")
    y = _array(data, "y_icd9", source)
    _shape(y, (n, MIMIC_N_ICD9), source, "y_icd9")
    yf = y.astype(np.float64)
    if not np.isfinite(yf).all():
        r, c = np.argwhere(~np.isfinite(yf))[0]
        raise SchemaError(f"{source}['y_icd9']: non-finite label at patient {r}, column {c}", "y_icd9")
    if not np.isin(yf, (0.0, 1.0)).all():
        r, c = np.argwhere(~np.isin(yf, (0.0, 1.0)))[0]
        raise SchemaError(f"{source}['y_icd9']: labels must be 0 or 1, got {yf[r, c]} at patient {r}, column {c}",
                          "y_icd9")
    if n < 10:
        raise SchemaError(f"{source}['ep_tdata']: {n} patients; at least 10 are needed for the 10/10/80 split",
                          "ep_tdata")
    return n


def mimic_split(n: int) -> dict[str, np.ndarray]:
    """The reference split: random.seed(10), shuffle, val = first N//10, test = [N//10, N//5), train = the rest."""
    order = list(range(n))
    rng = random.Random(MIMIC_SPLIT_SEED)  # same stream as random.seed(10); random.shuffle
    rng.shuffle(order)
    order = np.asarray(order, dtype=np.int64)
    return {"val": order[: n // 10], "test": order[n // 10: n // 5], "train": order[n // 5:]}


def _zscore(x: np.ndarray, axes: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = x.mean(axis=axes, keepdims=True, dtype=np.float64)
    std = x.std(axis=axes, keepdims=True, dtype=np.float64)
    # a constant feature has std 0; the reference would divide by 0 (NaN), we leave it centred at 0
    std_safe = np.where(std > 0, std, 1.0)
    return ((x - mean) / std_safe).astype(np.float32), mean.ravel(), std.ravel()


def preprocess_mimic(pickle_path: Path, out_dir: Path, progress: bool = True, extra_params: dict | None = None
                     ) -> dict:
    from .safe_io import safe_unpickle

    pickle_path, out_dir = Path(pickle_path), Path(out_dir)
    t0 = time.perf_counter()
    data = safe_unpickle(pickle_path)
    n = validate_mimic(data, source=str(pickle_path))
    static, bad_s = _finite_float(data["adm_features_all"])
    series, bad_t = _finite_float(data["ep_tdata"])
    static, s_mean, s_std = _zscore(static, (0,))
    series, t_mean, t_std = _zscore(series, (0, 1))
    adm, bad_a = _finite_float(data["adm_labels_all"])
    y = np.asarray(data["y_icd9"]).astype(np.int64)
    with building(out_dir) as partial:
        counts = {}
        for split, idx in mimic_split(n).items():
            np.save(partial / f"static_{split}.npy", static[idx])
            np.save(partial / f"timeseries_{split}.npy", series[idx])
            np.save(partial / f"y_icd9_{split}.npy", y[idx])
            np.save(partial / f"adm_labels_{split}.npy", adm[idx])
            np.save(partial / f"index_{split}.npy", idx)
            counts[split] = {"patients": int(len(idx)), "positives_per_icd9": [int(v) for v in y[idx].sum(0)]}
            _log(progress, f"mimic: {split}: {len(idx)} patients")
        params = {"dataset": "mimic", "kind": "mimic", "preprocess_version": PREPROCESS_VERSION, "n": int(n),
                  "split_seed": MIMIC_SPLIT_SEED, "counts": counts,
                  "nonfinite_replaced": {"adm_features_all": bad_s, "ep_tdata": bad_t, "adm_labels_all": bad_a},
                  "zscore": {"static_mean": s_mean.tolist(), "static_std": s_std.tolist(),
                             "series_mean": t_mean.tolist(), "series_std": t_std.tolist()},
                  **(extra_params or {})}
        manifest = finalise(partial, out_dir, params)
    return {**manifest, "seconds": time.perf_counter() - t0}


# ------------------------------------------------------------------------------------------------ Vision&Touch

def vt_file_split(names: list[str], val_fraction: float, data_seed: int = VT_FILE_SPLIT_SEED
                  ) -> dict[str, list[int]]:
    """File-level split (indices into the sorted names).

    test: the reference's, shuffle with default_rng(data_seed) (42 in the reference) and keep the last
    int(0.2 * #files); the reference's "val" is the same list [a reference oddity]. val (ours): a ``val_fraction`` of
    the remaining train files, drawn with default_rng([data_seed, 1]), so checkpoint and probe selection never see
    test files. Under the reference protocol the data module merges val back into train.
    """
    n = len(names)
    if n < 3:
        raise ValueError(f"names: need at least 3 episode files for train/val/test, got {n}")
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction: must be in (0, 1), got {val_fraction}")
    order = np.random.default_rng(data_seed).permutation(n)
    n_test = max(1, int(VT_TEST_FRACTION * n))
    ref_train, test = order[: n - n_test], order[n - n_test:]
    n_val = min(len(ref_train) - 1, max(1, int(round(float(val_fraction) * len(ref_train)))))
    pick = np.random.default_rng([data_seed, 1]).permutation(len(ref_train))
    val = np.sort(ref_train[pick[:n_val]])
    train = np.sort(ref_train[pick[n_val:]])
    return {"train": train.tolist(), "val": val.tolist(), "test": np.sort(test).tolist()}


def vt_random_step(data_seed: int, file_index: int) -> int:
    """The step that replaces s = 48 (the reference draws it afresh from numpy's global RNG on every read
    [ODDITY]); here it is fixed per episode from the data seed and the file's index in the sorted list."""
    return int(np.random.default_rng([int(data_seed), int(file_index), 48]).integers(0, VT_ITEMS_PER_FILE - 1))


def find_h5(raw_dir: Path) -> list[Path]:
    """The episode files under ``raw_dir`` (any depth), sorted by file name as the reference does."""
    files = [p for p in Path(raw_dir).rglob("*.h5") if p.is_file() and not p.name.startswith(".")]
    return sorted(files, key=lambda p: (p.name, str(p)))


def _h5_dataset(f, key: str, where: str):
    if key not in f:
        raise SchemaError(f"{where}: missing dataset '{key}' (present: {', '.join(sorted(f.keys()))})", key)
    return f[key]


def read_vt_episode(path: Path, file_index: int, data_seed: int) -> dict[str, np.ndarray]:
    """The 49 items of one episode file, as the arrays of the processed layout."""
    import h5py

    where = str(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise SchemaError(f"{where}: not a readable HDF5 file ({e})") from None
    with f:
        raw = {}
        for key, tail in VT_REQUIRED.items():
            ds = _h5_dataset(f, key, where)
            shape = tuple(ds.shape)
            if key == "image" and len(shape) == 4 and shape[1:] == (3, 128, 128):
                tail = (3, 128, 128)  # stored channels-first: transposed below
            if shape != (VT_EPISODE_LEN, *tail):
                want = (VT_EPISODE_LEN, *VT_REQUIRED[key])
                raise SchemaError(f"{where}['{key}']: expected shape {want}, got {shape}", key)
            if not (np.issubdtype(ds.dtype, np.number) or ds.dtype == np.bool_):
                raise SchemaError(f"{where}['{key}']: expected a numeric dataset, got dtype {ds.dtype}", key)
            raw[key] = ds[()]
    steps = np.arange(VT_ITEMS_PER_FILE)
    steps[-1] = vt_random_step(data_seed, file_index)
    image = raw["image"]
    if image.shape[1] == 3:
        image = image.transpose(0, 2, 3, 1)
    if image.dtype != np.uint8:
        if not np.issubdtype(image.dtype, np.integer) or image.min() < 0 or image.max() > 255:
            raise SchemaError(f"{where}['image']: expected uint8 RGB (or integers in [0, 255]), got dtype "
                              f"{image.dtype}", "image")
        image = image.astype(np.uint8)
    force, bad_f = _finite_float(raw["ee_forces_continuous"][steps, -VT_FORCE_READINGS:])
    proprio, bad_p = _finite_float(raw["proprio"][steps, :8])
    target = np.asarray(raw["proprio"][steps + 1, :4], dtype=np.float32)
    if not np.isfinite(target).all():
        s = int(steps[np.argwhere(~np.isfinite(target))[0][0]]) + 1
        raise SchemaError(f"{where}['proprio']: non-finite value at step {s}, used as the ee_yaw_next label",
                          "proprio")
    contact, _ = _finite_float(raw["contact"][steps + 1])
    return {
        "image": np.ascontiguousarray(image[steps]),
        "force": np.tanh(force).astype(np.float32),
        "proprio": proprio,
        "ee_yaw_next": target,
        "contact_next": (contact.sum(axis=1) > 0).astype(np.int64),
        "file": np.full(VT_ITEMS_PER_FILE, file_index, dtype=np.int64),
        "step": steps.astype(np.int64),
        "_nonfinite": np.array([bad_f, bad_p], dtype=np.int64),
    }


_VT_ARRAYS = {  # name -> (shape after N, dtype)
    "image": (VT_IMAGE_SHAPE, np.uint8), "force": ((VT_FORCE_READINGS, 6), np.float32), "proprio": ((8,), np.float32),
    "ee_yaw_next": ((4,), np.float32), "contact_next": ((), np.int64), "file": ((), np.int64),
    "step": ((), np.int64),
}


def preprocess_vt(raw_dir: Path, out_dir: Path, val_fraction: float = 0.1, data_seed: int = VT_FILE_SPLIT_SEED,
                  progress: bool = True, extra_params: dict | None = None) -> dict:
    """Stream the episode files (one at a time, h5py) into memory-mapped arrays of the processed layout."""
    from numpy.lib.format import open_memmap

    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    t0 = time.perf_counter()
    files = find_h5(raw_dir)
    if not files:
        raise SchemaError(f"{raw_dir}: no .h5 episode files found")
    names = [p.name for p in files]
    if len(set(names)) != len(names):
        raise SchemaError(f"{raw_dir}: duplicate episode file names; cannot define the sorted file split")
    split = vt_file_split(names, val_fraction, data_seed)
    with building(out_dir) as partial:
        counts, nonfinite, last = {}, {"ee_forces_continuous": 0, "proprio": 0}, time.monotonic()
        for name, idx in split.items():
            n = len(idx) * VT_ITEMS_PER_FILE
            mm = {k: open_memmap(partial / f"{k}_{name}.npy", mode="w+", dtype=dt, shape=(n, *shape))
                  for k, (shape, dt) in _VT_ARRAYS.items()}
            positives = 0
            for j, fi in enumerate(idx):
                ep = read_vt_episode(files[fi], fi, data_seed)
                rows = slice(j * VT_ITEMS_PER_FILE, (j + 1) * VT_ITEMS_PER_FILE)
                for k in _VT_ARRAYS:
                    mm[k][rows] = ep[k]
                nonfinite["ee_forces_continuous"] += int(ep["_nonfinite"][0])
                nonfinite["proprio"] += int(ep["_nonfinite"][1])
                positives += int(ep["contact_next"].sum())
                if time.monotonic() - last > 10:
                    last = time.monotonic()
                    _log(progress, f"visionandtouch: {name}: {j + 1}/{len(idx)} files")
            for arr in mm.values():
                arr.flush()
            del mm
            counts[name] = {"files": len(idx), "items": n, "contact_positives": positives}
            _log(progress, f"visionandtouch: {name}: {counts[name]}")
        params = {"dataset": "visionandtouch", "kind": "visionandtouch", "preprocess_version": PREPROCESS_VERSION,
                  "data_seed": int(data_seed), "val_fraction": float(val_fraction), "counts": counts,
                  "files": {s: [names[i] for i in idx] for s, idx in split.items()},
                  "nonfinite_replaced": nonfinite,
                  "random_step": {names[i]: vt_random_step(data_seed, i) for i in range(len(names))},
                  "reference_val_split": "test", **(extra_params or {})}
        manifest = finalise(partial, out_dir, params)
    return {**manifest, "seconds": time.perf_counter() - t0}
