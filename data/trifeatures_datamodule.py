"""Trifeatures' Lightning data module: bimodal image pairs from a ``trifeatures.preprocess`` directory."""
from __future__ import annotations

from pathlib import Path

import torch

from . import trifeatures as tf
from .augment import ImageProbeTransform, ImageSSLAugment
from .base import BenchmarkDataModule, PairDataset


class TrifeaturesDataModule(BenchmarkDataModule):
    """Bimodal Trifeatures from a ``trifeatures.preprocess`` directory.

    SSL batches come from the biased or unbiased pairs of the split (SSL val = the val split, carved from train
    combinations); probe batches always use the unbiased pairs, with labels share / unique1 / unique2 / synergy.
    """

    tasks = {"share": "multiclass", "unique1": "multiclass", "unique2": "multiclass", "synergy": "binary"}
    num_classes = {"share": 10, "unique1": 10, "unique2": 10, "synergy": 2}
    modalities = ("image1", "image2")

    def __init__(self, processed_dir: Path, biased: bool = False, batch_size: int = 64, num_workers: int = 0,
                 image_size: int = 224, crop_scale: tuple[float, float] = (0.08, 1.0),
                 blur_sigma: tuple[float, float] = (0.1, 2.0),
                 probe_random_crop: bool = False, drop_last: bool = False, pin_memory: bool = False,
                 check_integrity: bool = True):
        super().__init__(batch_size=batch_size, num_workers=num_workers, drop_last=drop_last, pin_memory=pin_memory)
        self.processed_dir = Path(processed_dir)
        self.biased = bool(biased)
        self.image_size = int(image_size)
        self.check_integrity = bool(check_integrity)
        self.ssl_augment = ImageSSLAugment(self.image_size, scale=tuple(crop_scale), blur_sigma=tuple(blur_sigma))
        self.probe_transform = ImageProbeTransform(self.image_size, probe_random_crop=probe_random_crop)
        self._splits: dict[str, dict] | None = None

    def _load(self) -> dict[str, dict]:
        if self._splits is None:
            if self.check_integrity:
                problems = tf.verify(self.processed_dir)
                if problems:
                    raise ValueError(f"processed_dir: {self.processed_dir} is not a valid preprocessed Trifeatures"
                                     f" set (rebuild it): {'; '.join(problems[:3])}")
            self._splits = {s: tf.load_processed(self.processed_dir, s) for s in tf.SPLITS}
        return self._splits

    def setup(self, stage: str | None = None) -> None:
        self._load()

    def ssl_dataset(self, split: str) -> PairDataset:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split: must be one of train, val, test; got {split!r}")
        d = self._load()[split]
        return PairDataset(d["images"], d["pairs_biased" if self.biased else "pairs_unbiased"])

    def probe_dataset(self, split: str) -> PairDataset:
        d = self._load()[split]
        labels = {task: d["probe_labels"][:, k] for k, task in enumerate(tf.PROBE_TASKS)}
        return PairDataset(d["images"], d["pairs_unbiased"], labels)

    def augment(self, modality: int, x: torch.Tensor) -> torch.Tensor:
        return self.ssl_augment(x)

    def prepare_input(self, modality: int, x: torch.Tensor) -> torch.Tensor:
        return self.probe_transform(x)
