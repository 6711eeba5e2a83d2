"""Lightning data modules of the MultiBench benchmarks over ``data.multibench`` arrays.

Loaders fetch whole batches by fancy-indexing memory-mapped arrays (``__getitems__``); augmentation runs in
``on_after_batch_transfer`` on the training device, like Trifeatures.

Augmentation spec (``augmentations``), as in the reference:

* a string, e.g. ``"drop+noise"``: one pipeline over all modalities; each ``+`` step is applied with p = 0.5 on a
  per-sample coin **shared by the modalities** (``drop`` still draws its own fraction and rows per modality,
  the reference);
* a list, e.g. ``["simclr", "noise+drop"]``: one pipeline per modality, independent coins;
* steps: ``noise`` (x + N(0, 0.1²)), ``drop`` (zero round(f·T) rows, f ~ U(0, 0.8)), ``simclr`` (image views,
  always applied).

Affect sequences have per-sample lengths. The batch is padded at the end to its longest sample (the reference's
collate) by slicing the stored front-aligned arrays; ``noise`` and ``drop`` act on each sample's own rows only,
so padding stays zero and drop fractions count real rows, as when the reference augments before padding. No
padding mask is produced (the reference has none either).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from . import multibench as mb
from .augment import ImageProbeTransform, ImageSSLAugment, drop, noise
from .base import BenchmarkDataModule

OPS = ("noise", "drop", "simclr")
P_APPLY = 0.5
NOISE_STD = 0.1
DROP_MAX_FRAC = 0.8


def parse_augmentations(spec, n_modalities: int) -> tuple[bool, list[list[str]]]:
    """(joint, pipelines): a string gives one joint pipeline, a list one pipeline per modality."""
    def ops(text, where):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"augmentations: {where} must be a non-empty string like 'drop+noise', got {text!r}")
        out = [s.strip() for s in text.split("+")]
        bad = [s for s in out if s not in OPS]
        if bad:
            raise ValueError(f"augmentations: unknown step '{bad[0]}' in {where}; valid steps: {', '.join(OPS)}")
        return out

    if isinstance(spec, str):
        return True, [ops(spec, "the joint pipeline")]
    if isinstance(spec, (list, tuple)):
        if len(spec) != n_modalities:
            raise ValueError(f"augmentations: {len(spec)} pipelines for {n_modalities} modalities")
        return False, [ops(s, f"pipeline {i}") for i, s in enumerate(spec)]
    raise ValueError(f"augmentations: expected a string or a list of strings, got {spec!r}")


def _valid_rows(lengths: torch.Tensor, t: int) -> torch.Tensor:
    return torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]


def drop_rows(x: torch.Tensor, lengths: torch.Tensor, coin: torch.Tensor, max_frac: float = DROP_MAX_FRAC
              ) -> torch.Tensor:
    """``augment.drop`` for padded sequences: round(f·length_i) of sample i's own rows are zeroed."""
    b, t = x.shape[:2]
    valid = _valid_rows(lengths, t)
    f = torch.rand(b, device=x.device) * max_frac
    k = torch.round(f * lengths.to(f.dtype)).long() * coin.long()
    scores = torch.rand(b, t, device=x.device).masked_fill(~valid, 2.0)  # padding ranks last
    ranks = scores.argsort(dim=1).argsort(dim=1)
    dropped = ranks < k[:, None]
    return x.masked_fill(dropped.view(b, t, *([1] * (x.ndim - 2))), 0.0)


class _MemmapRef:
    """A picklable stand-in for a read-only memmap: loader workers started with spawn/forkserver reopen the file
    instead of receiving a copy of its contents (a pickled memmap is a full in-memory array)."""

    def __init__(self, arr: np.memmap):
        self.filename, self.offset, self.dtype, self.shape = arr.filename, arr.offset, arr.dtype, arr.shape
        self.order = "F" if arr.flags.f_contiguous and not arr.flags.c_contiguous else "C"

    def open(self) -> np.memmap:
        return np.memmap(self.filename, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape,
                         order=self.order)


def _pack(a):
    return _MemmapRef(a) if isinstance(a, np.memmap) and a.filename and a.base is not None else a


