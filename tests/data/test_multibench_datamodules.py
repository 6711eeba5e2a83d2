"""MultiBench data modules: batches, padding, the reference augmentation pipelines (shared coins), splits."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from infmask.data import multibench as mb
from infmask.data import multibench_datamodules as mdm
from helpers import multibench_fixtures as fx


@pytest.fixture(scope="module")
def affect_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("affect")
    (d / "humor.pkl").write_bytes(fx.affect_pickle("humor", sizes={"train": 24, "valid": 8, "test": 8}))
    mb.preprocess_affect(d / "humor.pkl", d / "out", "humor", progress=False)
    return d / "out"


@pytest.fixture(scope="module")
def mimic_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mimic")
    (d / "im.pk").write_bytes(pickle.dumps(fx.mimic_dict(60)))
    mb.preprocess_mimic(d / "im.pk", d / "out", progress=False)
    return d / "out"


@pytest.fixture(scope="module")
def vt_dir(tmp_path_factory):
    d = fx.vt_raw_dir(tmp_path_factory.mktemp("vt"), seed=0, prefix="e")
    mb.preprocess_vt(d, d / "out", val_fraction=0.1, data_seed=42, progress=False)
    return d / "out"


def test_parse_augmentations():
    assert mdm.parse_augmentations("drop+noise", 2) == (True, [["drop", "noise"]])
    assert mdm.parse_augmentations(["simclr", "noise+drop"], 2) == (False, [["simclr"], ["noise", "drop"]])
    for bad, words in (("drop+blur", "unknown step 'blur'"), (["noise"], "1 pipelines for 2"), (3, "string"),
                       ("", "non-empty")):
        with pytest.raises(ValueError, match="augmentations") as e:
            mdm.parse_augmentations(bad, 2)
        assert words in str(e.value)


def test_affect_batches_pad_to_the_batch_longest(affect_dir):
    dm = mdm.AffectDataModule(affect_dir, keys=["vision", "text", "audio"], batch_size=5)
    dm.setup()
    lengths = mb.load_split(affect_dir, "train")["length"]
    ds = dm.ssl_dataset("train")
    b = ds.__getitems__([3, 0, 7])
    t = int(lengths[[3, 0, 7]].max())
    assert [tuple(x.shape) for x in b["raw"]] == [(3, t, 371), (3, t, 300), (3, t, 81)]
    assert b["lengths"].tolist() == lengths[[3, 0, 7]].tolist()
    full = mb.load_split(affect_dir, "train")["text"]
    np.testing.assert_array_equal(b["raw"][1][1].numpy(), full[0, :t])   # order of the request is kept
    pb = next(dm.probe_batches("test"))
    assert set(pb) == {"x", "y"} and pb["y"]["label"].dtype == torch.int64 and dm.tasks == {"label": "binary"}


def _joint_batch(b=64, t=20):
    x = [torch.ones(b, t, 3), torch.ones(b, t, 2) * 2]
    lengths = torch.randint(1, t + 1, (b,))
    valid = torch.arange(t)[None, :] < lengths[:, None]
    return [m * valid[..., None] for m in x], lengths, valid


def test_joint_pipeline_shares_the_coin_across_modalities(affect_dir):
    dm = mdm.AffectDataModule(affect_dir, keys=["vision", "text"], augmentations="noise")
    torch.manual_seed(0)
    raw, lengths, valid = _joint_batch()
    v = dm.augment_all(raw, lengths)
    changed = [((a - r).abs().flatten(1).sum(1) > 0) for a, r in zip(v, raw)]
    assert torch.equal(changed[0], changed[1]), "one coin per sample for every modality"
    assert 0 < changed[0].sum() < 64
    for a in v:
        assert not a[~valid].any(), "padding stays zero"


def test_per_modality_pipelines_draw_their_own_coins(mimic_dir):
    dm = mdm.MimicDataModule(mimic_dir, augmentations=["noise", "noise"])
    torch.manual_seed(0)
    raw = [torch.zeros(256, 5), torch.zeros(256, 24, 12)]
    v = dm.augment_all(raw)
    c0, c1 = (v[0].abs().sum(1) > 0), (v[1].abs().flatten(1).sum(1) > 0)
    assert not torch.equal(c0, c1) and 0.3 < c0.float().mean() < 0.7


def test_drop_counts_each_samples_own_rows():
    torch.manual_seed(1)
    b, t = 512, 30
    lengths = torch.randint(1, t + 1, (b,))
    valid = torch.arange(t)[None, :] < lengths[:, None]
    x = torch.ones(b, t, 4) * valid[..., None]
    coin = torch.rand(b) < 0.5
    out = mdm.drop_rows(x, lengths, coin)
    zeroed = ((out == 0).all(-1) & valid).sum(1)
    assert (zeroed[~coin] == 0).all()
    assert (zeroed <= torch.round(0.8 * lengths)).all()
    assert not out[~valid].any()
    assert zeroed[coin].float().mean() > 0.2 * lengths[coin].float().mean()  # E[f] = 0.4


def test_joint_drop_noise_views_and_probe_inputs(affect_dir):
    dm = mdm.AffectDataModule(affect_dir, keys=["vision", "text"], batch_size=8)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    out = dm.transform_batch(batch)
    assert set(out) == {"views", "x"} and len(out["views"]) == 2
    for v1, v2, x in zip(*out["views"], out["x"]):
        assert v1.shape == v2.shape == x.shape and v1.dtype == torch.float32
    assert torch.equal(out["x"][0], batch["raw"][0].float())


def test_mimic_task_column(mimic_dir):
    dm = mdm.MimicDataModule(mimic_dir, task=3, batch_size=100)
    dm.setup()
    assert dm.tasks == {"icd9_3": "binary"}
    pb = next(dm.probe_batches("train"))
    np.testing.assert_array_equal(pb["y"]["icd9_3"].numpy(), mb.load_split(mimic_dir, "train")["y_icd9"][:, 3])
    assert [tuple(x.shape) for x in pb["x"]] == [(48, 5), (48, 24, 12)]
    with pytest.raises(ValueError, match="task"):
        mdm.MimicDataModule(mimic_dir, task=20)


def test_vt_modules_tasks_views_and_reference_protocol(vt_dir):
    dm = mdm.VisionTouchDataModule(vt_dir, keys=["image", "force", "proprio"], task="contact_next",
                                   augmentations=["simclr", "noise+drop", "noise"], image_size=64, batch_size=6)
    dm.setup()
    assert dm.tasks == {"contact_next": "binary"} and dm.reference_val_split == "test"
    out = dm.transform_batch(next(iter(dm.train_dataloader())))
    assert [tuple(v.shape) for v in out["views"][0]] == [(6, 3, 64, 64), (6, 32, 6), (6, 8)]
    reg = mdm.VisionTouchDataModule(vt_dir, task="ee_yaw_next", image_size=64)
    reg.setup()
    pb = next(reg.probe_batches("val"))
    assert reg.tasks == {"ee_yaw_next": "regression"} and pb["y"]["ee_yaw_next"].shape[1:] == (4,)
    sizes = {s: len(reg.probe_dataset(s)) for s in mb.SPLITS}
    ref = mdm.VisionTouchDataModule(vt_dir, task="ee_yaw_next", image_size=64, protocol="reference", batch_size=300)
    ref.setup()
    assert len(ref.probe_dataset("train")) == sizes["train"] + sizes["val"]
    assert len(ref.probe_dataset("val")) == sizes["test"]
    a = mb.load_split(vt_dir, "train")
    b = mb.load_split(vt_dir, "val")
    img = next(ref.probe_batches("train"))["x"][0]
    assert img.shape[0] == sizes["train"] + sizes["val"]
    want = np.concatenate([a["image"], b["image"]])[[0, -1]]
    got = ref.probe_dataset("train").__getitems__([0, sizes["train"] + sizes["val"] - 1])["raw"][0].numpy()
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="simclr"):
        mdm.VisionTouchDataModule(vt_dir, augmentations=["noise", "simclr"])


def test_max_items_is_a_seeded_subset(affect_dir):
    dm = mdm.AffectDataModule(affect_dir, max_items=10, data_seed=3)
    dm.setup()
    ds = dm.probe_dataset("train")
    assert len(ds) == 10 and np.all(np.diff(ds.index) > 0)
    again = mdm.AffectDataModule(affect_dir, max_items=10, data_seed=3)
    again.setup()
    assert np.array_equal(again.probe_dataset("train").index, ds.index)


def test_damaged_processed_dir_is_refused(tmp_path):
    (tmp_path / "m.pkl").write_bytes(fx.affect_pickle("mosi", sizes={"train": 4, "valid": 3, "test": 3}))
    out = tmp_path / "out"
    mb.preprocess_affect(tmp_path / "m.pkl", out, "mosi", progress=False)
    (out / "vision_val.npy").write_bytes(b"x")
    dm = mdm.AffectDataModule(out)
    with pytest.raises(ValueError, match="processed_dir"):
        dm.setup()


def test_datasets_pickle_as_file_references(vt_dir):
    """Loader workers started with spawn get the memmaps' file names, not copies of the arrays."""
    dm = mdm.VisionTouchDataModule(vt_dir, task="contact_next", keys=["image", "proprio"],
                                   augmentations=["simclr", "noise"], protocol="reference")
    dm.setup()
    ds = dm.probe_dataset("train")
    blob = pickle.dumps(ds)
    assert len(blob) < 100_000 < len(ds.arrays["image"]) * 128 * 128 * 3
    again = pickle.loads(blob)
    idx = [0, len(ds) - 1]
    for a, b in zip(ds.__getitems__(idx)["raw"], again.__getitems__(idx)["raw"]):
        assert torch.equal(a, b)
