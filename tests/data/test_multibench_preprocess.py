"""MultiBench preprocessing against the reference's rules, computed the slow, obvious way on fixture data."""
from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pytest

from infmask.data import multibench as mb
from helpers import multibench_fixtures as fx

# ------------------------------------------------------------------------------------------------ affect


def _slow_affect(part: dict):
    """The reference's per-sample loop: drop all-zero text, audio -inf -> 0, crop at the first non-zero text row."""
    out = []
    for i in range(len(part["text"])):
        text = part["text"][i]
        if text.sum() == 0:
            continue
        audio = np.where(part["audio"][i] == -np.inf, 0, part["audio"][i])
        start = np.nonzero(text)[0][0]
        label = float(np.asarray(part["labels"][i]).reshape(-1)[0])
        out.append((part["vision"][i][start:], text[start:], audio[start:], 1 if label > 0 else 0, label))
    return out


@pytest.mark.parametrize("dataset", ["mosi", "humor"])
def test_affect_matches_per_sample_reference(dataset):
    rng = np.random.default_rng(1)
    part = fx.affect_split(dataset, 12, rng)
    assert (part["audio"] == -np.inf).any() and (part["text"].reshape(len(part["text"]), -1).sum(1) == 0).any()
    arrays, stats = mb.process_affect_split(part, dataset)
    slow = _slow_affect(part)
    assert stats["kept"] == len(slow) == 12 and stats["dropped_zero_text"] == fx.N_ZERO_TEXT
    assert stats["audio_neginf_zeroed"] > 0
    for i, (v, t, a, y, raw) in enumerate(slow):
        n = arrays["length"][i]
        assert n == len(t)
        for name, ref in (("vision", v), ("text", t), ("audio", a)):
            np.testing.assert_array_equal(arrays[name][i, :n], ref.astype(np.float32))
            assert not arrays[name][i, n:].any(), "padding must be zeros at the end"
        assert arrays["label"][i] == y and arrays["label_raw"][i] == np.float32(raw)
    assert arrays["vision"].dtype == np.float32 and arrays["label"].dtype == np.int64
    assert arrays["text"].shape[1:] == (50, 300)
    assert np.isfinite(arrays["audio"]).all()
    assert (arrays["label_raw"] == 0).any() and (arrays["label"][arrays["label_raw"] == 0] == 0).all()


@pytest.mark.parametrize("shape", [(12,), (12, 1), (12, 1, 1)])
def test_affect_label_nesting(shape):
    part = fx.affect_split("mosi", 12, np.random.default_rng(2), n_zero_text=0)
    part["labels"] = part["labels"].reshape(shape)
    arrays, _ = mb.process_affect_split(part, "mosi")
    assert arrays["label"].shape == (12,)


def test_affect_other_nonfinite_values_are_zeroed_and_counted():
    part = fx.affect_split("mosi", 6, np.random.default_rng(3), n_zero_text=0)
    part["vision"][0, -1, 0] = np.nan
    part["text"][1, -1, 5] = np.inf
    arrays, stats = mb.process_affect_split(part, "mosi")
    assert stats["nonfinite_replaced"]["vision"] == 1 and stats["nonfinite_replaced"]["text"] == 1
    assert all(np.isfinite(arrays[m]).all() for m in ("vision", "text", "audio"))


def _affect(dataset="mosi"):
    rng = np.random.default_rng(0)
    return {s: fx.affect_split(dataset, n, rng) for s, n in (("train", 6), ("valid", 4), ("test", 4))}


@pytest.mark.parametrize("mutate, key, words", [
    (lambda d: d.pop("valid"), "valid", "missing key 'valid'"),
    (lambda d: d["train"].pop("audio"), "audio", "missing key 'audio'"),
    (lambda d: d["test"].__setitem__("vision", np.zeros((6, 50, 21), np.float32)), "vision", "(N, 50, 20)"),
    (lambda d: d["train"].__setitem__("text", np.zeros((8, 40, 300), np.float32)), "text", "(N, 50, 300)"),
    (lambda d: d["train"].__setitem__("labels", np.zeros((3, 1, 1))), "labels", "one label per sample"),
    (lambda d: d["valid"]["labels"].__setitem__(0, np.nan), "labels", "non-finite label"),
    (lambda d: d["train"].__setitem__("audio", np.array(["a"] * 8)), "audio", "numeric"),
])
def test_affect_schema_errors_name_the_key(mutate, key, words):
    data = _affect()
    mutate(data)
    with pytest.raises(mb.SchemaError) as e:
        mb.validate_affect(data, "mosi", source="mosi_data.pkl")
    assert e.value.key == key and words in str(e.value) and "mosi_data.pkl" in str(e.value)


