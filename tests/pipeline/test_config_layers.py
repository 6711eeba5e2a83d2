"""A preset's conditional (`when`) layer: which runs it reaches, where it sits among the layers, and bad entries."""
import pytest
import yaml

import infmask.config as config_module
from infmask.config import ConfigError, build_config
from infmask.config_sources import sources

UNBIASED_INFMASKING = {"if": {"method": "infmasking", "data.biased": False},
                       "set": {"model": {"temperature": 0.3, "num_mask": 3}}}


@pytest.fixture
def smoke_when(tmp_path, monkeypatch):
    """Write trifeatures.yaml with the smoke preset's `when` set to the given entries; returns the writer."""
    spec = yaml.safe_load((config_module.CONFIG_DIR / "trifeatures.yaml").read_text())
    monkeypatch.setattr(config_module, "CONFIG_DIR", tmp_path)

    def write(entries):
        spec["presets"]["smoke"]["when"] = entries
        (tmp_path / "trifeatures.yaml").write_text(yaml.safe_dump(spec))
    return write


def test_a_when_entry_reaches_only_the_runs_it_names(smoke_when):
    smoke_when([])
    plain = {(m, b): build_config("trifeatures", m, "smoke", overrides=[f"data.biased={b}"])
             for m in ("infmasking", "comm") for b in (False, True)}
    smoke_when([UNBIASED_INFMASKING])
    cfg = build_config("trifeatures", "infmasking", "smoke", overrides=["data.biased=False"])
    assert (cfg.model.temperature, cfg.model.num_mask) == (0.3, 3)
    # every other run resolves exactly as without the entry, so its run id stays
    for (m, b), before in plain.items():
        if (m, b) != ("infmasking", False):
            assert build_config("trifeatures", m, "smoke", overrides=[f"data.biased={b}"]).run_id == before.run_id


def test_the_condition_sees_the_run_variant_and_the_command_line_wins(smoke_when):
    smoke_when([UNBIASED_INFMASKING])
    by_variant = build_config("trifeatures", "infmasking", "smoke", overrides={"data.biased": False})
    by_argv = build_config("trifeatures", "infmasking", "smoke", overrides=["data.biased=False"])
    assert by_variant.run_id == by_argv.run_id   # `infmask run`'s variant and a stage command are the same run
    assert build_config("trifeatures", "infmasking", "smoke",
                        overrides=["data.biased=False", "model.temperature=0.05"]).model.temperature == 0.05
    found = sources("trifeatures", "infmasking", "smoke", None, ["data.biased=False"])
    assert found["model.temperature"] == "preset smoke, when method=infmasking, data.biased=false"
    assert found["data.biased"] == "command line"
    assert sources("trifeatures", "infmasking", "smoke", None, [], variant={"data.biased": True})[
        "model.temperature"] != "preset smoke, when method=infmasking, data.biased=false"


def test_later_entries_win_and_every_match_applies(smoke_when):
    smoke_when([UNBIASED_INFMASKING, {"if": {"method": "infmasking"}, "set": {"model": {"num_mask": 4}}}])
    cfg = build_config("trifeatures", "infmasking", "smoke", overrides=["data.biased=False"])
    assert (cfg.model.temperature, cfg.model.num_mask) == (0.3, 4)
    assert build_config("trifeatures", "infmasking", "smoke", overrides=["data.biased=True"]).model.num_mask == 4


@pytest.mark.parametrize("entries, message", [
    ([{"if": {"data.biasd": False}, "set": {"model": {"num_mask": 3}}}], r"unknown key 'data\.biasd' in `if`"),
    ([{"if": {"method": "infmaskin"}, "set": {"model": {"num_mask": 3}}}],
     "unknown method 'infmaskin'; valid methods: infmasking"),
    ([{"if": {"data.biased": False}, "set": {"data": {"biased": True}}}], "sets data.biased, which its own `if` reads"),
    ([{"if": {"method": "comm"}}], r"expected \{if: "),
    ([{"if": {}, "set": {}}], r"expected \{if: "),
    ({"if": {"method": "comm"}, "set": {}}, "must be a list"),
    ([{"if": {"method": "infmasking"}, "set": {"model": {"num_masks": 3}}}], "num_masks"),
])
def test_a_bad_entry_is_a_one_line_config_error(smoke_when, entries, message):
    smoke_when(entries)
    with pytest.raises(ConfigError, match=message) as info:
        build_config("trifeatures", "infmasking", "smoke")
    assert "\n" not in str(info.value)


def test_the_cpu_preset_gives_the_fusion_methods_unbiased_runs_their_own_knobs():
    """The shipped entries: InfMasking's unbiased runs at the paper's temperature and the class's mask defaults,
    CoMM's at the paper's temperature; their biased runs at the preset's values."""
    unbiased = build_config("trifeatures", "infmasking", "cpu", overrides=["data.biased=False"]).model
    biased = build_config("trifeatures", "infmasking", "cpu", overrides=["data.biased=True"]).model
    assert (unbiased.temperature, unbiased.mask_ratio, unbiased.num_mask) == (0.1, 0.5, 5)
    assert (biased.temperature, biased.mask_ratio, biased.num_mask) == (0.2, 0.7, 6)
    assert build_config("trifeatures", "comm", "cpu", overrides=["data.biased=False"]).model.temperature == 0.1
    assert build_config("trifeatures", "comm", "cpu", overrides=["data.biased=True"]).model.temperature == 0.2
    assert build_config("trifeatures", "cross", "cpu", overrides=["data.biased=False"]).model.temperature == 0.2
    epochs = {(p, b): build_config("trifeatures", "comm", p, overrides=[f"data.biased={b}"]).trainer.max_epochs
              for p in ("cpu", "cpu_long") for b in (False, True)}
    assert epochs == {("cpu", False): 14, ("cpu", True): 12, ("cpu_long", False): 30, ("cpu_long", True): 30}
