"""Trifeatures preprocessing: validation split, bimodal pairs, tasks, processed files, and the data module."""

import shutil

import numpy as np
import pytest
import torch

from infmask.data import trifeatures as T

KEY = np.array([100, 10, 1])


@pytest.fixture(scope="module")
def raw32(tmp_path_factory):
    out = tmp_path_factory.mktemp("trifeatures") / "raw32"
    T.generate(out, seed=42, size=32, progress=False)
    return out


@pytest.fixture(scope="module")
def proc32(raw32):
    out = raw32.parent / "proc32"
    T.preprocess(raw32, out, image_size=32, val_fraction=0.1, max_size=10000, data_seed=42, progress=False)
    return out


def _triplets(attrs):
    return set((attrs @ KEY).tolist())


# ---------------------------------------------------------------------------------------------------------------
# Pairs against slow oracles


def test_allowed_pairs_equal_the_double_loop():
    rng = np.random.default_rng(0)
    attrs = np.stack([rng.integers(0, 3, 40), rng.integers(0, 10, 40), rng.integers(0, 10, 40)], axis=1)
    perm = rng.permutation(10)
    for biased in (False, True):
        want = [(a, b) for a in range(40) for b in range(40)
                if attrs[a, 0] == attrs[b, 0] and (not biased or perm[attrs[a, 1]] == attrs[b, 2])]
        got = T.allowed_pairs(attrs, perm, biased)
        assert [tuple(p) for p in got.tolist()] == want
    assert (0, 0) in {tuple(p) for p in T.allowed_pairs(attrs, perm, False).tolist()}  # a = b included


def test_task_labels_equal_the_definitions():
    rng = np.random.default_rng(1)
    attrs = np.stack([rng.integers(0, 10, 50), rng.integers(0, 10, 50), rng.integers(0, 10, 50)], axis=1)
    perm = rng.permutation(10)
    pairs = rng.integers(0, 50, (200, 2))
    got = T.task_labels(pairs, attrs, perm)
    for (a, b), row in zip(pairs, got):
        assert row.tolist() == [attrs[a, 0], attrs[a, 1], attrs[b, 1], int(perm[attrs[a, 1]] == attrs[b, 2])]


def test_sample_pairs_is_deterministic_and_without_replacement():
    attrs = T.triplet_attributes().repeat(2, axis=0)
    p1 = T.sample_pairs(attrs, 5, biased=False, max_size=3000)
    p2 = T.sample_pairs(attrs, 5, biased=False, max_size=3000)
    assert np.array_equal(p1, p2) and len(p1) == 3000
    assert len({tuple(p) for p in p1.tolist()}) == 3000
    assert not np.array_equal(p1, T.sample_pairs(attrs, 6, biased=False, max_size=3000))
    with pytest.raises(ValueError, match="max_size"):
        T.sample_pairs(attrs, 5, biased=False, max_size=0)


# ---------------------------------------------------------------------------------------------------------------
# Processed directory


def test_processed_splits_are_disjoint_combinations(proc32):
    man = T.read_manifest(proc32)
    counts = man["params"]["counts"]
    assert {s: counts[s]["images"] for s in T.SPLITS} == {"train": 2160, "val": 240, "test": 200}
    assert {s: counts[s]["triplets"] for s in T.SPLITS} == {"train": 720, "val": 80, "test": 200}
    attrs = {s: np.load(proc32 / f"attributes_{s}.npy") for s in T.SPLITS}
    trip = {s: _triplets(attrs[s]) for s in T.SPLITS}
    assert not trip["val"] & trip["train"] and not trip["val"] & trip["test"] and not trip["train"] & trip["test"]
    assert len(trip["train"] | trip["val"] | trip["test"]) == 1000
    # all three images of a held-out triplet go to val
    _, n = np.unique(attrs["val"] @ KEY, return_counts=True)
    assert (n == 3).all()
    # labels parse back and agree with the attribute arrays
    for s in T.SPLITS:
        rows = T.read_labels(proc32 / f"labels_{s}.csv")
        assert np.array_equal(np.array([(r["shape"], r["texture"], r["colour"]) for r in rows]), attrs[s])
    # the val split does not come from test: its images are raw train images
    raw_train = np.load(proc32.parent / "raw32" / "images_train.npy")
    val_images = np.load(proc32 / "images_val.npy")
    raw_rows = T.read_labels(proc32.parent / "raw32" / "labels.csv")
    by_name = {r["filename"]: r for r in raw_rows}
    for r in T.read_labels(proc32 / "labels_val.csv")[:10]:
        src = by_name[r["filename"]]
        assert src["split"] == "train"
        assert np.array_equal(raw_train[src["index"]], val_images[r["index"]])