def _unpack(a):
    return a.open() if isinstance(a, _MemmapRef) else a


class ArrayDataset(Dataset):
    """Rows ``index`` of named arrays, a batch at a time: {"raw": [modalities], ("lengths"), ("y": {task: ...})}.

    ``lengths`` (affect): the batch is cut to its longest sample and the lengths travel with it.
    """

    def __init__(self, arrays: dict[str, np.ndarray], keys: list[str], index: np.ndarray,
                 labels: dict[str, str] | None = None, lengths: str | None = None):
        missing = [k for k in [*keys, *(labels or {}).values(), *([lengths] if lengths else [])] if k not in arrays]
        if missing:
            raise ValueError(f"keys: no array '{missing[0]}' (have {', '.join(sorted(arrays))})")
        self.arrays, self.keys, self.labels, self.lengths = arrays, list(keys), labels, lengths
        self.index = np.asarray(index, dtype=np.int64)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["arrays"] = {k: _pack(v) for k, v in self.arrays.items()}
        return state

    def __setstate__(self, state: dict) -> None:
        state["arrays"] = {k: _unpack(v) for k, v in state["arrays"].items()}
        self.__dict__.update(state)

    def __len__(self) -> int:
        return len(self.index)

    def __getitems__(self, indices) -> dict:
        rows = self.index[np.asarray(indices, dtype=np.int64)]
        order = np.argsort(rows, kind="stable")      # memmaps read fastest in increasing order
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))

        def take(name):
            return np.ascontiguousarray(self.arrays[name][rows[order]][inverse])

        batch = {}
        if self.lengths:
            lengths = take(self.lengths)
            t = int(lengths.max()) if len(lengths) else 1
            batch["raw"] = [torch.from_numpy(np.ascontiguousarray(take(k)[:, :t])) for k in self.keys]
            batch["lengths"] = torch.from_numpy(lengths)
        else:
            batch["raw"] = [torch.from_numpy(take(k)) for k in self.keys]
        if self.labels is not None:
            batch["y"] = {task: torch.from_numpy(take(name)) for task, name in self.labels.items()}
        return batch

    def __getitem__(self, i: int) -> dict:
        b = self.__getitems__([i])
        out = {"raw": [t[0] for t in b["raw"]]}
        if "lengths" in b:
            out["lengths"] = b["lengths"][0]
        if "y" in b:
            out["y"] = {k: v[0] for k, v in b["y"].items()}
        return out


def subset_index(n: int, max_items, data_seed: int) -> np.ndarray:
    """All rows, or a seeded sample of ``max_items`` of them in increasing order (smoke/cpu presets)."""
    if max_items is None or int(max_items) >= n:
        return np.arange(n, dtype=np.int64)
    if int(max_items) < 1:
        raise ValueError(f"max_items: must be a positive integer or None, got {max_items!r}")
    return np.sort(np.random.default_rng(data_seed).choice(n, int(max_items), replace=False)).astype(np.int64)


