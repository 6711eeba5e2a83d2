"""Registry glue for MM-IMDb: download + safe extraction, the index, the frozen-feature cache, the data module.

Workspace layout::

    raw/mmimdb/mmimdb.tar.gz            verified download (trust-on-first-use sha256 in raw/checksums.json, recorded
                                        once the archive lists mmimdb/split.json and no unsafe member; see
                                        data/acquire.py for which record applies to a mirror)
    raw/mmimdb/extracted/mmimdb/...     the archive, extracted all-or-nothing (members with '..' are refused)
    raw/mmimdb/extracted.json           which archive (sha256) the extraction came from
    processed/mmimdb/index_v1/          index.json, labels.npy, manifest.json (data/mmimdb.py)
    processed/mmimdb/index_v1/cache-<key>/   frozen-tower features (data.feature_cache=True); <key> hashes
                                        everything they depend on (towers, image size and normalisation, copies,
                                        text_mask_prob, max_items, data_seed)

The frozen towers' weights are found through ``data.weights_dir`` (or $INFMASK_CLIP_DIR); they are never
downloaded (models/clip_towers.py). Missing data or weights are usage errors (exit code 2) that say what to fetch.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from . import mmimdb

log = logging.getLogger("infmask.data")

IMAGE_ENCODER, TEXT_ENCODER = "clip_image", "clip_text"


def raw_dir(ws) -> Path:
    return ws.raw("mmimdb")


def index_dir(ws) -> Path:
    return ws.processed("mmimdb", f"index_v{mmimdb.INDEX_VERSION}")


def _usage(msg: str):
    from infmask.errors import UsageError

    return UsageError(msg)


# ------------------------------------------------------------------------------------------------------- download

def _marker(raw: Path) -> Path:
    return raw / "extracted.json"


def _read_marker(raw: Path) -> dict:
    try:
        return json.loads(_marker(raw).read_text())
    except (OSError, ValueError):
        return {}


def _archive_check(path: Path) -> None:
    """The content check of the MM-IMDb archive: safe members, and the split file among them."""
    from .safe_io import list_archive

    if not any(n == "split.json" or n.endswith("/split.json") for n in list_archive(path)):
        raise ValueError("the archive holds no split.json; it is not the MM-IMDb archive")


def download(ws, entry, *, data_seed: int = 42, force: bool = False, base_url: str | None = None, **_) -> Path:
    from infmask.workspace import atomic_write_text

    from . import acquire, fetch, safe_io
    from .trust_store import TrustStoreError
    from .urls import BadMirrorURL

    raw = raw_dir(ws)
    f = entry.files[0]
    archive, extracted = raw / f.name, raw / "extracted"
    if force:
        shutil.rmtree(extracted, ignore_errors=True)
        _marker(raw).unlink(missing_ok=True)
        for p in (archive, archive.with_name(archive.name + ".verified.json")):
            p.unlink(missing_ok=True)
    marker = _read_marker(raw)
    if not archive.exists() and marker and mmimdb.find_source(raw) is not None:
        print(f"mmimdb already extracted at {extracted} (archive sha256 {marker.get('sha256', '?')[:12]}…, "
              "archive since removed): nothing to do")
        return extracted
    try:
        sha, source, _ = acquire.obtain(ws.checksums, entry.name, f, archive, base_url=base_url,
                                        check=_archive_check)
    except (BadMirrorURL, TrustStoreError) as e:
        raise _usage(str(e)) from None
    except fetch.ChecksumError as e:
        raise _usage(f"{f.name}: {e}") from None
    except fetch.DownloadError as e:
        raise _usage(f"downloading {f.name} failed: {e}") from None
    if marker.get("sha256") == sha and mmimdb.find_source(raw) is not None:
        print(f"mmimdb archive verified (sha256 {sha[:12]}…) and already extracted at {extracted}: nothing to do")
        return extracted
    try:
        safe_io.safe_extract(archive, extracted, overwrite=True)
    except safe_io.UnsafeArchiveError as e:
        raise _usage(f"{e}. The archive at {archive} is not the MM-IMDb release; delete it (and its record in "
                     f"{ws.checksums}) before downloading again") from None
    except safe_io.ArchiveError as e:
        raise _usage(str(e)) from None
    if mmimdb.find_source(raw) is None:
        raise _usage(f"{archive} extracted to {extracted} but holds no mmimdb/split.json + mmimdb/dataset/; it is "
                     "not the MM-IMDb archive")
    atomic_write_text(_marker(raw), json.dumps({"archive": f.name, "sha256": sha, "url": source}, indent=1))
    print(f"downloaded and extracted mmimdb into {extracted} (archive sha256 {sha[:12]}…)")
    return extracted


# ----------------------------------------------------------------------------------------------------- weights

def _tower_kwargs(cfg) -> tuple[dict, dict]:
    mods = cfg.model.modalities
    names = [m.get("encoder") for m in mods]
    if names != [IMAGE_ENCODER, TEXT_ENCODER]:
        raise _usage(f"model.modalities: MM-IMDb needs the encoders [{IMAGE_ENCODER}, {TEXT_ENCODER}] in this "
                     f"order (image, text), got {names}")
    return dict(mods[0].get("encoder_kwargs") or {}), dict(mods[1].get("encoder_kwargs") or {})


def tower_paths(cfg) -> tuple[Path, Path]:
    """Local directories of the image and text towers; a usage error naming what to fetch when absent."""
    from infmask.models import clip_towers as ct

    img_kw, txt_kw = _tower_kwargs(cfg)
    try:
        return tuple(ct.resolve_weights(kw.get("weights", ct.DEFAULT_WEIGHTS),
                                        kw.get("weights_dir") or cfg.data.weights_dir) for kw in (img_kw, txt_kw))
    except ct.MissingWeightsError as e:
        raise _usage(str(e)) from None


def _weights_note(cfg) -> str:
    try:
        tower_paths(cfg)
        return ""
    except Exception as e:  # the data is missing too: say both at once
        return f" Pretraining will also need the frozen towers: {e}"


# --------------------------------------------------------------------------------------------------- preprocess

def _index_params(ws) -> dict:
    raw = raw_dir(ws)
    src = mmimdb.find_source(raw)
    return {"source": str(src.relative_to(raw)) if src else None, "archive_sha256": _read_marker(raw).get("sha256")}


def _ensure_index(ws, cfg, force: bool) -> Path:
    raw = raw_dir(ws)
    src = mmimdb.find_source(raw)
    if src is None:
        raise _usage(f"no extracted MM-IMDb under {raw}; run `infmask download mmimdb` first (about 8 GB from "
                     f"archive.org; --base-url for a mirror).{_weights_note(cfg)}")
    out = index_dir(ws)
    if force and out.exists():
        shutil.rmtree(out)
    params = _index_params(ws)
    problems = mmimdb.verify(out, expect=params) if out.exists() else ["missing"]
    if not problems:
        return out
    if out.exists():
        log.warning("mmimdb index at %s is stale or damaged (%s); rebuilding it", out, "; ".join(problems[:3]))
    try:
        info = mmimdb.build_index(src, out, raw, params=params)
    except ValueError as e:
        raise _usage(f"cannot build the MM-IMDb index from {src}: {e}") from None
    c, skipped = info["counts"], info["skipped"]
    why = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items()))
    print(f"indexed mmimdb into {out} in {info['seconds']:.1f} s: train {c['train']}, val {c['val']}, test "
          f"{c['test']}" + (f"; skipped {sum(skipped.values())} ({why})" if skipped else ""))
    return out


def preprocess(ws, entry, cfg, *, force: bool = False, **_) -> Path:
    out = _ensure_index(ws, cfg, force)
    if cfg.data.feature_cache:
        _ensure_cache(ws, cfg, force=force)
    return out


# ------------------------------------------------------------------------------------------------- data module

def _online_datamodule(ws, cfg):
    from infmask.models import clip_towers as ct

    d = cfg.data
    img_path, txt_path = tower_paths(cfg)
    vision = json.loads((img_path / "config.json").read_text())
    vision = vision.get("vision_config", vision)
    size = vision.get("image_size")
    if size not in (None, d.image_size):
        raise _usage(f"data.image_size={d.image_size} but the CLIP vision tower in {img_path} takes {size}x{size} "
                     f"images; set data.image_size={size}")
    img_kw, txt_kw = _tower_kwargs(cfg)
    for what, kw, path, cls in (("image", img_kw, img_path, ct.ClipImageEncoder),
                                ("text", txt_kw, txt_path, ct.ClipTextEncoder)):
        width = cls._read_width(path)
        if kw.get("width") not in (None, width):
            raise _usage(f"model.modalities: the {what} tower in {path} is {width} wide but its encoder_kwargs say "
                         f"width={kw['width']}; set width: {width}")
    try:
        tokenizer = ct.load_tokenizer(txt_path)
        max_length = ct.text_max_length(txt_path, tokenizer)
        return mmimdb.MMIMDbDataModule(
            index_dir(ws), raw_dir(ws), tokenizer=tokenizer, max_length=max_length, text_mask_prob=d.text_mask_prob,
            image_size=d.image_size, image_norm=getattr(d, "image_norm", "imagenet"), max_items=d.max_items,
            data_seed=d.data_seed, batch_size=d.batch_size, num_workers=d.num_workers,
            crop_scale=tuple(d.crop_scale))
    except (ValueError, OSError) as e:
        raise _usage(f"cannot set up MM-IMDb from {index_dir(ws)} with the towers in {txt_path}: {e}") from None


def cache_key(ws, cfg, dm) -> tuple[str, dict]:
    from infmask.models import clip_towers as ct

    img_path, txt_path = tower_paths(cfg)
    d = cfg.data
    img_kw, txt_kw = _tower_kwargs(cfg)
    index_manifest = mmimdb.read_manifest(index_dir(ws))
    params = {"version": mmimdb.CACHE_VERSION, "index_sha256": index_manifest["files"]["index.json"]["sha256"],
              "max_items": d.max_items, "data_seed": d.data_seed, "image_size": d.image_size,
              "image_norm": getattr(d, "image_norm", "imagenet"), "copies": d.cache_copies,
              "text_mask_prob": d.text_mask_prob, "mask_id": dm.masker.mask_id, "max_length": dm.max_length,
              "image_weights": [img_kw.get("weights", ct.DEFAULT_WEIGHTS), ct.weights_fingerprint(img_path)],
              "text_weights": [txt_kw.get("weights", ct.DEFAULT_WEIGHTS), ct.weights_fingerprint(txt_path)],
              "dtype": _cache_dtype(cfg)[1]}
    key = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return key, params


def _cache_device(cfg):
    import torch

    want = torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda")
    return torch.device("cuda" if want else "cpu")


def _cache_dtype(cfg):
    """Tower precision while caching: bf16 where training would run bf16-mixed (CUDA, precision auto), else fp32."""
    import torch

    p = cfg.trainer.precision
    if _cache_device(cfg).type == "cuda" and p in ("auto", "bf16-mixed", "bf16-true"):
        return torch.bfloat16, "bf16"
    return None, "fp32"


def cache_dir(ws, cfg, dm=None) -> Path:
    dm = dm or _online_datamodule(ws, cfg)
    return index_dir(ws) / f"cache-{cache_key(ws, cfg, dm)[0]}"


def _ensure_cache(ws, cfg, force: bool = False) -> Path:
    from infmask.models import clip_towers as ct

    d = cfg.data  # data.cache_copies is checked with the config (an even number >= 2)
    dm = _online_datamodule(ws, cfg)
    key, params = cache_key(ws, cfg, dm)
    out = index_dir(ws) / f"cache-{key}"
    if force and out.exists():
        shutil.rmtree(out)
    problems = mmimdb.verify(out, expect=params, deep=False) if out.exists() else ["missing"]
    if not problems:
        return out
    img_kw, txt_kw = _tower_kwargs(cfg)
    wd = cfg.data.weights_dir
    towers = [cls(weights=kw.get("weights", ct.DEFAULT_WEIGHTS), weights_dir=kw.get("weights_dir") or wd,
                  width=kw.get("width")) for cls, kw in ((ct.ClipImageEncoder, img_kw), (ct.ClipTextEncoder, txt_kw))]
    device = _cache_device(cfg)
    dtype = _cache_dtype(cfg)[0]
    print(f"caching frozen-tower features for mmimdb ({d.cache_copies} augmented copies per item, on {device}) "
          f"into {out}", flush=True)
    info = mmimdb.build_feature_cache(dm, out, *towers, copies=d.cache_copies, params=params, device=device,
                                      autocast_dtype=dtype, seed=d.data_seed,
                                      batch_size=max(d.batch_size, 256 if device.type == "cuda" else 64),
                                      num_workers=d.num_workers)
    counts = ", ".join(f"{k} {v}" for k, v in info["counts"].items())
    print(f"cached mmimdb features in {info['seconds']:.1f} s ({counts})")
    return out


def datamodule(ws, cfg):
    dm = _online_datamodule(ws, cfg)
    if not cfg.data.feature_cache:
        return dm
    out = _ensure_cache(ws, cfg)
    d = cfg.data
    return mmimdb.MMIMDbDataModule(index_dir(ws), raw_dir(ws), tokenizer=dm.tokenizer, max_length=dm.max_length,
                                   text_mask_prob=d.text_mask_prob, image_size=d.image_size,
                                   image_norm=getattr(d, "image_norm", "imagenet"), max_items=d.max_items,
                                   data_seed=d.data_seed, cache_dir=out, batch_size=d.batch_size,
                                   num_workers=d.num_workers, crop_scale=tuple(d.crop_scale))
