"""The one interface every dataset implements, in plain arguments: where its files live (``DataPaths``), what a run
asks of it (a frozen settings dataclass of its own), and three stages (download, preprocess, data module).

The pipeline turns its workspace and config into these arguments at its edge (``infmask.stages.data_stages``);
nothing here knows about either. A stage refuses bad input the user can fix (missing credentials, a file that is not
the dataset, weights that do not fit) with ``DatasetError``, which the command line reports in one line (exit 2).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping


class DatasetError(ValueError):
    """Bad input the user can fix; the message says what and how."""


@dataclass(frozen=True)
class DataPaths:
    """Where one dataset's files live."""

    raw: Path          # downloaded or generated files: raw/<dataset>/
    processed: Path    # preprocessed builds: processed/<dataset>/ (each build in its own subfolder)
    checksums: Path    # the trust-on-first-use record shared by every download (data/trust_store.py)


@dataclass(frozen=True)
class DatasetStages:
    """A dataset's three stages and the settings type they read.

    ``download(entry, paths, *, data_seed, force, base_url, quiet) -> Path``: raw files in ``paths.raw``; idempotent.
    ``preprocess(entry, paths, settings, *, force, base_url) -> Path``: the build a run trains on; idempotent.
    ``processed_dir(paths, settings) -> Path``: where that build lives (runs that share it share one folder).
    ``datamodule(entry, paths, settings)``: the Lightning data module over the build.

    ``builds_by_processed_dir``: whether runs with the same ``processed_dir`` share everything ``preprocess`` makes
    (then a process prepares it once for all of them); False where preprocess also makes settings-specific things
    (MM-IMDb's feature cache).
    """

    settings: type
    download: Callable[..., Path]
    preprocess: Callable[..., Path]
    processed_dir: Callable[..., Path]
    datamodule: Callable[..., Any]
    builds_by_processed_dir: bool = True


def settings_from(cls: type, values: Mapping[str, Any]):
    """An instance of the settings dataclass ``cls`` from ``values``, taking each field by its name (others are
    ignored, absent ones keep their defaults)."""
    return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})
