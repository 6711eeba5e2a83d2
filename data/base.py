"""The benchmark-independent Lightning data module every dataset builds on, and the pair dataset.

Loaders only index uint8 arrays and yield *raw* batches; everything costly (uint8 -> float, augmentation,
normalisation) happens in ``on_after_batch_transfer``, i.e. on whole batches on the training device.

Raw batches (what the loaders yield, CPU)::

    SSL:   {"raw": [m_1, ..., m_n]}
    probe: {"raw": [m_1, ..., m_n], "y": {task: LongTensor (B,)}}

Transformed batches (after ``on_after_batch_transfer`` / ``transform_batch``, on the device)::

    SSL:   {"views": [v1, v2], "x": x}     v1, v2, x: lists of n tensors (two augmented copies, un-augmented input)
    probe: {"x": [n tensors], "y": {task: tensor}}

Lightning only calls the hook for loaders it drives (fit / validate with ``datamodule=``); probe code that iterates
``probe_dataloader`` itself should use ``probe_batches(split, device)`` or call ``transform_batch`` after moving.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset



def _identity(batch):
    return batch


class PairDataset(Dataset):
    """Pairs of rows of one image array as two modalities, fetched a whole batch at a time.

    ``DataLoader`` hands ``__getitems__`` the batch's indices, so one numpy fancy-index per modality replaces
    per-sample loading and collation.
    """

    def __init__(self, images: np.ndarray, pairs: np.ndarray, labels: dict[str, np.ndarray] | None = None):
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        if len(pairs) and (pairs.min() < 0 or pairs.max() >= len(images)):
            raise ValueError(f"pairs: indices outside [0, {len(images)})")
        for k, v in (labels or {}).items():
            if len(v) != len(pairs):
                raise ValueError(f"labels: {k!r} has {len(v)} rows for {len(pairs)} pairs")
        self.images = images
        self.pairs = pairs
        self.labels = labels

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitems__(self, indices) -> dict:
        idx = np.asarray(indices, dtype=np.int64)
        p = self.pairs[idx]
        batch = {"raw": [torch.from_numpy(np.ascontiguousarray(self.images[p[:, m]])) for m in range(2)]}
        if self.labels is not None:
            batch["y"] = {k: torch.from_numpy(np.ascontiguousarray(v[idx])) for k, v in self.labels.items()}
        return batch

    def __getitem__(self, i: int) -> dict:
        b = self.__getitems__([i])
        return {"raw": [t[0] for t in b["raw"]], **({"y": {k: v[0] for k, v in b["y"].items()}} if "y" in b else {})}


class BenchmarkDataModule(pl.LightningDataModule):
    """Base for every benchmark: SSL loaders (train / val), probe loaders (train / val / test), device transforms.

    Subclasses set ``tasks`` (task -> "multiclass" | "binary" | "multilabel" | "regression") and implement
    ``ssl_dataset(split)``, ``probe_dataset(split)``, ``augment(i, x)`` and ``prepare_input(i, x)`` (i = modality).
    """

    tasks: dict[str, str] = {}
    # What an SSL batch carries: "views" (two augmented copies) and/or "x" (the un-augmented input). The training
    # stage sets it to what the method reads (Cross reads only x, CoMM only the views), so no work is wasted.
    ssl_inputs: tuple[str, ...] = ("views", "x")

    def __init__(self, batch_size: int = 64, num_workers: int = 0, drop_last: bool = False,
                 pin_memory: bool = False):
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: must be a positive integer, got {batch_size!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers: must be a non-negative integer, got {num_workers!r}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.drop_last = bool(drop_last)
        self.pin_memory = bool(pin_memory)

    # --- to implement -------------------------------------------------------------------------------------------
    def ssl_dataset(self, split: str) -> Dataset:
        raise NotImplementedError

    def probe_dataset(self, split: str) -> Dataset:
        raise NotImplementedError

    def augment(self, modality: int, x: torch.Tensor) -> torch.Tensor:
        """One independently augmented view of a raw modality batch (on the device)."""
        raise NotImplementedError

    def prepare_input(self, modality: int, x: torch.Tensor) -> torch.Tensor:
        """The un-augmented model input for a raw modality batch (on the device)."""
        raise NotImplementedError

    # --- loaders ------------------------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, shuffle: bool, drop_last: bool = False) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, drop_last=drop_last,
                          num_workers=self.num_workers, collate_fn=_identity, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        ds = self.ssl_dataset("train")
        # The projection head's BatchNorm cannot train on a last batch of one sample; drop only that case,
        # judged on what one rank sees (a DistributedSampler gives each rank ceil(N / world) samples).
        world = getattr(self.trainer, "world_size", 1) if self.trainer is not None else 1
        per_rank = -(-len(ds) // max(1, world))
        drop_last = self.drop_last or per_rank % self.batch_size == 1
        return self._loader(ds, shuffle=True, drop_last=drop_last)

    def val_dataloader(self):
        ds = self.ssl_dataset("val")
        return self._loader(ds, shuffle=False) if len(ds) else []

    def probe_dataloader(self, split: str) -> DataLoader:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split: must be one of train, val, test; got {split!r}")
        return self._loader(self.probe_dataset(split), shuffle=False)

    # --- device-side transforms ---------------------------------------------------------------------------------
    def transform_batch(self, batch: dict) -> dict:
        if not isinstance(batch, dict) or "raw" not in batch:
            return batch  # already transformed, or not one of ours
        raw = batch["raw"]
        if "y" in batch:
            return {"x": [self.prepare_input(i, m) for i, m in enumerate(raw)], "y": batch["y"]}
        out = {}
        if "views" in self.ssl_inputs:
            out["views"] = [self.augment_view(batch), self.augment_view(batch)]
        if "x" in self.ssl_inputs:
            out["x"] = [self.prepare_input(i, m) for i, m in enumerate(raw)]
        return out

    def augment_view(self, batch: dict) -> list[torch.Tensor]:
        """One augmented view of every modality of a raw batch (each modality augmented on its own)."""
        return [self.augment(i, m) for i, m in enumerate(batch["raw"])]

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        return self.transform_batch(batch)

    def probe_batches(self, split: str, device: torch.device | str = "cpu") -> Iterator[dict]:
        """Transformed probe batches of a split on `device`, for feature extraction outside a Trainer loop."""
        for batch in self.probe_dataloader(split):
            batch = {"raw": [t.to(device, non_blocking=True) for t in batch["raw"]],
                     "y": {k: v.to(device, non_blocking=True) for k, v in batch["y"].items()}}
            yield self.transform_batch(batch)
