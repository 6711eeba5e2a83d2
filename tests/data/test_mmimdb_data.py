"""MM-IMDb data: verified download from a local HTTP mirror, safe extraction, the index (schema, skipped items,
labels), poster canvases, the data module's batches and the frozen-feature cache. Tiny fixture, tiny towers."""
from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from helpers.mmimdb_support import HUB_NAME, TEST_IMAGE_SIZE, TEST_MAX_LENGTH, mirror_tree, serve, tiny_clip  # noqa: E402
from helpers.mmimdb_support import make_fixture, write_archive  # noqa: E402

from infmask.data import mmimdb as M  # noqa: E402
from infmask.data import mmimdb_stages as S  # noqa: E402
from infmask.data.interface import DatasetError  # noqa: E402
from infmask.data.mmimdb_datamodule import PosterTransforms  # noqa: E402
from infmask.data.registry import DATASETS  # noqa: E402
from infmask.data.urls import mirror_url  # noqa: E402
from infmask.config import ConfigError, build_config  # noqa: E402
from infmask.errors import UsageError  # noqa: E402
from infmask.stages.data_stages import datamodule_for, paths_for, settings_for  # noqa: E402
from infmask.workspace import Workspace  # noqa: E402

ENTRY = DATASETS["mmimdb"]


def _paths(ws):
    return paths_for(ws, ENTRY)


def _settings(cfg):
    return settings_for(cfg, ENTRY)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("mmimdb")
    fixture = make_fixture(base / "src")
    archive = write_archive(base / "src", base / "mmimdb.tar.gz")
    weights = base / "weights"
    tiny_clip(weights)
    with serve(mirror_tree(base / "mirror", archive)) as url:
        ws = Workspace.open(base / "ws")
        yield {"base": base, "fixture": fixture, "url": url, "ws": ws, "weights": weights, "archive": archive}


def _cfg(env, *extra, preset="smoke"):
    return build_config("mmimdb", "infmasking", preset, overrides=[
        f"data.weights_dir={env['weights']}", f"data.image_size={TEST_IMAGE_SIZE}", *extra])


@pytest.fixture(scope="module")
def indexed(env):
    logger = logging.getLogger("infmask.data")
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    h = Keep(level=logging.WARNING)
    logger.addHandler(h)
    try:
        S.download(ENTRY, _paths(env["ws"]), base_url=env["url"])
        out = S.preprocess(ENTRY, _paths(env["ws"]), _settings(_cfg(env)))
    finally:
        logger.removeHandler(h)
    return {"dir": out, "warnings": [r.getMessage() for r in records]}


def test_download_is_verified_recorded_and_idempotent(env, indexed, capsys):
    ws, url = env["ws"], env["url"]
    mirrored = mirror_url(ENTRY.files[0].url, ENTRY.files[0].name, url)
    assert mirrored == f"{url}/download/mmimdb/mmimdb.tar.gz"
    record = json.loads(ws.checksums.read_text())["files"][mirrored]
    assert record["sha256"] == M.sha256_file(env["archive"]) and record["size"] == env["archive"].stat().st_size
    assert M.find_source(S.raw_dir(_paths(ws))) == S.raw_dir(_paths(ws)) / "extracted" / "mmimdb"
    S.download(ENTRY, _paths(ws), base_url=url)
    assert "nothing to do" in capsys.readouterr().out


def test_unsafe_archive_member_is_refused(env, tmp_path):
    evil = write_archive(env["base"] / "src", tmp_path / "evil.tar.gz", extra={"mmimdb/../../escaped.txt": b"x"})
    ws = Workspace.open(tmp_path / "ws")
    with serve(mirror_tree(tmp_path / "mirror", evil)) as url:
        with pytest.raises(DatasetError, match=r"'\.\.'"):
            S.download(ENTRY, _paths(ws), base_url=url)
    raw = S.raw_dir(_paths(ws))
    assert not (raw / "extracted").exists() and not list(tmp_path.rglob("escaped.txt"))
    assert M.find_source(raw) is None


