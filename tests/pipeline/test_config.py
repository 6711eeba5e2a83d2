"""Config: presets, both W&B override forms, validation with the key and valid choices, YAML round trip."""
import pytest
import yaml

from infmask.cli import main
from infmask.config import METHOD_NAMES, Config, ConfigError, benchmarks, build_config, parse_overrides


def test_both_agent_override_forms_and_booleans():
    a = build_config("trifeatures", "infmasking", "smoke", overrides=["--model.mask_ratio=0.5", "model.cross=True",
                                                                       "--data.biased=False", "model.weights=None"])
    assert a.model.mask_ratio == 0.5 and a.model.cross is True and a.data.biased is False and a.model.weights is None
    b = build_config("trifeatures", "infmasking", "smoke",
                     overrides=["model.mask_ratio=0.5", "--model.cross=True", "data.biased=False"])
    assert a == b


def test_exponent_floats_without_a_dot_are_numbers():
    # YAML 1.1 reads `3e-3` as a string; a float key takes it as the number a user means.
    cfg = build_config("trifeatures", "infmasking", "smoke", overrides=["optim.lr=3e-3", "model.temperature=1e-1"])
    assert cfg.optim.lr == 3e-3 and cfg.model.temperature == 0.1
    with pytest.raises(ConfigError, match=r"optim\.lr: expected a number"):
        build_config("trifeatures", "infmasking", "smoke", overrides=["optim.lr=fast"])


def test_sweep_float_noise_is_rounded():
    cfg = build_config("trifeatures", "infmasking", "smoke", overrides=["model.mask_ratio=0.30000000000000004"])
    assert cfg.model.mask_ratio == 0.3


@pytest.mark.parametrize("preset", ["paper", "cpu", "smoke"])
def test_presets_round_trip_through_yaml(preset):
    cfg = build_config("trifeatures", "infmasking", preset, seed=43)
    back = Config.from_dict(yaml.safe_load(cfg.dump_yaml()))
    assert back == cfg and back.config_hash() == cfg.config_hash()


def test_paper_preset_matches_spec():
    cfg = build_config("trifeatures", "infmasking", "paper")
    m = cfg.model
    assert (m.embed_dim, m.mask_ratio, m.num_mask, m.temperature, m.mask_lambda) == (512, 0.7, 6, 0.1, 1.0)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.trainer.max_epochs, cfg.data.image_size) == (3e-4, 1e-4, 100, 224)


@pytest.mark.parametrize("preset", ["cpu", "smoke"])
def test_trifeatures_presets_trunks_give_the_adapters_token_grid(preset):
    """Masking needs several tokens per image: the trunk's grid at the preset's resolution is the one the adapter
    is built for (the cpu preset at least 4x4: rho = 0.7 then keeps 4 of 16 tokens)."""
    import torch

    from infmask.models.encoders import build_encoder

    cfg = build_config("trifeatures", "infmasking", preset)
    size = cfg.data.image_size
    for m in cfg.model.modalities:
        out = build_encoder(m["encoder"], **(m.get("encoder_kwargs") or {}))(torch.zeros(1, 3, size, size))
        assert out.shape[1:] == (m["adapter_kwargs"]["num_channels"], m["adapter_kwargs"]["grid_size"],
                                 m["adapter_kwargs"]["grid_size"])
        if preset == "cpu":
            assert m["adapter_kwargs"]["grid_size"] >= 4


def test_seed_changes_run_id_not_group():
    a, b = (build_config("trifeatures", "comm", "smoke", seed=s) for s in (42, 43))
    assert a.config_hash() == b.config_hash() and a.run_id != b.run_id
    c = build_config("trifeatures", "comm", "smoke", overrides=["model.temperature=0.2"])
    assert c.config_hash() != a.config_hash()
    d = build_config("trifeatures", "comm", "smoke", overrides=["data.num_workers=2"])
    assert d.config_hash() == a.config_hash()  # how a run executes is not what it computes


