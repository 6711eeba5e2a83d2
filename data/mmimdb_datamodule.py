"""MM-IMDb's datasets (what the loaders yield; see data/base.py for the batch contract), device transforms and the
Lightning data module, online (posters and token ids) or over the frozen-feature cache (data/mmimdb_cache.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from .augment import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, ImageSSLAugment, to_float_nchw
from .base import BenchmarkDataModule
from .mmimdb import SPLITS, fixed_plot_choice, load_index, open_poster, poster_canvas, select_items
from .text_masking import TokenMasker


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
        return self._normalize(self.ssl_ops(to_float_nchw(x)))

    @torch.no_grad()
    def probe(self, x: torch.Tensor) -> torch.Tensor:
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