def test_pairs_share_shape_biased_pairs_are_correlated_and_synergy_is_about_ten_percent(proc32):
    perm = np.array(T.read_manifest(proc32)["params"]["colour_permutation"])
    assert np.array_equal(perm, T.colour_permutation(42))
    assert sorted(perm.tolist()) == list(range(10))
    for s in T.SPLITS:
        d = T.load_processed(proc32, s)
        a = d["attributes"]
        for tag in ("unbiased", "biased"):
            p = d[f"pairs_{tag}"]
            assert (a[p[:, 0], 0] == a[p[:, 1], 0]).all()  # shared = shape
            assert len({tuple(x) for x in p.tolist()}) == len(p)
        pb = d["pairs_biased"]
        assert (perm[a[pb[:, 0], 1]] == a[pb[:, 1], 2]).all(), "every biased pair is correlated"
        n_allowed = len(T.allowed_pairs(a, perm, False))
        assert len(d["pairs_unbiased"]) == min(10000, n_allowed)
        labels = d["probe_labels"]
        assert np.array_equal(labels, T.task_labels(d["pairs_unbiased"], a, perm))
        assert 0.07 < labels[:, 3].mean() < 0.13, (s, labels[:, 3].mean())
        assert set(np.unique(labels[:, 0])) == set(range(10))
    train = T.load_processed(proc32, "train")
    assert len(train["pairs_unbiased"]) == len(train["pairs_biased"]) == 10000
    # ≈576k allowed on the 2400-image train split (the reference), fewer on the 2160 kept here
    assert 400_000 < len(T.allowed_pairs(train["attributes"], perm, False)) < 520_000


def test_preprocess_is_deterministic_and_resizes(raw32, proc32, tmp_path):
    again = T.preprocess(raw32, tmp_path / "again", image_size=32, progress=False)
    first = T.read_manifest(proc32)
    assert again["files"] == first["files"]
    small = T.preprocess(raw32, tmp_path / "small", image_size=16, val_fraction=0.1, progress=False)
    assert small["params"]["image_size"] == 16
    imgs16 = np.load(tmp_path / "small" / "images_train.npy")
    imgs32 = np.load(proc32 / "images_train.npy")
    assert imgs16.shape == (2160, 16, 16, 3) and imgs16.dtype == np.uint8
    # an antialiased resize keeps each image's mean colour
    assert np.abs(imgs16.mean((1, 2)) - imgs32.mean((1, 2))).max() < 3.0
    other = T.preprocess(raw32, tmp_path / "other", image_size=32, data_seed=43, progress=False)
    assert other["params"]["colour_permutation"] != first["params"]["colour_permutation"]
    assert _triplets(np.load(tmp_path / "other" / "attributes_val.npy")) != \
        _triplets(np.load(proc32 / "attributes_val.npy"))


def test_zero_val_fraction_gives_an_empty_val_split(raw32, tmp_path):
    man = T.preprocess(raw32, tmp_path / "noval", image_size=32, val_fraction=0.0, max_size=50, progress=False)
    assert man["params"]["counts"]["val"]["images"] == 0
    assert man["params"]["counts"]["train"]["pairs_unbiased"] == 50
    assert np.load(tmp_path / "noval" / "images_val.npy").shape == (0, 32, 32, 3)


def test_preprocess_refuses_bad_arguments_and_an_invalid_raw_set(raw32, tmp_path):
    for kw, key in (({"val_fraction": 1.0}, "val_fraction"), ({"max_size": 0}, "max_size"),
                    ({"image_size": 4}, "image_size"), ({"data_seed": -3}, "data_seed")):
        with pytest.raises(ValueError, match=key):
            T.preprocess(raw32, tmp_path / "x", progress=False, **kw)
    bad = tmp_path / "bad"
    shutil.copytree(raw32, bad)
    with open(bad / "images_train.npy", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ValueError, match="raw_dir"):
        T.preprocess(bad, tmp_path / "y", progress=False)
    assert not (tmp_path / "y").exists() and not (tmp_path / "x").exists()