def test_index_skips_bad_items_with_warnings_and_keeps_the_rest(env, indexed):
    roles, ids = env["fixture"]["roles"], env["fixture"]["ids"]
    manifest = M.read_manifest(indexed["dir"])
    assert manifest["counts"] == {"train": 28, "val": 10, "test": 10}
    assert manifest["skipped"] == {"corrupt_poster": 1, "missing_field": 1}
    assert manifest["skipped_examples"]["corrupt_poster"] == [roles["corrupt_poster"]]
    text = "\n".join(indexed["warnings"])
    assert roles["corrupt_poster"] in text and "corrupt poster" in text
    assert roles["missing_plot"] in text and "missing field 'plot'" in text
    assert "skipped 2 of 50" in text
    index = M.load_index(indexed["dir"])
    assert roles["truncated_poster"] in index["ids"] and roles["string_plot"] in index["ids"]
    assert set(index["split"]) == {"train", "val", "test"}
    assert [i for i, s in zip(index["ids"], index["split"]) if s == "val"] == ids["dev"]   # dev -> val
    assert M.verify(indexed["dir"]) == []


def test_labels_are_alphabetical_lowercase_and_drop_unknown_genres(env, indexed):
    index = M.load_index(indexed["dir"])
    assert tuple(index["genres"]) == M.GENRES == tuple(sorted(M.GENRES)) and len(M.GENRES) == 23
    assert "sci-fi" in M.GENRES and "film-noir" in M.GENRES
    ds = env["fixture"]["root"] / "dataset"
    for row in (0, 5, len(index["ids"]) - 1):
        raw = json.loads((ds / f"{index['ids'][row]}.json").read_text())["genres"]
        known = {g.lower() for g in raw} - {"reality-tv"}
        assert {M.GENRES[j] for j in np.flatnonzero(index["labels"][row])} == known
    assert index["labels"].dtype == np.uint8


def test_preprocess_is_idempotent_and_rebuilds_a_damaged_index(env, indexed, capsys):
    before = (indexed["dir"] / "manifest.json").stat().st_mtime_ns
    S.preprocess(ENTRY, _paths(env["ws"]), _settings(_cfg(env)))
    assert (indexed["dir"] / "manifest.json").stat().st_mtime_ns == before
    assert "indexed" not in capsys.readouterr().out


def test_split_and_metadata_schema():
    assert M.parse_metadata({"plot": ["x", " "], "genres": ["Drama", "Game-Show"]}) == (["x"], ["drama"], None)
    assert M.parse_metadata({"plot": "one", "genres": "Sci-Fi"}) == (["one"], ["sci-fi"], None)
    for meta, why in (({"genres": []}, "missing field 'plot'"), ({"plot": ["x"]}, "missing field 'genres'"),
                      ({"plot": [""], "genres": []}, "no text"), ({"plot": 3, "genres": []}, "not a list"),
                      ([1], "not a JSON object")):
        assert why in M.parse_metadata(meta)[2]


def test_split_file_errors_name_the_file(tmp_path):
    p = tmp_path / "split.json"
    p.write_text(json.dumps({"train": ["1"], "test": []}))
    with pytest.raises(ValueError, match="split file .*dev"):
        M.read_split(p)
    p.write_text("[1, 2]")
    with pytest.raises(ValueError, match="split file"):
        M.read_split(p)


def test_poster_canvas_and_probe_crop_match_resize_then_centre_crop():
    from PIL import Image

    rng = np.random.default_rng(0)
    S_ = 64
    t = PosterTransforms(S_, "imagenet")
    for w, h in ((182, 268), (268, 182), (200, 210)):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        canvas = M.poster_canvas(img, S_)
        assert canvas.shape == (*M.canvas_shape(S_), 3) and canvas.dtype == np.uint8
        # reference: Resize(S) (shorter side) + CenterCrop(S)
        nw, nh = (S_, int(S_ * h / w)) if w <= h else (int(S_ * w / h), S_)
        ref = np.asarray(img.resize((nw, nh), Image.Resampling.BILINEAR))
        top, left = int(round((nh - S_) / 2)), int(round((nw - S_) / 2))
        ref = ref[top:top + S_, left:left + S_]
        got = t.probe(torch.from_numpy(canvas)[None])
        mean, std = torch.tensor((0.485, 0.456, 0.406)), torch.tensor((0.229, 0.224, 0.225))
        back = (got[0] * std.view(3, 1, 1) + mean.view(3, 1, 1)).permute(1, 2, 0).numpy() * 255
        assert np.abs(back - ref).max() < 1e-3
    clip = PosterTransforms(S_, "clip").probe(torch.full((1, 91, 64, 3), 255, dtype=torch.uint8))
    white = (1 - torch.tensor((0.48145466, 0.4578275, 0.40821073))) / torch.tensor((0.26862954, 0.26130258, 0.27577711))
    torch.testing.assert_close(clip[0, :, 0, 0], white)
    with pytest.raises(ValueError, match="norm"):
        PosterTransforms(S_, "laion")


