"""The one durable-IO helper and the manifest-backed build directory: atomic replacement that honours the umask,
nothing half-written left behind, a killed build never taken for a complete one, a damaged one never used."""
import json
import os
import subprocess
import sys
import time

import pytest

from infmask.data import durable, manifest

from helpers.files import file_mode


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_every_writer_takes_the_umask_mode_and_leaves_no_temporaries(tmp_path, umask, mask):
    umask(mask)
    durable.atomic_write_text(tmp_path / "a" / "t.txt", "x\n")
    durable.write_json_atomic(tmp_path / "j.json", {"b": 1, "a": [1]})
    with durable.atomic_path(tmp_path / "p.bin") as tmp:
        tmp.write_bytes(b"\x00")
    partial = manifest.start_build(tmp_path / "set")
    (partial / "x.npy").write_bytes(b"123")
    manifest.finalise(partial, tmp_path / "set", {"seed": 1})
    for p in ("a/t.txt", "j.json", "p.bin", "set/manifest.json"):
        assert file_mode(tmp_path / p) == 0o666 & ~mask, p
    assert json.loads((tmp_path / "j.json").read_text()) == {"a": [1], "b": 1}
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or ".partial-" in p.name]


def test_a_failed_write_or_check_leaves_the_old_file(tmp_path):
    target = tmp_path / "t.json"
    durable.write_json_atomic(target, {"v": 1})

    def refuse(_):
        raise ValueError("bad")

    with pytest.raises(ValueError):
        durable.atomic_write_bytes(target, b"{}", check=refuse)
    with pytest.raises(RuntimeError):
        with durable.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]


def test_a_failed_build_leaves_nothing_and_a_rebuild_replaces_the_old_set_whole(tmp_path):
    out = tmp_path / "set"
    with manifest.building(out) as partial:
        (partial / "a.txt").write_text("one")
        manifest.finalise(partial, out, {"v": 1}, counts={"a": 1})
    with pytest.raises(RuntimeError):
        with manifest.building(out) as partial:
            (partial / "a.txt").write_text("two")
            raise RuntimeError("failed half-way")
    assert manifest.verify(out, expect={"v": 1}) == [] and (out / "a.txt").read_text() == "one"
    assert manifest.read_manifest(out)["counts"] == {"a": 1}
    with manifest.building(out) as partial:
        (partial / "a.txt").write_text("three")
        manifest.finalise(partial, out, {"v": 2})
    assert manifest.verify(out, expect={"v": 2}) == [] and (out / "a.txt").read_text() == "three"
    assert [p.name for p in tmp_path.iterdir()] == ["set"]


def test_a_killed_builder_leaves_a_hidden_folder_that_the_next_build_removes(tmp_path):
    out = tmp_path / "set"
    code = ("import sys, time; from pathlib import Path; from infmask.data import manifest; "
            f"p = manifest.start_build(Path({str(out)!r})); (p / 'a.txt').write_text('x'); print(p, flush=True); "
            "time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        left = proc.stdout.readline().strip()
    finally:
        proc.kill()
        proc.wait()
    assert left and os.path.basename(left).startswith(".set.partial-")
    assert manifest.verify(out) != [] and not manifest.ready(out, "test set")
    partial = manifest.start_build(out)
    assert not os.path.exists(left) and partial.is_dir()


def test_ready_removes_a_damaged_build_and_remembers_an_intact_one(tmp_path, monkeypatch):
    out = tmp_path / "set"
    with manifest.building(out) as partial:
        (partial / "a.bin").write_bytes(b"abcd")
        manifest.finalise(partial, out, {"v": 1})
    assert manifest.ready(out, "test set", expect={"v": 1}) and manifest.verified_earlier(out)
    hashed = []
    monkeypatch.setattr(manifest, "sha256_file", lambda p: hashed.append(p) or "x")
    assert manifest.ready(out, "test set", expect={"v": 1}) and hashed == []   # unchanged: not hashed again
    monkeypatch.undo()
    time.sleep(0.01)
    (out / "a.bin").write_bytes(b"abce")                                     # same size, new content
    said = []
    assert not manifest.ready(out, "test set", expect={"v": 1}, say=said.append)
    assert not out.exists() and "damaged or stale" in said[0]