@pytest.mark.parametrize("override, fragment", [
    ("model.mask_ratio=1.0", "model.mask_ratio"),
    ("model.mask_ratio=-0.1", "model.mask_ratio"),
    ("model.temperature=0", "model.temperature"),
    ("model.num_mask=0", "model.num_mask"),
    ("model.nosuch=1", "valid keys in model"),
    ("nosuch.key=1", "valid sections"),
    ("model.cross=maybe", "model.cross"),
    ("model.num_mask=2.5", "model.num_mask"),
    ("optim.scheduler=linear", "valid choices"),
    ("probe.protocol=cheat", "clean, reference"),
    ("data.blur_sigma=[0, 1]", "data.blur_sigma"),
    ("data.blur_sigma=[1.0]", "data.blur_sigma"),
    ("data.render_size=16", "data.render_size"),
    ("noequals", "key=value"),
])
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("(", r"\(")):
        build_config("trifeatures", "infmasking", "smoke", overrides=[override])


def test_unknown_names_list_choices():
    with pytest.raises(ConfigError, match="valid benchmarks: .*trifeatures"):
        build_config("nosuch")
    with pytest.raises(ConfigError, match="valid methods"):
        build_config("trifeatures", "nosuch")
    with pytest.raises(ConfigError, match="valid presets: paper, cpu, smoke"):
        build_config("trifeatures", "infmasking", "huge")


def test_cli_bad_input_exits_2(capsys, root):
    assert main(["pretrain", "trifeatures", "--preset", "smoke", "model.mask_ratio=1.5"]) == 2
    err = capsys.readouterr().err
    assert "model.mask_ratio" in err and len(err.strip().splitlines()) == 1
    assert main(["pretrain", "nosuch"]) == 2
    assert "valid benchmarks" in capsys.readouterr().err
    assert main(["pretrain", "trifeatures", "--method", "nosuch"]) == 2
    assert "valid methods" in capsys.readouterr().err


def test_method_names_match_registry():
    from infmask.models.methods import METHODS

    assert set(METHODS) == set(METHOD_NAMES)


def test_model_and_optim_defaults_are_the_registry_s():
    """One set of defaults: the config's sections are the method registry's knobs, and a method built from a
    partial dict fills in the same values (channels_last included)."""
    import dataclasses

    from infmask.config import ModelConfig, OptimConfig
    from infmask.models.method_registry import model_defaults, optim_defaults
    from infmask.models.methods import MODEL_DEFAULTS, OPTIM_DEFAULTS

    assert dataclasses.asdict(ModelConfig()) == model_defaults() == MODEL_DEFAULTS
    assert dataclasses.asdict(OptimConfig()) == optim_defaults() == OPTIM_DEFAULTS
    assert ModelConfig().channels_last is True


def test_method_knobs_are_checked_with_the_config():
    with pytest.raises(ConfigError, match=r"model.cross_self_hidden: must be >= 1, got 0"):
        build_config("trifeatures", "cross_self", "smoke", overrides=["model.cross_self_hidden=0"])
    with pytest.raises(ConfigError, match=r"model.ssl_scale: must be >= 0"):
        build_config("trifeatures", "infmasking", "smoke", overrides=["model.ssl_scale=-1"])


def test_every_benchmark_builds_every_preset():
    for b in benchmarks():
        from infmask.config import benchmark_spec

        for m in benchmark_spec(b)["methods"]:
            for p in ("paper", "cpu", "smoke"):
                build_config(b, m, p)


def test_parse_overrides_values():
    ov = parse_overrides(["--a.b=[1, 2]", "c.d=None", "e.f=True", "g.h=0.7", "i.j=text"])
    assert ov == {"a.b": [1, 2], "c.d": None, "e.f": True, "g.h": 0.7, "i.j": "text"}


BAD_VALUES = [  # (arguments after `pretrain trifeatures --preset smoke`, the key the one-line error names)
    (["model.n_heads=0"], "model.n_heads"),                     # was a ZeroDivisionError inside validation
    (["model.temperature=inf"], "model.temperature"),
    (["optim.lr=1e400"], "optim.lr"),                           # YAML reads it as a string, float() as inf
    (["model.weights=[1.0, .nan]"], "model.weights"),
    (["--seed", "-1"], "seed"),
    (["--seed", "4294967296"], "seed"),                        # Lightning would silently draw a random seed
    (["data.data_seed=-5"], "data.data_seed"),
    (["trainer.devices=abc"], "trainer.devices"),
    (["trainer.devices=0"], "trainer.devices"),
    (["trainer.limit_train_batches=-1"], "trainer.limit_train_batches"),
    (["trainer.limit_val_batches=1.5"], "trainer.limit_val_batches"),
    (["trainer.accelerator=quantum"], "trainer.accelerator"),
    (["trainer.early_stopping_patience=soon"], "trainer.early_stopping_patience"),
    (["data.dataset=mosi"], "data.dataset"),                    # would start downloading MOSI for Trifeatures
    (["probe.costs=[1.0, a]"], "probe.costs"),
    (["data.max_items=-3"], "data.max_items"),
]