class _FakeTrainer:
    def __init__(self, training):
        self.training = training


def test_online_batches_views_masking_and_probe_plots(env, indexed):
    cfg = _cfg(env, "data.text_mask_prob=0.5")
    dm = datamodule_for(cfg, env["ws"])
    dm.setup("fit")
    raw = next(iter(dm.train_dataloader()))
    img, ids = raw["raw"]
    H, W = M.canvas_shape(TEST_IMAGE_SIZE)
    assert img.shape == (16, H, W, 3) and img.dtype == torch.uint8 and ids.dtype == torch.int64
    b = dm.transform_batch(raw)                  # no trainer: a training batch
    (v1, v2), x = b["views"], b["x"]
    assert v1[0].shape == (16, 3, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE) and not torch.equal(v1[0], v2[0])
    assert torch.equal(x[1], ids) and not torch.equal(v1[1], ids) and not torch.equal(v1[1], v2[1])
    assert torch.equal(v1[1] < 0, ids < 0)
    masked = (v1[1] != ids)
    assert (v1[1][masked] == dm.masker.mask_id).all() and not masked[:, 0].any()
    dm.trainer = _FakeTrainer(training=False)    # SSL validation: eval mode, no text masking
    b = dm.transform_batch(raw)
    assert torch.equal(b["views"][0][1], ids)
    p1, p2 = (next(iter(dm.probe_dataloader("val"))) for _ in range(2))
    assert torch.equal(p1["raw"][1], p2["raw"][1]) and p1["y"]["genres"].shape == (10, 23)
    assert p1["y"]["genres"].dtype == torch.int64
    assert dm.tasks == {"genres": "multilabel"}


def test_max_items_is_a_seeded_subset(env, indexed):
    index = M.load_index(indexed["dir"])
    a = M.select_items(index, "train", 8, data_seed=1)
    assert len(a) == 8 and list(a) == sorted(a) and np.array_equal(a, M.select_items(index, "train", 8, 1))
    assert not np.array_equal(a, M.select_items(index, "train", 8, 2))
    assert len(M.select_items(index, "test", None)) == 10


@pytest.fixture(scope="module")
def cached(env, indexed):
    cfg = _cfg(env, "data.feature_cache=True")
    S.preprocess(ENTRY, _paths(env["ws"]), _settings(cfg))
    return cfg, S.cache_dir(_paths(env["ws"]), _settings(cfg))