def test_affect_preprocess_writes_manifest_atomically(tmp_path):
    pkl = tmp_path / "mosi_data.pkl"
    pkl.write_bytes(fx.affect_pickle("mosi"))
    out = tmp_path / "processed" / "v1"
    info = mb.preprocess_affect(pkl, out, "mosi", progress=False, extra_params={"raw_id": "abc"})
    assert mb.verify(out) == [] and info["params"]["raw_id"] == "abc"
    assert not list(out.parent.glob(".*partial*"))
    split = mb.load_split(out, "val")
    assert set(split) == {"vision", "text", "audio", "length", "label", "label_raw"}
    # damage is detected
    f = out / "label_test.npy"
    f.write_bytes(f.read_bytes()[:-1] + b"\x01")
    assert any("sha256" in p for p in mb.verify(out))
    assert mb.verify(out, deep=False) == []
    (out / "text_train.npy").unlink()
    assert any("missing" in p for p in mb.verify(out, deep=False))


def test_affect_preprocess_failure_leaves_nothing(tmp_path):
    data = _affect()
    data["test"]["text"][:] = 0  # nothing survives the drop
    pkl = tmp_path / "mosi_data.pkl"
    pkl.write_bytes(pickle.dumps(data))
    with pytest.raises(mb.SchemaError, match="no sample left"):
        mb.preprocess_affect(pkl, tmp_path / "out", "mosi", progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial*"))


# ------------------------------------------------------------------------------------------------ MIMIC


def test_mimic_split_matches_reference_construction():
    for n in (19, 80, 1001):
        items = [(i, "y") for i in range(n)]
        random.seed(10)
        random.shuffle(items)
        ref = [i for i, _ in items]
        split = mb.mimic_split(n)
        assert split["val"].tolist() == ref[: n // 10]
        assert split["test"].tolist() == ref[n // 10: n // 5]
        assert split["train"].tolist() == ref[n // 5:]


def test_mimic_preprocess(tmp_path):
    d = fx.mimic_dict(80)
    pkl = tmp_path / "im.pk"
    pkl.write_bytes(pickle.dumps(d))
    out = tmp_path / "mimic"
    info = mb.preprocess_mimic(pkl, out, progress=False)
    assert info["params"]["nonfinite_replaced"] == {"adm_features_all": 2, "ep_tdata": 25, "adm_labels_all": 0}
    splits = {s: mb.load_split(out, s, mmap=False) for s in mb.SPLITS}
    static = np.concatenate([splits[s]["static"] for s in mb.SPLITS])
    series = np.concatenate([splits[s]["timeseries"] for s in mb.SPLITS])
    index = np.concatenate([splits[s]["index"] for s in mb.SPLITS])
    assert sorted(index.tolist()) == list(range(80))
    # slow oracle: nan/inf -> 0, then global z-score
    s_ref = np.nan_to_num(d["adm_features_all"], nan=0.0, posinf=0.0, neginf=0.0)
    s_ref = (s_ref - s_ref.mean(0)) / s_ref.std(0)
    t_ref = np.nan_to_num(d["ep_tdata"], nan=0.0, posinf=0.0, neginf=0.0)
    t_ref = (t_ref - t_ref.mean((0, 1))) / t_ref.std((0, 1))
    np.testing.assert_allclose(static, s_ref[index], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(series, t_ref[index], rtol=1e-5, atol=1e-5)
    y = np.concatenate([splits[s]["y_icd9"] for s in mb.SPLITS])
    np.testing.assert_array_equal(y, d["y_icd9"][index].astype(np.int64))
    assert [len(splits[s]["index"]) for s in ("val", "test", "train")] == [8, 8, 64]


@pytest.mark.parametrize("key, value, words", [
    ("ep_tdata", None, "missing key 'ep_tdata'"),
    ("ep_tdata", np.zeros((80, 24, 30)), "(N, 24, 12)"),
    ("adm_features_all", np.zeros((79, 5)), "(80, 5)"),
    ("y_icd9", np.zeros((80, 19)), "(80, 20)"),
    ("y_icd9", np.full((80, 20), np.nan), "non-finite label"),
    ("y_icd9", np.full((80, 20), 2.0), "must be 0 or 1"),
    ("adm_labels_all", np.zeros(80), "(N, K)"),
])
def test_mimic_schema_errors_name_the_key(key, value, words):
    d = fx.mimic_dict(80)
    if value is None:
        d.pop(key)
    else:
        d[key] = value
    with pytest.raises(mb.SchemaError) as e:
        mb.validate_mimic(d, source="im.pk")
    assert e.value.key == key and words in str(e.value)


# ------------------------------------------------------------------------------------------------ Vision&Touch


def test_vt_file_split_keeps_reference_test_and_carves_val_from_train():
    names = [f"f{i:03d}.h5" for i in range(40)]
    split = mb.vt_file_split(names, 0.1, 42)
    order = np.random.default_rng(42).permutation(40)
    n_test = int(0.2 * 40)
    assert sorted(split["test"]) == sorted(order[40 - n_test:].tolist())
    ref_train = set(order[: 40 - n_test].tolist())
    assert set(split["val"]) | set(split["train"]) == ref_train
    assert not set(split["val"]) & set(split["train"]) and len(split["val"]) == 3
    assert mb.vt_file_split(names, 0.1, 42) == split
    assert mb.vt_file_split(names, 0.1, 7)["test"] != split["test"]


@pytest.fixture(scope="module")
def vt_raw(tmp_path_factory):
    return fx.vt_raw_dir(tmp_path_factory.mktemp("vt"), seed=5)


def test_vt_items_match_the_spec(vt_raw, tmp_path):
    import h5py

    out = tmp_path / "vt"
    info = mb.preprocess_vt(vt_raw, out, val_fraction=0.1, data_seed=42, progress=False)
    assert mb.verify(out) == []
    files = mb.find_h5(vt_raw)
    seen = 0
    for split in mb.SPLITS:
        a = mb.load_split(out, split, mmap=False)
        assert a["image"].dtype == np.uint8 and a["image"].shape[1:] == (128, 128, 3)
        assert a["force"].shape[1:] == (32, 6) and a["proprio"].shape[1:] == (8,)
        for r in range(len(a["file"])):
            fi, s = int(a["file"][r]), int(a["step"][r])
            with h5py.File(files[fi], "r") as f:
                np.testing.assert_array_equal(a["image"][r], f["image"][s])
                np.testing.assert_allclose(a["force"][r], np.tanh(f["ee_forces_continuous"][s][-32:]), rtol=1e-6)
                np.testing.assert_allclose(a["proprio"][r], f["proprio"][s][:8], rtol=1e-6)
                np.testing.assert_allclose(a["ee_yaw_next"][r], f["proprio"][s + 1][:4], rtol=1e-6)
                assert a["contact_next"][r] == int(f["contact"][s + 1].sum() > 0)
        for fi in np.unique(a["file"]):
            steps = a["step"][a["file"] == fi]
            assert steps[:48].tolist() == list(range(48)) and 0 <= steps[48] < 48
            assert steps[48] == mb.vt_random_step(42, int(fi))
        seen += len(a["file"])
    assert seen == 4 * 49 and info["params"]["counts"]["test"]["files"] == 1


def test_vt_schema_errors_name_the_key(tmp_path):
    import h5py

    p = tmp_path / "bad.h5"
    fx.vt_episode(p, np.random.default_rng(0), compression=None)
    with h5py.File(p, "a") as f:
        del f["contact"]
    with pytest.raises(mb.SchemaError, match="missing dataset 'contact'") as e:
        mb.read_vt_episode(p, 0, 42)
    assert e.value.key == "contact"
    with h5py.File(p, "a") as f:
        f.create_dataset("contact", data=np.zeros((50, 50)))
        del f["image"]
        f.create_dataset("image", data=np.zeros((50, 64, 64, 3), np.uint8))
    with pytest.raises(mb.SchemaError, match=r"\['image'\]: expected shape \(50, 128, 128, 3\)"):
        mb.read_vt_episode(p, 0, 42)
    with h5py.File(p, "a") as f:
        del f["image"]
        f.create_dataset("image", data=np.full((50, 128, 128, 3), 300, np.int32))
    with pytest.raises(mb.SchemaError, match="uint8"):
        mb.read_vt_episode(p, 0, 42)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(mb.SchemaError, match="not a readable HDF5"):
        mb.read_vt_episode(tmp_path / "junk.h5", 0, 42)


def test_vt_channels_first_images_are_transposed(tmp_path):
    import h5py

    p = tmp_path / "cf.h5"
    fx.vt_episode(p, np.random.default_rng(0), compression=None)
    with h5py.File(p, "a") as f:
        img = f["image"][()]
        del f["image"]
        f.create_dataset("image", data=img.transpose(0, 3, 1, 2))
    ep = mb.read_vt_episode(p, 0, 42)
    np.testing.assert_array_equal(ep["image"][:48], img[:48])


def test_manifest_is_valid_json_with_counts(tmp_path):
    pkl = tmp_path / "m.pkl"
    pkl.write_bytes(fx.affect_pickle("sarcasm", sizes={"train": 4, "valid": 3, "test": 3}))
    mb.preprocess_affect(pkl, tmp_path / "o", "sarcasm", progress=False)
    man = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert man["params"]["counts"]["train"]["kept"] == 4 and man["params"]["dims"]["vision"] == 371
    assert all(len(v["sha256"]) == 64 for v in man["files"].values())
