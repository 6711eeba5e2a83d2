"""Config: presets, both W&B override forms, validation with the key and valid choices, YAML round trip."""
import pytest
import yaml

from pipeline.cli import main
from pipeline.config import METHOD_NAMES, Config, ConfigError, benchmarks, build_config, parse_overrides


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

    from models.encoders import build_encoder

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
    ("data.render=upscale", "resize, native"),
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
    from models.methods import METHODS

    assert set(METHODS) == set(METHOD_NAMES)


def test_every_benchmark_builds_every_preset():
    for b in benchmarks():
        from pipeline.config import benchmark_spec

        for m in benchmark_spec(b)["methods"]:
            for p in ("paper", "cpu", "smoke"):
                build_config(b, m, p)


def test_parse_overrides_values():
    ov = parse_overrides(["--a.b=[1, 2]", "c.d=None", "e.f=True", "g.h=0.7", "i.j=text"])
    assert ov == {"a.b": [1, 2], "c.d": None, "e.f": True, "g.h": 0.7, "i.j": "text"}