def test_corrupt_processed_file_is_detected(proc32, tmp_path):
    d = tmp_path / "p"
    shutil.copytree(proc32, d)
    p = d / "pairs_train_biased.npy"
    arr = np.load(p)
    arr[0, 0] += 1
    np.save(p, arr)
    assert any("pairs_train_biased.npy" in q for q in T.verify(d))
    from infmask.data.trifeatures_datamodule import TrifeaturesDataModule

    with pytest.raises(ValueError, match="processed_dir"):
        TrifeaturesDataModule(d, image_size=32).setup("fit")


# ---------------------------------------------------------------------------------------------------------------
# Data module


@pytest.fixture(scope="module")
def dm32(proc32):
    from infmask.data.trifeatures_datamodule import TrifeaturesDataModule

    dm = TrifeaturesDataModule(proc32, biased=True, batch_size=16, image_size=32)
    dm.setup("fit")
    return dm


def test_datamodule_ssl_batches(dm32):
    loader = dm32.train_dataloader()
    assert len(loader) == 10000 // 16
    raw = next(iter(loader))
    assert set(raw) == {"raw"} and [t.shape for t in raw["raw"]] == [(16, 32, 32, 3)] * 2
    assert raw["raw"][0].dtype == torch.uint8
    b = dm32.on_after_batch_transfer(raw, 0)
    assert set(b) == {"views", "x"} and len(b["views"]) == 2
    for v in (*b["views"], b["x"]):
        assert len(v) == 2 and all(t.shape == (16, 3, 32, 32) and t.dtype == torch.float32 for t in v)
    assert not torch.allclose(b["views"][0][0], b["views"][1][0])
    assert not torch.allclose(b["views"][0][0], b["views"][0][1])
    assert dm32.transform_batch(b) is b  # idempotent on transformed batches
    # the SSL train pairs are the biased ones: every pair correlated
    d = T.load_processed(dm32.processed_dir, "train")
    perm = d["colour_permutation"]
    ds = dm32.ssl_dataset("train")
    p = ds.pairs
    assert (perm[d["attributes"][p[:, 0], 1]] == d["attributes"][p[:, 1], 2]).all()
    # SSL val comes from the val split
    assert len(dm32.val_dataloader().dataset) == len(T.load_processed(dm32.processed_dir, "val")["pairs_biased"])


def test_datamodule_probe_batches_carry_matching_labels(dm32):
    assert dm32.tasks == {"share": "multiclass", "unique1": "multiclass", "unique2": "multiclass",
                          "synergy": "binary"}
    d = T.load_processed(dm32.processed_dir, "test")
    batches = list(dm32.probe_batches("test"))
    n = sum(len(b["y"]["share"]) for b in batches)
    assert n == len(d["pairs_unbiased"])  # probe pairs are the unbiased ones
    b = batches[0]
    assert set(b) == {"x", "y"} and set(b["y"]) == set(dm32.tasks)
    p = d["pairs_unbiased"][:16]
    a = d["attributes"]
    assert b["y"]["share"].tolist() == a[p[:, 0], 0].tolist()
    assert b["y"]["unique2"].tolist() == a[p[:, 1], 1].tolist()
    # un-augmented: the probe input is a fixed function of the image
    again = next(iter(dm32.probe_batches("test")))
    assert torch.equal(b["x"][0], again["x"][0])
    with pytest.raises(ValueError, match="split"):
        dm32.probe_dataloader("dev")


def test_datamodule_drives_a_lightning_fit(dm32):
    import pytorch_lightning as pl

    seen = []

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            seen.append(sorted(batch))
            assert batch["views"][0][0].shape == (16, 3, 32, 32)
            return (self.w - batch["views"][0][0].mean()) ** 2

        def validation_step(self, batch, batch_idx):
            seen.append(sorted(batch))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(Tiny(), datamodule=dm32)
    assert seen and all(k == ["views", "x"] for k in seen)
