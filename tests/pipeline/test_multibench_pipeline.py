"""`infmask download` / `infmask preprocess` for the MultiBench datasets, through the CLI, against fixture files
with the real schema served by a real HTTP server on 127.0.0.1 (--base-url)."""
from __future__ import annotations

import io
import json
import pickle
import zipfile

import pytest

from infmask.data import multibench_stages as stages
from infmask.data.registry import DATASETS
from infmask.cli import main
from helpers import multibench_fixtures as fx

AFFECT = ("mosi", "humor", "sarcasm")


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    files = fx.mirror_files(tmp_path_factory.mktemp("build"))
    with fx.serve(files) as (base, server):
        yield base, server


def cli(*args) -> int:
    return main([str(a) for a in args])


def test_mirror_url_convention():
    mosi, vt = DATASETS["mosi"].files[0], DATASETS["visionandtouch"].files[0]
    assert stages.mirror_url(mosi.url, mosi.name, None) == mosi.url
    assert stages.mirror_url(mosi.url, mosi.name, "http://127.0.0.1:9/m/") == "http://127.0.0.1:9/m/mosi_data.pkl"
    assert (stages.mirror_url(vt.url, vt.name, "http://127.0.0.1:9/m")
            == "http://127.0.0.1:9/m/juno/triangle_real_data.zip")
    with pytest.raises(Exception, match="base-url"):
        stages.mirror_url(vt.url, vt.name, "ftp://x")


def test_download_verify_preprocess_all_public(mirror, ws, capsys):
    base, server = mirror
    server.hits.clear()
    for name in (*AFFECT, "visionandtouch"):
        assert cli("download", name, "--base-url", base, "--root", ws) == 0
    out = capsys.readouterr().out
    assert out.count("downloaded and verified") == 3 and "extracted 5 episode files" in out
    # trust on first use: recorded under the mirror's URL, never under the registry URL it stands in for
    record = json.loads((ws / "raw" / "checksums.json").read_text())["files"]
    assert set(record) == {stages.mirror_url(DATASETS[n].files[0].url, DATASETS[n].files[0].name, base)
                           for n in (*AFFECT, "visionandtouch")}
    for name in AFFECT:
        man = json.loads((ws / "raw" / name / "manifest.json").read_text())
        (entry,) = man["files"].values()
        assert entry["sha256"] == record[entry["url"]]["sha256"] and entry["registry_url"] not in record
    assert not (ws / "raw" / "visionandtouch" / "triangle_real_data.zip").exists()
    # idempotent: a second run fetches nothing and says so
    hits = len(server.hits)
    for name in (*AFFECT, "visionandtouch"):
        assert cli("download", name, "--base-url", base, "--root", ws) == 0
    assert len(server.hits) == hits and capsys.readouterr().out.count("nothing to do") == 4
    for bench in ("mosi", "humor_3mod", "sarcasm", "visionandtouch", "visionandtouch_bin"):
        assert cli("preprocess", bench, "--root", ws) == 0
    out = capsys.readouterr().out
    assert out.count("\npreprocessed ") + out.startswith("preprocessed ") == 4  # V&T built once
    assert "visionandtouch preprocessed at" in out and "already and verified: nothing to do" in out
    assert (ws / "processed" / "humor" / "v1" / "manifest.json").is_file()
    # a damaged build is noticed and rebuilt
    victim = ws / "processed" / "mosi" / "v1" / "label_train.npy"
    victim.write_bytes(victim.read_bytes()[:-3])
    assert cli("preprocess", "mosi", "--root", ws) == 0
    assert "rebuilding" in capsys.readouterr().out
    assert cli("preprocess", "mosi", "--root", ws) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_preprocess_fetches_what_is_missing_from_the_env_mirror(mirror, ws, monkeypatch, capsys):
    monkeypatch.setenv("INFMASK_BASE_URL", mirror[0])
    assert cli("preprocess", "sarcasm", "--root", ws) == 0
    assert "downloaded and verified" in capsys.readouterr().out


def test_mimic_without_the_file_explains_the_credentialed_route(ws, capsys):
    assert cli("download", "mimic", "--root", ws) == 2
    err = capsys.readouterr().err
    for words in ("credentialed", "PhysioNet", "MultiBench", str(ws / "raw" / "mimic" / "im.pk")):
        assert words in err
    assert cli("preprocess", "mimic", "--root", ws) == 2  # pretrain and run stop at the same place
    assert "credentialed" in capsys.readouterr().err


def test_mimic_with_a_placed_file_proceeds(ws, capsys):
    assert cli("download", "mimic", "--root", ws) == 2
    (ws / "raw" / "mimic" / "im.pk").write_bytes(fx.mimic_pickle(60))
    assert cli("download", "mimic", "--root", ws) == 0
    out = capsys.readouterr().out
    assert "60 patients" in out and "sha256" in out
    record = json.loads((ws / "raw" / "checksums.json").read_text())["files"]
    assert "mimic/im.pk" in record
    assert cli("download", "mimic", "--root", ws) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert cli("preprocess", "mimic", "--root", ws) == 0
    assert (ws / "processed" / "mimic" / "v1" / "static_train.npy").is_file()
    # a different file later is refused (the first one seen is the reference)
    (ws / "raw" / "mimic" / "im.pk").write_bytes(fx.mimic_pickle(60, seed=1))
    assert cli("download", "mimic", "--root", ws) == 2
    assert "differs from the im.pk recorded earlier" in capsys.readouterr().err


