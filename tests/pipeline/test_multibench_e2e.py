"""Every MultiBench benchmark end to end through the CLI: fixture files with the real schema, served over HTTP on
127.0.0.1, downloaded (--base-url), verified, preprocessed, pretrained (smoke), probed and reported, 2 and 3
modalities. The first test trains InfMasking on each benchmark; the second adds every other method and checks
that both MultiBench tables have every cell of ours filled (about a minute for the file on 2 cores)."""
from __future__ import annotations

import csv

import pytest

from infmask.cli import main
from infmask.config import benchmark_spec
from helpers import multibench_fixtures as fx

BENCHMARKS = ("mosi", "humor", "sarcasm", "mimic", "visionandtouch", "visionandtouch_bin", "humor_3mod",
              "visionandtouch_bin_3mod")
FAST = ("trainer.max_epochs=1",)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("e2e") / "ws"
    threads = torch.get_num_threads()
    # Smoke models are tiny: with two intra-op threads on a busy 2-core machine, thread hand-offs cost more than
    # the maths (a ResNet-18 step at 32 px: 8 s with 2 threads under load, 0.2 s with 1).
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INFMASK_ROOT", str(root))
        mp.setenv("WANDB_MODE", "disabled")
        mp.delenv("INFMASK_BASE_URL", raising=False)
        with fx.serve(fx.mirror_files(tmp_path_factory.mktemp("build"))) as (base, _):
            for name in ("mosi", "humor", "sarcasm", "visionandtouch"):
                assert main(["download", name, "--base-url", base, "--root", str(root)]) == 0
        assert main(["download", "mimic", "--root", str(root)]) == 2
        (root / "raw" / "mimic" / "im.pk").write_bytes(fx.mimic_pickle(80))
        assert main(["download", "mimic", "--root", str(root)]) == 0
        try:
            yield root
        finally:
            torch.set_num_threads(threads)


def _table(root, name) -> list[dict]:
    with open(root / "reports" / f"table_{name}.csv", newline="") as f:
        return list(csv.DictReader(f))


def _ours(rows, method=None, protocol="clean") -> dict:
    """{(row, column): ours_mean} of our rows under one probe protocol, optionally of one method."""
    return {(r["row"], r["column"]): r["ours_mean"] for r in rows
            if r["source"] == "ours" and r["protocol"] == protocol and (method is None or r["method"] == method)}


def test_every_benchmark_runs_end_to_end(root, capsys):
    for bench in BENCHMARKS:
        assert main(["run", bench, "--methods", "infmasking", "--seeds", "42", "--preset", "smoke",
                     "--root", str(root), *FAST]) == 0, bench
        out = capsys.readouterr().out
        assert "all 1 runs done" in out, out[-2000:]
    # the reference's protocol on V&T: val = the test episodes, train = every other episode
    assert main(["run", "visionandtouch", "--methods", "infmasking", "--seeds", "42", "--preset", "smoke",
                 "--root", str(root), *FAST, "probe.protocol=reference"]) == 0
    assert "all 1 runs done" in capsys.readouterr().out
    for table in ("multibench", "multibench3"):
        assert main(["report", "--table", table, "--no-wandb", "--root", str(root)]) == 0
    mb2 = _ours(_table(root, "multibench"), "infmasking")
    assert {c for (_, c) in mb2} >= {"vt_mse", "mimic", "mosi", "humor", "sarcasm"}
    assert all(v not in ("", None) for v in mb2.values()), mb2
    assert _ours(_table(root, "multibench"), "infmasking", "reference")[("InfMasking", "vt_mse")] not in ("", None)
    mb3 = _ours(_table(root, "multibench3"), "infmasking")
    assert {r for (r, _) in mb3} == {"InfMasking (2)", "InfMasking (3)"}
    assert len(mb3) == 4 and all(v not in ("", None) for v in mb3.values()), mb3


def test_both_tables_filled_by_every_method(root):
    for bench in BENCHMARKS:
        methods = ",".join(benchmark_spec(bench)["methods"])
        assert main(["run", bench, "--methods", methods, "--seeds", "42", "--preset", "smoke", "--root", str(root),
                     *FAST]) == 0, bench
    for table, n_rows in (("multibench", 4), ("multibench3", 7)):
        assert main(["report", "--table", table, "--no-wandb", "--root", str(root)]) == 0
        rows = _table(root, table)
        ours = _ours(rows)
        columns = {r["column"] for r in rows}
        reproducible = {r["row"] for r in rows if not r["row"].startswith("FactorCL")}
        assert len(reproducible) == n_rows
        missing = [(row, c) for row in reproducible for c in columns if ours.get((row, c)) in (None, "")]
        assert not missing, missing
