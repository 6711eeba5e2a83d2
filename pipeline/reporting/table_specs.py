"""The paper's tables as data: which benchmark, task and metric feeds each column, which runs each row family
reads, and how the published rows are named."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pandas as pd

from infmask.models.method_registry import display_names

from .selection import metric_goal, metric_scale


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    task: str | None            # store task; None = 'all' or the benchmark's only task
    metric: str                 # store metric name (test split)
    paper_benchmark: str        # paper_tables.csv `benchmark`
    paper_metric: str           # paper_tables.csv `metric`
    biased: bool | None = None  # Trifeatures: which runs feed the column
    decimals: int = 1
    average_of: tuple[str, ...] = ()   # derived column: plain mean of these columns' means
    chance: float | None = None        # the score of a guess (balanced accuracy: 100 / classes), drawn in figures

    @property
    def scale(self) -> float:
        return metric_scale(self.metric)

    @property
    def goal(self) -> str:
        return metric_goal(self.metric)

    @property
    def arrow(self) -> str:
        return "↓" if self.goal == "min" else "↑"


@dataclass(frozen=True)
class Variant:
    """One family of rows of a table: the suffix shown after the model name and the benchmark feeding each column."""
    suffix: str
    benchmarks: tuple[tuple[str, str], ...]   # (column key, benchmark config name)

    def benchmark(self, key: str) -> str | None:
        return dict(self.benchmarks).get(key)


@dataclass(frozen=True)
class TableSpec:
    name: str
    paper_table: str
    title: str
    columns: tuple[Column, ...]
    variants: tuple[Variant, ...]
    model_names: tuple[tuple[str, str], ...]
    paper_suffix: Callable[[pd.Series], str] = lambda row: ""
    note: str = ""

    def model_name(self, method: str) -> str:
        return dict(self.model_names).get(method, method)

    @property
    def benchmarks(self) -> list[str]:
        return sorted({b for v in self.variants for _, b in v.benchmarks})


BASE_NAMES = display_names()   # every registered method, in registry order
_ACC = "linear_probe_acc_pct"


def _n_mod_suffix(row) -> str:
    return f"({len(str(row['modalities']).split('+'))})"


TABLES: dict[str, TableSpec] = {
    "trifeatures": TableSpec(
        name="trifeatures", paper_table="trifeatures",
        title="Trifeatures: linear-probe balanced accuracy (%)",
        columns=(
            Column("redundancy", "Redundancy (shape)", "share", "acc1", "trifeatures_redundancy_shape", _ACC, False,
                   chance=10.0),
            Column("uniqueness", "Uniqueness (texture)", "unique1", "acc1", "trifeatures_uniqueness_texture", _ACC,
                   False, chance=10.0),
            Column("synergy", "Synergy (colour+texture)", "synergy", "acc1", "trifeatures_synergy_color_texture", _ACC,
                   True, chance=50.0),
        ),
        variants=(Variant("", (("redundancy", "trifeatures"), ("uniqueness", "trifeatures"),
                               ("synergy", "trifeatures"))),),
        model_names=BASE_NAMES,
        note="Redundancy and uniqueness come from unbiased runs (data.biased=False), synergy from biased runs "
             "(data.biased=True); each picks its own config by validation acc1."),
    "multibench": TableSpec(
        name="multibench", paper_table="multibench_2mod",
        title="MultiBench, 2 modalities: linear probe (V&T: MSE ×10⁻⁴; others: balanced accuracy %)",
        columns=(
            Column("vt_mse", "V&T EE MSE", "ee_yaw_next", "mse", "visionandtouch_ee_regression",
                   "linear_probe_mse_x1e-4", decimals=2),
            Column("mimic", "MIMIC", None, "acc1", "mimic", _ACC),
            Column("mosi", "MOSI", None, "acc1", "mosi", _ACC),
            Column("humor", "UR-FUNNY", None, "acc1", "humor", _ACC),
            Column("sarcasm", "MUSTARD", None, "acc1", "sarcasm", _ACC),
            Column("avg", "Classification average", None, "acc1", "classification_average",
                   "linear_probe_acc_pct_avg", decimals=2, average_of=("mimic", "mosi", "humor", "sarcasm")),
        ),
        variants=(Variant("", (("vt_mse", "visionandtouch"), ("mimic", "mimic"), ("mosi", "mosi"),
                               ("humor", "humor"), ("sarcasm", "sarcasm"))),),
        model_names=BASE_NAMES,
        note="Classification average = plain mean of the four classification means (only when all four exist)."),
    "multibench3": TableSpec(
        name="multibench3", paper_table="multibench_3mod",
        title="MultiBench, 2 vs 3 modalities: linear-probe balanced accuracy (%)",
        columns=(
            Column("vt_cp", "V&T CP", None, "acc1", "visionandtouch-bin_contact", _ACC),
            Column("humor", "UR-FUNNY", None, "acc1", "humor", _ACC),
        ),
        variants=(Variant("(2)", (("vt_cp", "visionandtouch_bin"), ("humor", "humor"))),
                  Variant("(3)", (("vt_cp", "visionandtouch_bin_3mod"), ("humor", "humor_3mod")))),
        model_names=BASE_NAMES,
        paper_suffix=_n_mod_suffix,
        note="(2) rows: 2-modality benchmarks visionandtouch_bin / humor; (3) rows: visionandtouch_bin_3mod / "
             "humor_3mod."),
    "mmimdb": TableSpec(
        name="mmimdb", paper_table="mmimdb",
        title="MM-IMDb: linear-probe F1 (%)",
        columns=(
            Column("weighted_f1", "weighted-F1", None, "f1_weighted", "mmimdb", "weighted_f1_pct", decimals=2),
            Column("macro_f1", "macro-F1", None, "f1_mean", "mmimdb", "macro_f1_pct", decimals=2),
        ),
        variants=(Variant("(V+L)", (("weighted_f1", "mmimdb"), ("macro_f1", "mmimdb"))),),
        model_names=(("infmasking", "InfMasking (CLIP backbone)"), ("comm", "CoMM (CLIP backbone)"),
                     ("cross", "Cross (CLIP backbone)"), ("cross_self", "Cross+Self (CLIP backbone)"),
                     ("cmc", "CMC (CLIP backbone)")),
        paper_suffix=lambda row: f"({row['modalities']})",
        note="Config chosen by validation macro-F1 (f1_mean). Rows marked [cached features] trained the fusion on "
             "precomputed frozen-tower features (data.feature_cache=True)."),
}
TABLE_NAMES = tuple(TABLES)