def test_feature_cache_holds_the_towers_outputs(env, cached):
    from infmask.models import clip_towers as ct

    cfg, out = cached
    assert M.verify(out) == [] and out.parent == S.index_dir(_paths(env["ws"]))
    img = np.load(out / "image_train.npy", mmap_mode="r")
    txt = np.load(out / "text_train.npy", mmap_mode="r")
    lens = np.load(out / "text_len_train.npy")
    n_tok = 1 + (TEST_IMAGE_SIZE // 32) ** 2
    assert img.shape == (28, 3, n_tok, 768) and txt.shape == (28, 3, TEST_MAX_LENGTH, 512) and img.dtype == np.float16
    assert np.load(out / "image_test.npy", mmap_mode="r").shape[1] == 1          # test: un-augmented only
    dm = S._online_datamodule(_paths(env["ws"]), _settings(cfg))
    probe = next(iter(dm.probe_dataloader("train")))
    x = dm.transform_batch(probe)["x"]
    enc_i = ct.ClipImageEncoder(weights=HUB_NAME, weights_dir=str(env["weights"]), width=768)
    enc_t = ct.ClipTextEncoder(weights=HUB_NAME, weights_dir=str(env["weights"]), width=512)
    want_i = enc_i.run_tower(x[0])
    want_t, pad = enc_t.run_tower(x[1])
    torch.testing.assert_close(torch.from_numpy(img[:16, 0].astype(np.float32)), want_i, atol=2e-2, rtol=2e-3)
    L = want_t.shape[1]
    torch.testing.assert_close(torch.from_numpy(txt[:16, 0, :L].astype(np.float32))[~pad], want_t[~pad],
                               atol=2e-2, rtol=2e-3)
    assert np.array_equal(lens[:16, 0], (~pad).sum(1).numpy())
    assert (lens[:, 1] == lens[:, 2]).all()                                        # a pair shares its plot


def test_cached_and_online_probe_features_agree(env, cached):
    from infmask.models.methods import build_method

    cfg, _ = cached
    online, offline = S._online_datamodule(_paths(env["ws"]), _settings(cfg)), datamodule_for(cfg, env["ws"])
    assert offline.cache_dir is not None
    torch.manual_seed(0)
    model = build_method(cfg.to_dict()).eval()
    with torch.no_grad():
        a = next(iter(online.probe_batches("val")))
        b = next(iter(offline.probe_batches("val")))
        assert torch.equal(a["y"]["genres"], b["y"]["genres"])
        fa, fb = model.features(a["x"]), model.features(b["x"])
    torch.testing.assert_close(fa, fb, atol=3e-2, rtol=1e-2)
    ssl = offline.transform_batch(next(iter(offline.train_dataloader())))
    (v1, v2), x = ssl["views"], ssl["x"]
    assert v1[0].shape == x[0].shape and v1[1].shape[-1] == 513 and not torch.equal(v1[0], v2[0])


def test_cache_is_reused_and_keyed_by_what_it_depends_on(env, cached, capsys):
    cfg, out = cached
    S.preprocess(ENTRY, _paths(env["ws"]), _settings(cfg))
    assert "caching" not in capsys.readouterr().out
    other = _cfg(env, "data.feature_cache=True", "data.cache_copies=4")
    assert S.cache_dir(_paths(env["ws"]), _settings(other)) != out
    assert S.cache_dir(_paths(env["ws"]), _settings(_cfg(env, "data.feature_cache=True", "data.image_norm=clip"))) != out
    with pytest.raises(ConfigError, match="cache_copies"):  # refused with the config, before any file is written
        _cfg(env, "data.feature_cache=True", "data.cache_copies=3")


def test_datamodule_errors_are_usage_errors(env, indexed, monkeypatch):
    from infmask.models import clip_towers as ct

    monkeypatch.delenv(ct.ENV_DIR, raising=False)
    cfg = build_config("mmimdb", "infmasking", "smoke", overrides=[f"data.image_size={TEST_IMAGE_SIZE}"])
    with pytest.raises(UsageError, match=HUB_NAME):
        datamodule_for(cfg, env["ws"])
    with pytest.raises(UsageError, match="image_size"):
        datamodule_for(_cfg(env, "data.image_size=224"), env["ws"])
    assert os.environ.get(ct.ENV_DIR) is None


def test_padding_switch_changes_training_on_padded_text_only(env, cached):
    """model.mask_padding=False is the reference's training path (text padding attended); True honours it."""
    from infmask.models.methods import build_method

    cfg, _ = cached
    dm = datamodule_for(cfg, env["ws"])
    batch = dm.transform_batch(next(iter(dm.train_dataloader())))
    assert bool((batch["views"][0][1][..., -1] > 0.5).any())                  # the batch has padded text
    losses = {}
    for honour in (True, False):
        c = _cfg(env, "data.feature_cache=True", f"model.mask_padding={honour}")
        torch.manual_seed(0)
        model = build_method(c.to_dict())
        torch.manual_seed(1)
        losses[honour] = float(model.training_step(batch, 0).detach())
    assert all(np.isfinite(v) for v in losses.values()) and losses[True] != losses[False]
    with pytest.raises(UsageError, match="width"):
        datamodule_for(_cfg(env, "model.modalities=[{name: image, encoder: clip_image, encoder_kwargs: "
                            "{width: 512}}, {name: text, encoder: clip_text, encoder_kwargs: {}}]"), env["ws"])
