"""One registry entry per dataset of the paper: what it is, where it comes from, and how it is prepared.

Kinds:
  generated     produced here, deterministically from a seed (Trifeatures)
  public        downloaded anonymously from the URLs below
  credentialed  needs an access agreement; the user places the file, we verify it (MIMIC-III)

Published checksums are unknown for the public files, so `sha256` is None and the first verified
download is recorded in the workspace (trust on first use) and checked afterwards.

Each entry's `stages` loads its `DatasetStages` (data/interface.py): download, preprocess and the data module, in
plain arguments. The loaders import the stage modules only when called, so that `infmask download --list` stays
fast (they pull in numpy, torch and Lightning).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .interface import DatasetStages

KINDS = ("generated", "public", "credentialed")


@dataclass(frozen=True)
class RemoteFile:
    name: str                      # file name inside raw/<dataset>/
    url: str | None                # None for credentialed files placed by the user
    sha256: str | None = None      # None: trust on first use
    size: int | None = None        # bytes, where known
    approx_size: str = ""          # human description where the exact size is unknown
    extract: bool = False          # archive to unpack into raw/<dataset>/


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    kind: str
    description: str
    benchmarks: tuple[str, ...]
    load_stages: Callable[[], DatasetStages]
    files: tuple[RemoteFile, ...] = field(default_factory=tuple)
    instructions: str = ""         # shown for credentialed data

    @property
    def stages(self) -> DatasetStages:
        return self.load_stages()


def _drive(file_id: str) -> str:
    return f"https://drive.google.com/uc?export=download&id={file_id}"


def _trifeatures() -> DatasetStages:
    from .trifeatures_stages import STAGES

    return STAGES


def _multibench() -> DatasetStages:
    from .multibench_stages import STAGES

    return STAGES


def _mmimdb() -> DatasetStages:
    from .mmimdb_stages import STAGES

    return STAGES


DATASETS: dict[str, DatasetEntry] = {
    "trifeatures": DatasetEntry(
        name="trifeatures", kind="generated",
        description="Synthetic shapes x textures x colours (Hermann & Lampinen 2020); 2400 train + 200 test images",
        benchmarks=("trifeatures",),
        load_stages=_trifeatures),
    "mosi": DatasetEntry(
        name="mosi", kind="public",
        description="CMU-MOSI sentiment, MultiBench processed pickle (vision 20, audio 5, text 300; 50 steps)",
        benchmarks=("mosi",),
        files=(RemoteFile("mosi_data.pkl", _drive("1_XdzdW8UNG1TTS6QcX10uhoS6N11OBit"), approx_size="unknown"),),
        load_stages=_multibench),
    "humor": DatasetEntry(
        name="humor", kind="public",
        description="UR-FUNNY humour detection, MultiBench processed pickle (vision 371, audio 81, text 300)",
        benchmarks=("humor", "humor_3mod"),
        files=(RemoteFile("humor.pkl", _drive("1L5slPmYyhEVtwGyM1kgcFMjeBpXLZGT0"), approx_size="unknown"),),
        load_stages=_multibench),
    "sarcasm": DatasetEntry(
        name="sarcasm", kind="public",
        description="MUStARD sarcasm detection, MultiBench processed pickle (vision 371, audio 81, text 300)",
        benchmarks=("sarcasm",),
        files=(RemoteFile("sarcasm.pkl", _drive("1EMBUmUL5B0PTncGx3L-sBElGOmjFBR_h"), approx_size="unknown"),),
        load_stages=_multibench),
    "mimic": DatasetEntry(
        name="mimic", kind="credentialed",
        description="MIMIC-III ICU records, MultiBench preprocessed im.pk (static 5 + 24x12 time series)",
        benchmarks=("mimic",),
        files=(RemoteFile("im.pk", None, approx_size="unknown"),),
        instructions=(
            "MIMIC-III requires credentialed access. 1) Complete PhysioNet credentialing and sign the MIMIC-III data "
            "use agreement at https://physionet.org/content/mimiciii/ (see https://mimic.mit.edu). 2) Ask the "
            "MultiBench maintainers for the preprocessed file im.pk (route described in MultiBench's README, "
            "github.com/pliang279/MultiBench). 3) Place it at {path} and rerun `infmask download mimic` to verify it."),
        load_stages=_multibench),
    "visionandtouch": DatasetEntry(
        name="visionandtouch", kind="public",
        description="Vision&Touch robot manipulation (Lee et al. 2019): ~3000 HDF5 episodes (image, force, proprio, contact)",
        benchmarks=("visionandtouch", "visionandtouch_bin", "visionandtouch_bin_3mod"),
        files=(RemoteFile("triangle_real_data.zip", "http://downloads.cs.stanford.edu/juno/triangle_real_data.zip",
                          approx_size="about 11 GB", extract=True),),
        load_stages=_multibench),
    "mmimdb": DatasetEntry(
        name="mmimdb", kind="public",
        description="MM-IMDb posters + plots, 23 genres multilabel (Arevalo et al. 2017); 15552/2608/7799 split",
        benchmarks=("mmimdb",),
        files=(RemoteFile("mmimdb.tar.gz", "https://archive.org/download/mmimdb/mmimdb.tar.gz",
                          approx_size="about 8 GB", extract=True),),
        load_stages=_mmimdb),
}


class UnknownDatasetError(ValueError):
    pass


def dataset_for(name: str) -> DatasetEntry:
    """Accept a dataset name or a benchmark name; raise UnknownDatasetError listing the valid names."""
    if name in DATASETS:
        return DATASETS[name]
    for entry in DATASETS.values():
        if name in entry.benchmarks:
            return entry
    valid = sorted(set(DATASETS) | {b for e in DATASETS.values() for b in e.benchmarks})
    raise UnknownDatasetError(f"unknown dataset '{name}'; valid datasets and benchmarks: {', '.join(valid)}")