class MultiBenchDataModule(BenchmarkDataModule):
    """Shared machinery: split loading, subsetting, augmentation pipelines, probe inputs.

    Subclasses set ``image_keys`` (modalities that are uint8 images), ``task_arrays`` (task -> array name) and
    ``tasks``; ``lengths_key`` names the per-sample length array of padded sequences.
    """

    image_keys: tuple[str, ...] = ()
    lengths_key: str | None = None
    task_arrays: dict[str, str] = {}
    valid_keys: tuple[str, ...] = ()

    def __init__(self, processed_dir: Path, keys: list[str], augmentations, batch_size: int = 64,
                 num_workers: int = 0, max_items=None, data_seed: int = 42, image_size: int = 128,
                 protocol: str = "clean", check_integrity: bool = True, drop_last: bool = False,
                 pin_memory: bool = False):
        super().__init__(batch_size=batch_size, num_workers=num_workers, drop_last=drop_last, pin_memory=pin_memory)
        keys = list(keys or [])
        bad = [k for k in keys if k not in self.valid_keys]
        if len(keys) < 2 or bad:
            raise ValueError(f"keys: need at least 2 of {', '.join(self.valid_keys)}, got {keys!r}")
        if protocol not in ("clean", "reference"):
            raise ValueError(f"protocol: must be 'clean' or 'reference', got {protocol!r}")
        self.processed_dir = Path(processed_dir)
        self.keys = keys
        self.joint, self.pipelines = parse_augmentations(augmentations, len(keys))
        for i, ops in enumerate(self.pipelines if not self.joint else self.pipelines * len(keys)):
            if "simclr" in ops and keys[i] not in self.image_keys:
                raise ValueError(f"augmentations: 'simclr' applies to image modalities only; modality "
                                 f"'{keys[i]}' has {'+'.join(ops)}")
        self.max_items = max_items
        self.data_seed = int(data_seed)
        self.image_size = int(image_size)
        self.protocol = protocol
        self.check_integrity = bool(check_integrity)
        self.ssl_image = ImageSSLAugment(self.image_size)
        self.probe_image = ImageProbeTransform(self.image_size)
        self._splits: dict[str, dict] | None = None

    # --- data ---------------------------------------------------------------------------------------------------
    def _load(self) -> dict[str, dict]:
        if self._splits is None:
            if self.check_integrity:
                problems = mb.verify(self.processed_dir, deep=False)
                if problems:
                    raise ValueError(f"processed_dir: {self.processed_dir} is not a complete preprocessed set "
                                     f"(rebuild it with `infmask preprocess --force`): {'; '.join(problems[:3])}")
            self._splits = {s: mb.load_split(self.processed_dir, s) for s in mb.SPLITS}
        return self._splits

    def setup(self, stage: str | None = None) -> None:
        self._load()

    def split_rows(self, split: str) -> tuple[dict, np.ndarray]:
        if split not in mb.SPLITS:
            raise ValueError(f"split: must be one of train, val, test; got {split!r}")
        arrays = self._load()[split]
        n = len(next(iter(arrays.values())))
        return arrays, subset_index(n, self.max_items, self.data_seed)

    def ssl_dataset(self, split: str) -> Dataset:
        arrays, index = self.split_rows(split)
        return ArrayDataset(arrays, self.keys, index, lengths=self.lengths_key)

    def probe_dataset(self, split: str) -> Dataset:
        arrays, index = self.split_rows(split)
        return ArrayDataset(arrays, self.keys, index, labels=self.task_arrays, lengths=self.lengths_key)

    # --- transforms ---------------------------------------------------------------------------------------------
    def prepare_input(self, modality: int, x: torch.Tensor) -> torch.Tensor:
        if self.keys[modality] in self.image_keys:
            return self.probe_image(x)
        return x.float()

    def _apply(self, modality: int, ops: list[str], x: torch.Tensor, lengths, coins) -> torch.Tensor:
        if self.keys[modality] in self.image_keys:
            if "simclr" in ops:
                x = self.ssl_image(x)
            else:
                x = self.probe_image(x)
        else:
            x = x.float()
        for step, op in enumerate(ops):
            coin = coins[step] if coins is not None else torch.rand(x.shape[0], device=x.device) < P_APPLY
            if op == "noise":
                x = noise(x, std=NOISE_STD, coin=coin)
                if lengths is not None:
                    x = x * _valid_rows(lengths, x.shape[1]).view(*x.shape[:2], *([1] * (x.ndim - 2))).to(x.dtype)
            elif op == "drop":
                x = drop(x, max_frac=DROP_MAX_FRAC, coin=coin) if lengths is None else drop_rows(x, lengths, coin)
        return x

    def augment(self, modality: int, x: torch.Tensor) -> torch.Tensor:
        """One view of one modality with independent coins (the per-modality pipeline)."""
        ops = self.pipelines[0] if self.joint else self.pipelines[modality]
        return self._apply(modality, ops, x, None, None)

    def augment_all(self, raw: list[torch.Tensor], lengths: torch.Tensor | None = None) -> list[torch.Tensor]:
        """One view of every modality; a joint pipeline draws each step's coin once per sample for all of them."""
        if self.joint:
            ops = self.pipelines[0]
            b = raw[0].shape[0]
            coins = [torch.rand(b, device=raw[0].device) < P_APPLY for _ in ops]
            return [self._apply(i, ops, m, lengths, coins) for i, m in enumerate(raw)]
        return [self._apply(i, self.pipelines[i], m, lengths, None) for i, m in enumerate(raw)]

    def augment_view(self, batch: dict) -> list[torch.Tensor]:
        return self.augment_all(batch["raw"], batch.get("lengths"))