def test_mimic_schema_violation_is_a_clear_error(ws, capsys):
    (ws / "raw" / "mimic").mkdir(parents=True)
    d = fx.mimic_dict(40)
    d.pop("y_icd9")
    (ws / "raw" / "mimic" / "im.pk").write_bytes(pickle.dumps(d))
    assert cli("download", "mimic", "--root", ws) == 2
    assert "missing key 'y_icd9'" in capsys.readouterr().err


def test_affect_schema_violation_is_a_clear_error(ws, capsys, monkeypatch):
    d = pickle.loads(fx.affect_pickle("mosi", sizes={"train": 4, "valid": 3, "test": 3}))
    d["train"]["vision"] = d["train"]["vision"][:, :, :10]
    with fx.serve({"mirror/mosi_data.pkl": pickle.dumps(d)}) as (base, _):
        monkeypatch.setenv("INFMASK_BASE_URL", base)  # where preprocess fetches what is missing
        for args in (("download", "mosi", "--base-url", base), ("preprocess", "mosi")):  # checked before any use
            assert cli(*args, "--root", ws) == 2
            err = capsys.readouterr().err
            assert "['train']['vision']" in err and "(N, 50, 20)" in err and len(err.strip().splitlines()) == 1
    assert not (ws / "raw" / "mosi" / "mosi_data.pkl").exists() and not (ws / "raw" / "checksums.json").exists()
    assert not (ws / "processed" / "mosi").exists() or not any((ws / "processed" / "mosi").iterdir())


def test_malicious_pickle_is_refused_and_runs_nothing(ws, tmp_path, capsys):
    marker = tmp_path / "pwned"
    with fx.serve({"mirror/humor.pkl": pickle.dumps({"train": fx.Exploit(marker)})}) as (base, _):
        assert cli("download", "humor", "--base-url", base, "--root", ws) == 2
    err = capsys.readouterr().err
    assert "refusing to unpickle" in err and "system" in err
    assert not marker.exists()


def test_archive_escaping_the_folder_is_refused(ws, tmp_path, capsys):
    evil = fx.vt_zip(tmp_path / "b", n_files=1, extra_members={"../escape.txt": b"x"})
    with fx.serve({f"mirror/{fx.VT_ZIP_PATH}": evil}) as (base, _):
        assert cli("download", "visionandtouch", "--base-url", base, "--root", ws) == 2
    assert "escape" in capsys.readouterr().err
    assert not (ws / "raw" / "escape.txt").exists() and not (ws / "raw" / "visionandtouch" / "extracted").exists()


def test_archive_without_episodes_is_refused(ws, capsys):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", "nothing here")
    with fx.serve({f"mirror/{fx.VT_ZIP_PATH}": buf.getvalue()}) as (base, _):
        assert cli("download", "visionandtouch", "--base-url", base, "--root", ws) == 2
    assert "no .h5 episode files" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_archive_is_a_one_line_error(ws, tmp_path, capsys, damage):
    good = fx.vt_zip(tmp_path / "b", n_files=1)
    blob = good[: len(good) // 2] if damage == "truncated" else b"PK\x03\x04" + bytes(range(256)) * 8
    with fx.serve({f"mirror/{fx.VT_ZIP_PATH}": blob}) as (base, _):
        assert cli("download", "visionandtouch", "--base-url", base, "--root", ws) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "triangle_real_data.zip" in err and "damaged" in err, err
    assert not (ws / "raw" / "visionandtouch" / "extracted").exists()
    assert not (ws / "raw" / "checksums.json").exists()


def test_mirror_faults(ws, capsys):
    good = fx.affect_pickle("sarcasm", sizes={"train": 4, "valid": 3, "test": 3})
    with fx.serve({}) as (base, _):
        assert cli("download", "sarcasm", "--base-url", base, "--root", ws) == 2
    err = capsys.readouterr().err
    assert "404" in err and "place the file at" in err
    with fx.serve({"mirror/sarcasm.pkl": good}) as (base, server):
        assert cli("download", "sarcasm", "--base-url", base, "--root", ws) == 0
        # the mirror changes its bytes: a fresh workspace file is checked against the first-use record
        dest = ws / "raw" / "sarcasm" / "sarcasm.pkl"
        dest.unlink()
        server.files["mirror/sarcasm.pkl"] = good[:100] + bytes([good[100] ^ 1]) + good[101:]
        assert cli("download", "sarcasm", "--base-url", base, "--root", ws) == 2
        assert "checksum mismatch" in capsys.readouterr().err
        assert not dest.exists() and dest.with_name("sarcasm.pkl.quarantine").exists()
        # a damaged workspace copy is replaced by a good download
        server.files["mirror/sarcasm.pkl"] = good
        dest.write_bytes(good[:-10])
        assert cli("download", "sarcasm", "--base-url", base, "--root", ws) == 0
        assert dest.read_bytes() == good
