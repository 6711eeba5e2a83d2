"""`infmask bench` on the smoke preset: runs anywhere (synthetic uint8 batch), writes the JSON the README quotes."""
import json

from infmask.cli import main

PHASES = ["augmentation", "encoders", "fusion", "fusion_unmasked", "fusion_masked", "head", "loss", "backward",
          "optimizer"]
# the fast step fuses the unmasked subsets and the masked views in one pass, the straightforward step in two loops
BREAKDOWN = {"fast": set(PHASES) - {"fusion_unmasked", "fusion_masked"}, "straightforward": set(PHASES) - {"fusion"}}


def test_bench_smoke_writes_breakdown_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "trifeatures", "--preset", "smoke", "--steps", "2", "--threads", "1", "--compare", "none",
               "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["benchmark"] == "trifeatures" and res["method"] == "infmasking" and res["preset"] == "smoke"
    assert res["device"] == "cpu" and res["threads"] == 1 and res["batch_size"] == 32
    assert res["phases"] == PHASES
    for name in ("fast", "straightforward"):
        r = res[name]
        assert len(r["steps_s"]) == 2 and r["step_s"] > 0 and r["step_cpu_s"] > 0
        assert abs(r["samples_per_s"] - 32 / r["step_s"]) < 1e-2 * r["samples_per_s"]
        assert r["peak_mem_mib"] > 0
        assert set(r["breakdown"]) == BREAKDOWN[name] | {"total"}
        assert all(v >= 0 for v in r["breakdown"].values())
        # on a CPU the phases are those of the timed steps themselves (each rounded to 10 us)
        assert abs(r["breakdown"]["total"] - r["step_s"]) <= 1e-4
    assert res["straightforward"]["breakdown"]["fusion_masked"] > 0 and res["fast"]["breakdown"]["fusion"] > 0
    assert abs(res["ratio"] - res["straightforward"]["step_s"] / res["fast"]["step_s"]) < 1e-2 * res["ratio"]
    assert "comm" not in res and "infmasking_over_comm" not in res
    assert len(res["load_avg"]["start"]) == 3
    assert "straightforward / fast step time" in capsys.readouterr().out


def test_bench_rejects_bad_input(capsys):
    assert main(["bench", "trifeatures", "--preset", "smoke", "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err
    assert main(["bench", "trifeatures", "--preset", "smoke", "model.no_such_key=1"]) == 2
    assert main(["bench", "trifeatures", "--method", "cross", "--preset", "smoke", "--compare", "comm"]) == 2


def test_bench_real_steps_times_the_real_pretrain_loop(root, capsys):
    """--real-steps trains through `pretrain` (real loader, callbacks, W&B offline) in a scratch workspace that
    reads the workspace's data, over two epochs here (the smoke set has 3 full batches an epoch), and reports its
    samples/s beside the bench step's, timed between its steps."""
    out = root.parent / "bench.json"
    rc = main(["bench", "trifeatures", "--preset", "smoke", "--steps", "2", "--warmup", "1", "--threads", "1",
               "--compare", "none", "--no-baseline", "--no-memory", "--real-steps", "5", "--json", str(out),
               "trainer.limit_train_batches=3"])
    assert rc == 0
    res = json.loads(out.read_text())
    real = res["real_loop"]
    assert (real["epochs"], real["batches_per_epoch"], real["warmup"]) == (2, 3, 1)
    assert real["steps"] == 5 == len(real["steps_s"]) and real["samples"] == 5 * 32
    assert abs(real["samples_per_s"] - real["samples"] / real["seconds"]) < 1e-2 * real["samples_per_s"]
    assert 0 < real["data_s_median"] < real["step_s_median"] and real["step_cpu_s"] > 0
    assert len(real["bench_between_s"]) == 2 and real["bench_samples_per_s_before"] == res["fast"]["samples_per_s"]
    assert real["bench_samples_per_s"] == real["bench_samples_per_s_between"] > 0
    assert abs(real["real_over_bench"] - real["samples_per_s"] / real["bench_samples_per_s"]) < 1e-2
    end = real["epoch_end"]
    assert end["total"] > 0 and end["val_loss"] > 0 and end["probe"] > 0   # the smoke preset probes at epoch 2
    assert 0 < real["epoch_samples_per_s_est"] < real["samples_per_s"]
    assert "perf/samples_per_s" in real["telemetry"] and not any(k.startswith("gpu/") for k in real["telemetry"])
    # the runs went to the scratch workspace, now gone; the data stays in the real one
    assert not list(root.glob(".bench-real-*")) and not (root / "runs").exists()
    assert list((root / "processed" / "trifeatures").iterdir())
    assert "real training loop (5 timed steps, 2 epoch(s) of 3)" in capsys.readouterr().out


def test_bench_real_steps_rejects_bad_input(root, capsys):
    assert main(["bench", "trifeatures", "--preset", "smoke", "--real-steps", "-1"]) == 2
    assert "--real-steps" in capsys.readouterr().err
    assert main(["bench", "trifeatures", "--preset", "smoke", "--no-baseline", "--compare", "none", "--no-memory",
                 "--steps", "1", "--real-steps", "2", "trainer.devices=2", "trainer.strategy=ddp"]) == 2
    assert "one process on one device" in capsys.readouterr().err


def test_report_shows_the_coarse_breakdown_of_methods_without_phases():
    from infmask.bench import format_report

    fast = {"step_s": 1.0, "model_step_s": 0.5, "step_cpu_s": 1.0, "samples_per_s": 32.0,
            "breakdown": {"augmentation": 0.5, "forward": 0.2, "backward": 0.25, "optimizer": 0.05, "total": 1.0}}
    res = {"benchmark": "trifeatures", "method": "cross", "preset": "smoke", "batch_size": 32, "device": "cpu",
           "device_name": "cpu", "precision": "32-true", "threads": 1, "load_avg": None, "data": "synthetic",
           "fast": fast}
    lines = format_report(res).splitlines()
    assert [ln.split()[0] for ln in lines[lines.index("breakdown (s, phases synchronised):") + 1:]] == \
        ["augmentation", "forward", "backward", "optimizer", "total"]
