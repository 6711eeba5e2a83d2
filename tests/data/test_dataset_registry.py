"""Every registered dataset implements the one interface, and every setting it reads is one the pipeline's edge
provides (a misspelt field would silently keep its default)."""
import dataclasses

import pytest

from infmask.config import DataConfig, benchmarks, benchmark_spec, build_config
from infmask.data.interface import DatasetStages
from infmask.data.registry import DATASETS, UnknownDatasetError, dataset_for
from infmask.stages.data_stages import settings_for

EDGE_EXTRAS = {"modalities", "probe_protocol", "accelerator", "precision", "base_url"}


@pytest.mark.parametrize("name", list(DATASETS))
def test_each_dataset_has_typed_stages_reading_only_provided_settings(name):
    stages = DATASETS[name].stages
    assert isinstance(stages, DatasetStages) and dataclasses.is_dataclass(stages.settings)
    provided = {f.name for f in dataclasses.fields(DataConfig)} | EDGE_EXTRAS
    unknown = {f.name for f in dataclasses.fields(stages.settings)} - provided
    assert not unknown, f"{name}: settings {sorted(unknown)} are filled by nobody"


@pytest.mark.parametrize("benchmark", benchmarks())
def test_every_benchmark_names_a_registered_dataset_and_builds_its_settings(benchmark):
    entry = dataset_for(benchmark_spec(benchmark)["dataset"])
    cfg = build_config(benchmark, benchmark_spec(benchmark)["methods"][0], "smoke")
    settings = settings_for(cfg, entry)
    assert isinstance(settings, entry.stages.settings)
    if hasattr(settings, "data_seed"):
        assert settings.data_seed == cfg.data.data_seed


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UnknownDatasetError, match="valid datasets and benchmarks: .*trifeatures"):
        dataset_for("nosuch")
