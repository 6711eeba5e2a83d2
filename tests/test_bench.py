"""`infmask bench` on the smoke preset: runs anywhere (synthetic uint8 batch), writes the JSON the README quotes."""
import json

from pipeline.cli import main

PHASES = ["augmentation", "encoders", "fusion_unmasked", "fusion_masked", "head", "loss", "backward", "optimizer"]


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
        assert set(r["breakdown"]) == set(PHASES) | {"total"}
        assert all(v >= 0 for v in r["breakdown"].values())
    assert res["straightforward"]["breakdown"]["fusion_masked"] > 0
    assert abs(res["ratio"] - res["straightforward"]["step_s"] / res["fast"]["step_s"]) < 1e-2 * res["ratio"]
    assert "comm" not in res and "infmasking_over_comm" not in res
    assert len(res["load_avg"]["start"]) == 3
    assert "straightforward / fast step time" in capsys.readouterr().out


def test_bench_rejects_bad_input(capsys):
    assert main(["bench", "trifeatures", "--preset", "smoke", "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err
    assert main(["bench", "trifeatures", "--preset", "smoke", "model.no_such_key=1"]) == 2
    assert main(["bench", "trifeatures", "--method", "cross", "--preset", "smoke", "--compare", "comm"]) == 2
