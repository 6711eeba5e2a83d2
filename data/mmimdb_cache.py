"""MM-IMDb's frozen-feature cache (``data.feature_cache=True``): the frozen towers' outputs precomputed once per
item into a manifest-backed build directory (see data/mmimdb.py for what is stored and why)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .manifest import building, finalise
from .mmimdb import SPLITS, fixed_plot_choice
from .mmimdb_datamodule import PosterPlotDataset, tokenize


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
    rng = np.random.default_rng([int(seed), 11])
    bs = int(batch_size or dm.batch_size)
    counts = {}
    with building(out_dir) as partial:
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
        manifest = finalise(partial, out_dir, params, counts=counts)
    return {**manifest, "seconds": time.time() - t0}