@pytest.mark.parametrize("args, key", BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_bad_values_are_refused_before_any_file_is_written(tmp_path, monkeypatch, capsys, args, key):
    root = tmp_path / "ws"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert main(["pretrain", "trifeatures", "--preset", "smoke", "--root", str(root), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"error: {key}" in err and "Traceback" not in err, err
    assert not root.exists()  # nothing written, not even the workspace folder


def test_trial_seed_takes_the_same_typed_check(tmp_path, monkeypatch, capsys):
    # A W&B agent passing --seed=1.5 used to train seed 1 without a word.
    monkeypatch.setenv("INFMASK_ROOT", str(tmp_path / "ws"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    for seed, words in (("1.5", "seed: expected an integer, got 1.5"), ("abc", "seed: expected an integer"),
                        ("-2", "seed: must be in [0, 4294967295]")):
        assert main(["trial", "--benchmark=trifeatures", "--preset=smoke", f"--seed={seed}"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
    assert not (tmp_path / "ws").exists()
    cfg = build_config("trifeatures", "infmasking", "smoke", overrides=["seed=7.0"])  # lossless: fine
    assert cfg.seed == 7


def test_valid_trainer_values_still_pass():
    for ov in (["trainer.devices=2"], ["trainer.devices=auto"], ["trainer.devices=[0, 1]"], ["trainer.devices=-1"],
               ["trainer.limit_train_batches=0.25"], ["trainer.limit_val_batches=0"], ["trainer.limit_train_batches=3"],
               ["trainer.early_stopping_patience=5"], ["--seed=4294967295"], ["data.data_seed=0"]):
        build_config("trifeatures", "infmasking", "smoke", overrides=ov)


def test_preset_notes_name_presets_the_benchmark_offers():
    from infmask.config import benchmark_spec, benchmarks, presets_of

    for b in benchmarks():
        spec = benchmark_spec(b)
        for preset, note in (spec.get("preset_notes") or {}).items():
            assert preset in presets_of(spec) and isinstance(note, str) and "\n" not in note.strip()


def test_a_preset_s_method_overrides_apply_to_that_method_only(tmp_path, monkeypatch):
    """A preset may leave a method at its own value of a knob it changes for the others: its `method_overrides`
    entry comes after the preset's common part and before the command line, and the sources name it."""
    import infmask.config as config_module
    from infmask.config_sources import sources

    spec = yaml.safe_load((config_module.CONFIG_DIR / "trifeatures.yaml").read_text())
    spec["presets"]["smoke"]["model"]["temperature"] = 0.2
    spec["presets"]["smoke"]["method_overrides"] = {"cross_self": {"model": {"temperature": 0.1}}}
    (tmp_path / "trifeatures.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.setattr(config_module, "CONFIG_DIR", tmp_path)
    assert build_config("trifeatures", "comm", "smoke").model.temperature == 0.2
    assert build_config("trifeatures", "cross_self", "smoke").model.temperature == 0.1
    assert build_config("trifeatures", "cross_self", "smoke", overrides=["model.temperature=0.3"]).model.temperature \
        == 0.3
    assert sources("trifeatures", "cross_self", "smoke", None, [])["model.temperature"] == \
        "preset smoke, method cross_self"
    assert sources("trifeatures", "comm", "smoke", None, [])["model.temperature"] == "preset smoke"
    # the other methods' runs keep their ids: the per-method entry is not part of their config
    before = build_config("trifeatures", "comm", "smoke").run_id
    del spec["presets"]["smoke"]["method_overrides"]
    (tmp_path / "trifeatures.yaml").write_text(yaml.safe_dump(spec))
    assert build_config("trifeatures", "comm", "smoke").run_id == before
    # a misspelt method is an error naming the valid ones, not an override silently never applied
    spec["presets"]["smoke"]["method_overrides"] = {"cross_slef": {"model": {"temperature": 0.1}}}
    (tmp_path / "trifeatures.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="unknown method.*cross_slef.*valid methods: infmasking"):
        build_config("trifeatures", "comm", "smoke")