class AffectDataModule(MultiBenchDataModule):
    """MOSI / UR-FUNNY / MUSTARD: keys from vision, text, audio (config order); task ``label`` (binary, > 0)."""

    valid_keys = mb.AFFECT_MODALITIES
    lengths_key = "length"
    tasks = {"label": "binary"}
    task_arrays = {"label": "label"}

    def __init__(self, processed_dir: Path, keys=("vision", "text"), augmentations="drop+noise", **kw):
        super().__init__(processed_dir, list(keys), augmentations, **kw)


class MimicDataModule(MultiBenchDataModule):
    """MIMIC-III: static (B, 5) and timeseries (B, 24, 12); task ``icd9_<k>`` = y_icd9[:, k] (binary)."""

    valid_keys = ("static", "timeseries")

    def __init__(self, processed_dir: Path, keys=("static", "timeseries"), augmentations=("noise", "drop+noise"),
                 task: int = 7, **kw):
        if isinstance(task, bool) or not isinstance(task, (int, np.integer)) or not 0 <= task < mb.MIMIC_N_ICD9:
            raise ValueError(f"task: must be an ICD-9 column in [0, {mb.MIMIC_N_ICD9}) (the paper uses 7), "
                             f"got {task!r}")
        self.task = int(task)
        self.tasks = {f"icd9_{self.task}": "binary"}
        self.task_arrays = {f"icd9_{self.task}": f"icd9_{self.task}"}
        super().__init__(processed_dir, list(keys), list(augmentations) if not isinstance(augmentations, str)
                         else augmentations, **kw)

    def _load(self):
        first = self._splits is None
        splits = super()._load()
        if first:
            for arrays in splits.values():
                arrays[f"icd9_{self.task}"] = np.ascontiguousarray(arrays["y_icd9"][:, self.task])
        return splits


class VisionTouchDataModule(MultiBenchDataModule):
    """Vision&Touch: image (uint8) + force / proprio; task ``ee_yaw_next`` (regression) or ``contact_next``.

    Clean protocol: train / val (train files held out) / test. Reference protocol: train = train + val files and
    val = test, as the reference's loaders [a reference oddity]; ``reference_val_split`` = "test" either way.
    """

    valid_keys = ("image", "force", "proprio")
    image_keys = ("image",)
    reference_val_split = "test"
    TASKS = {"ee_yaw_next": "regression", "contact_next": "binary"}

    def __init__(self, processed_dir: Path, keys=("image", "force"), augmentations=("simclr", "noise+drop"),
                 task: str = "ee_yaw_next", **kw):
        if task not in self.TASKS:
            raise ValueError(f"task: must be one of {', '.join(self.TASKS)}, got {task!r}")
        self.tasks = {task: self.TASKS[task]}
        self.task_arrays = {task: task}
        super().__init__(processed_dir, list(keys), list(augmentations) if not isinstance(augmentations, str)
                         else augmentations, **kw)

    def _load(self):
        first = self._splits is None
        splits = super()._load()
        if first and self.protocol == "reference":
            # index the two memmaps through a view instead of concatenating them (images are ~7 GB)
            merged = {k: _Concat(splits["train"][k], splits["val"][k]) for k in splits["train"]}
            splits["train"], splits["val"] = merged, splits["test"]
        return splits


class _Concat:
    """Row-indexable concatenation of two arrays without copying them (a memmap stays a memmap)."""

    def __init__(self, a, b):
        self.a, self.b = a, b
        self.shape = (len(a) + len(b), *a.shape[1:])
        self.dtype = a.dtype

    def __getstate__(self) -> dict:
        return {**self.__dict__, "a": _pack(self.a), "b": _pack(self.b)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, a=_unpack(state["a"]), b=_unpack(state["b"]))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows):
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        first = rows < len(self.a)
        out[first] = self.a[rows[first]]
        out[~first] = self.b[rows[~first] - len(self.a)]
        return out
