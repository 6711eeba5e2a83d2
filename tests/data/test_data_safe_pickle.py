"""Hostile and damaged pickles against the restricted unpickler (data/safe_pickle.py) and the stages that read them.

Every pickle that could corrupt memory or allocate without bound is loaded in a subprocess under a memory limit,
so an unpickler that crashes or over-allocates takes down that process, not pytest: the test then fails cleanly."""
from __future__ import annotations

import json
import os
import pickle
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from infmask.cli import main
from helpers import hostile_pickles as hp

ROOT = Path(__file__).resolve().parents[2]
MEMORY_LIMIT = 4 << 30  # address space of the isolated process; every bomb below asks for far more
pytestmark = pytest.mark.timeout(180)


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def isolated_cli(ws: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "INFMASK_"))}
    env.update(INFMASK_ROOT=str(ws), WANDB_MODE="disabled", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "infmask", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=150, preexec_fn=_limit_memory)


def place(ws: Path, dataset: str, name: str, blob: bytes) -> Path:
    path = ws / "raw" / dataset / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    return path


def assert_clean_refusal(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, f"exit {proc.returncode} (a negative code is a signal: -11 is SIGSEGV)\n" \
                                 f"{proc.stderr[-3000:]}"
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err[-3000:]
    for w in words:
        assert w in err, err


def nothing_trusted(ws: Path) -> None:
    store = ws / "raw" / "checksums.json"
    assert not store.exists() or json.loads(store.read_text())["files"] == {}
    assert not list((ws / "raw").rglob("*.verified.json")) and not list((ws / "raw").rglob("manifest.json"))


# ------------------------------------------------------------------------------------------------ memory corruption

@pytest.mark.parametrize("spec", ["V8", "O8"])
def test_dtype_with_an_object_field_past_the_item_is_refused_by_download_mimic(tmp_path, spec):
    ws = tmp_path / "ws"
    blob = hp.out_of_bounds_dtype(spec=spec)
    assert len(blob) < 400  # the ~280-byte file of the attack
    place(ws, "mimic", "im.pk", blob)
    proc = isolated_cli(ws, "download", "mimic")
    assert_clean_refusal(proc, "refusing to unpickle", "im.pk")
    assert "structured" in proc.stderr or "not a plain dtype" in proc.stderr
    nothing_trusted(ws)


def test_dtype_with_an_object_field_past_the_item_is_refused_by_preprocess_humor(tmp_path):
    ws = tmp_path / "ws"
    place(ws, "humor", "humor.pkl", hp.out_of_bounds_dtype(key="train"))
    proc = isolated_cli(ws, "preprocess", "humor")
    assert_clean_refusal(proc, "refusing to unpickle", "humor.pkl")
    nothing_trusted(ws)
    assert not (ws / "processed" / "humor").exists() or not any((ws / "processed" / "humor").iterdir())


# ------------------------------------------------------------------------------------------------ allocation bombs

@pytest.mark.parametrize("bomb, words", [
    (hp.reconstruct_bomb, ("not MultiBench's MIMIC im.pk",)),   # the 21.5 GiB shape is never allocated
    (hp.ndarray_call_bomb, ("numpy.ndarray(...)",)),
    (hp.binbytes8_bomb, ("declares 1099511627776 bytes",)),
    (hp.bytearray8_bomb, ("bytearray of 17179869184 bytes",)),
])
def test_allocation_bomb_is_refused_within_a_memory_limit(tmp_path, bomb, words):
    ws = tmp_path / "ws"
    blob = bomb()
    assert len(blob) < 300
    place(ws, "mimic", "im.pk", blob)
    assert_clean_refusal(isolated_cli(ws, "download", "mimic"), *words)
    nothing_trusted(ws)


@pytest.mark.parametrize("size, n, words", [(32 << 10, 256, "size of the file"), (1 << 20, 8, "a second time")])
def test_arrays_sharing_one_buffer_may_not_outgrow_the_file(size, n, words):
    # One buffer referred to by n arrays: rebuilt as copies they would take n times the file.
    shared = bytes(size)

    class Alias:
        def __reduce__(self):
            return hp._reconstruct, (np.ndarray, (0,), b"b"), (1, (size,), np.dtype("u1"), False, shared)

    from infmask.data.safe_io import UnsafePickleError, safe_loads

    blob = pickle.dumps([Alias() for _ in range(n)], protocol=2)
    assert len(blob) < 2 * size
    with pytest.raises(UnsafePickleError, match=words):
        safe_loads(blob)


# ------------------------------------------------------------------------------------------------ damaged files

@pytest.mark.parametrize("case, words", [
    ("empty", "is empty"),
    ("truncated", "truncated"),
    ("html", "HTML page"),
])
def test_damaged_placed_pickle_is_a_one_line_error(ws, capsys, case, words):
    from helpers import multibench_fixtures as fx

    good = fx.mimic_pickle(40)
    blob = {"empty": b"", "truncated": good[: len(good) // 2],
            "html": b"<!DOCTYPE html><html><head><title>Sign in</title></head></html>"}[case]
    place(ws, "mimic", "im.pk", blob)
    assert main(["download", "mimic", "--root", str(ws)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "im.pk" in err and words in err, err
    nothing_trusted(ws)
