"""The MultiBench datasets' stages (mosi, humor, sarcasm, mimic, visionandtouch): where the raw and processed files
live, and when to (re)fetch, verify or rebuild them.

Raw layout (``paths.raw`` = raw/<dataset>)::

    affect   <name>.pkl (+ fetch's .verified.json stamp)          manifest.json: url, size, sha256
    mimic    im.pk, placed by the user                           manifest.json: size, sha256, patients
    v&t      extracted/.../*.h5 (the zip is deleted once unpacked) manifest.json: zip url/size/sha256, h5 sizes

Checksums: the published ones are unknown, so the first copy of each file that passes its content check (the
pickle loads safely and fits the schema; the archive lists .h5 episodes and no unsafe member) is recorded in
``paths.checksums`` (trust on first use) and every later copy from the same source must match it (data/acquire.py
says which record applies: a mirror's or a hand-placed file's bytes are never recorded under the registry URL;
MIMIC's key is ``mimic/im.pk``).

Mirrors (``--base-url``, or ``$INFMASK_BASE_URL`` for downloads started by preprocess/pretrain): the registry URL's
scheme and host are replaced by ``base_url`` and its path kept, e.g.
``http://downloads.cs.stanford.edu/juno/triangle_real_data.zip`` -> ``<base_url>/juno/triangle_real_data.zip``;
Google Drive ids have no meaningful path, so a mirror serves those files as ``<base_url>/<file name>``
(``<base_url>/mosi_data.pkl``); see data/urls.py.

A public file may also be placed by hand at ``raw/<dataset>/<name>`` (e.g. when Drive's quota blocks the
download): ``infmask download`` then checks and records it instead of fetching.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import manifest
from . import multibench as mb
from .durable import atomic_write_text
from .interface import DataPaths, DatasetError, DatasetStages
from .urls import mirror_url  # noqa: F401  (the mirror convention, documented above)

log = logging.getLogger("infmask.data")

AFFECT = mb.AFFECT_DATASETS
_DEEP_VERIFY_MAX_BYTES = 2 << 30  # above this a processed set is checked by sizes only (V&T is ~7 GB)


@dataclass(frozen=True)
class MultiBenchSettings:
    dataset: str
    data_seed: int = 42
    val_fraction: float = 0.1       # Vision&Touch: share of the train episode files held out
    keys: list = field(default_factory=list)  # modality keys in order (e.g. [vision, text])
    augmentations: object = None    # "drop+noise" or a list, one pipeline per modality
    task: object = None             # MIMIC task selector; V&T: ee_yaw_next or contact_next
    max_items: int | None = None
    image_size: int = 224
    batch_size: int = 64
    num_workers: int = 0
    probe_protocol: str = "clean"   # "reference": the reference's val == test split
    base_url: str | None = None     # a mirror for downloads a preprocess starts


# ------------------------------------------------------------------------------------------------ paths

def raw_dir(paths: DataPaths) -> Path:
    return paths.raw


def processed_dir(paths: DataPaths, s: MultiBenchSettings) -> Path:
    v = f"v{mb.PREPROCESS_VERSION}"
    if s.dataset == "visionandtouch":
        return paths.processed / f"{v}_seed{s.data_seed}_val{s.val_fraction}"
    return paths.processed / v


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _discard(dest: Path) -> None:
    for p in (dest, dest.with_name(dest.name + ".verified.json")):
        p.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ download

def _fetch_file(paths: DataPaths, dataset: str, f, dest: Path, base_url: str | None, check) -> tuple[str, str, bool]:
    """Bring ``dest`` to the checked file ``f``; returns (sha256, source URL, whether anything was downloaded)."""
    from . import acquire, fetch
    from .trust_store import TrustStoreError
    from .urls import BadMirrorURL

    try:
        return acquire.obtain(paths.checksums, dataset, f, dest, base_url=base_url, check=check)
    except (BadMirrorURL, TrustStoreError) as e:
        raise DatasetError(str(e)) from None
    except fetch.ChecksumError as e:  # wrong bytes, or not the expected file: quarantined, nothing recorded
        raise DatasetError(f"{f.name}: {e}") from None
    except fetch.DownloadError as e:
        raise DatasetError(f"download of {f.name} failed: {e}. Retry later, fetch it from a mirror (`infmask download "
                     f"{dataset} --base-url URL`), or place the file at {dest} by hand and rerun to check "
                     "it.") from None


def _affect_check(dataset: str, dest: Path):
    """The content check of an affect pickle: it loads with the safe unpickler and fits MultiBench's schema."""
    def check(path: Path) -> None:
        from .safe_io import UnsafePickleError, safe_unpickle

        try:
            mb.validate_affect(safe_unpickle(path), dataset, source=dest.name)
        except UnsafePickleError as e:
            raise ValueError(str(e).replace(str(path), dest.name)) from None
    return check


def _vt_check(path: Path) -> None:
    """The content check of the Vision&Touch zip: safe members, and .h5 episode files among them."""
    from .safe_io import list_archive

    if not any(n.endswith(".h5") for n in list_archive(path)):
        raise ValueError("the archive holds no .h5 episode files; it is not the Vision&Touch archive")


def _download_affect(paths: DataPaths, entry, base_url, force, quiet) -> Path:
    out = raw_dir(paths)
    (f,) = entry.files
    dest = out / f.name
    if force:
        _discard(dest)
    sha, source, fetched = _fetch_file(paths, entry.name, f, dest, base_url, _affect_check(entry.name, dest))
    manifest = {"dataset": entry.name, "files": {f.name: {"url": source, "registry_url": f.url,
                                                          "size": dest.stat().st_size, "sha256": sha}}}
    if _read_json(out / "manifest.json") != manifest:
        _write_json(out / "manifest.json", manifest)
    if fetched:
        print(f"{entry.name}: downloaded and verified {dest} (schema ok, sha256 {sha})")
    elif not quiet:
        print(f"{entry.name}: {dest} already downloaded and verified (sha256 {sha}): nothing to do")
    return dest


def _vt_raw_ok(out: Path) -> list[str]:
    man = _read_json(out / "manifest.json")
    if not man or "h5" not in man:
        return [f"{out / 'manifest.json'}: missing or unreadable"]
    problems = []
    for rel, size in man["h5"].items():
        p = out / rel
        if not p.is_file():
            problems.append(f"{p}: missing")
        elif p.stat().st_size != size:
            problems.append(f"{p}: size {p.stat().st_size} != {size}")
    return problems if man["h5"] else [f"{out / 'manifest.json'}: lists no .h5 files"]


def _download_vt(paths: DataPaths, entry, base_url, force, quiet) -> Path:
    from .safe_io import ArchiveError, safe_extract

    out = raw_dir(paths)
    (f,) = entry.files
    extracted = out / "extracted"
    if force:
        shutil.rmtree(extracted, ignore_errors=True)
        (out / "manifest.json").unlink(missing_ok=True)
        _discard(out / f.name)
    problems = _vt_raw_ok(out) if (out / "manifest.json").exists() else ["not downloaded"]
    if not problems:
        if not quiet:
            print(f"{entry.name}: {extracted} already extracted and verified: nothing to do")
        return extracted
    if (out / "manifest.json").exists():
        print(f"{entry.name}: extracted files are damaged ({'; '.join(problems[:3])}); fetching again")
        (out / "manifest.json").unlink()
    zip_path = out / f.name
    sha, source, _ = _fetch_file(paths, entry.name, f, zip_path, base_url, _vt_check)
    print(f"{entry.name}: extracting {zip_path}", flush=True)
    try:
        safe_extract(zip_path, extracted, overwrite=True)
    except ArchiveError as e:
        raise DatasetError(str(e)) from None
    h5 = mb.find_h5(extracted)
    if not h5:
        raise DatasetError(f"{zip_path} holds no .h5 episode files; is it the Vision&Touch archive?")
    manifest = {"dataset": entry.name, "archive": {"name": f.name, "url": source, "registry_url": f.url,
                                                   "size": zip_path.stat().st_size, "sha256": sha},
                "h5": {str(p.relative_to(out)): p.stat().st_size for p in h5}}
    _write_json(out / "manifest.json", manifest)
    _discard(zip_path)  # 11 GB: the extracted files and the recorded checksum are what we keep
    print(f"{entry.name}: extracted {len(h5)} episode files into {extracted}")
    return extracted


def _download_mimic(paths: DataPaths, entry, force, quiet) -> Path:
    from . import fetch
    from .safe_io import UnsafePickleError, safe_unpickle

    out = raw_dir(paths)
    (f,) = entry.files
    dest = out / f.name
    out.mkdir(parents=True, exist_ok=True)
    if not dest.is_file():
        raise DatasetError(f"{entry.name} is credentialed data and cannot be downloaded anonymously.\n"
                     + entry.instructions.format(path=dest))
    man = _read_json(out / "manifest.json") or {}
    st = dest.stat()
    if not force and man.get("size") == st.st_size and man.get("mtime_ns") == st.st_mtime_ns and man.get("sha256"):
        if not quiet:
            print(f"mimic: {dest} already verified ({man.get('patients')} patients, sha256 {man['sha256']}): "
                  "nothing to do")
        return dest
    try:
        n = mb.validate_mimic(safe_unpickle(dest), source=str(dest))
    except (UnsafePickleError, mb.SchemaError) as e:
        raise DatasetError(f"{dest} is not MultiBench's MIMIC im.pk: {e}") from None
    try:
        sha = fetch.verify_file(dest, tofu_store=paths.checksums, key="mimic/im.pk")
    except fetch.ChecksumError as e:
        raise DatasetError(f"{dest} differs from the im.pk recorded earlier: {e}. If you replaced it on purpose, delete "
                     f"the 'mimic/im.pk' entry from {paths.checksums}.") from None
    _write_json(out / "manifest.json", {"dataset": "mimic", "file": f.name, "size": st.st_size,
                                        "mtime_ns": st.st_mtime_ns, "sha256": sha, "patients": n})
    print(f"mimic: verified {dest}: {n} patients, schema ok, sha256 {sha} recorded in {paths.checksums}")
    return dest


def download(entry, paths: DataPaths, *, data_seed: int = 42, force: bool = False, base_url: str | None = None,
             quiet: bool = False, **_) -> Path:
    """Fetch (or, for MIMIC, verify the placed file) into raw/<dataset>/; idempotent."""
    if entry.name in AFFECT:
        return _download_affect(paths, entry, base_url, force, quiet)
    if entry.name == "visionandtouch":
        return _download_vt(paths, entry, base_url, force, quiet)
    if entry.name == "mimic":
        return _download_mimic(paths, entry, force, quiet)
    raise ValueError(f"entry: {entry.name!r} is not a MultiBench dataset")


# ------------------------------------------------------------------------------------------------ preprocess

def _ready(path: Path, what: str, expect: dict) -> bool:
    """True when ``path`` holds a complete, verified build from the current raw data; a damaged one is removed."""
    if not path.exists():
        return False
    try:
        sizes = sum(m["size"] for m in manifest.read_manifest(path)["files"].values())
    except (OSError, ValueError, KeyError, TypeError):
        sizes = 0
    return manifest.ready(path, what, expect=expect, deep=sizes <= _DEEP_VERIFY_MAX_BYTES, say=print)


def _raw_id(paths: DataPaths, entry) -> str:
    """The sha256 of the raw data a processed build comes from (the pickle, or the V&T archive)."""
    man = _read_json(raw_dir(paths) / "manifest.json") or {}
    if entry.name == "visionandtouch":
        return (man.get("archive") or {}).get("sha256", "")
    if entry.name == "mimic":
        return man.get("sha256", "")
    return next(iter((man.get("files") or {}).values()), {}).get("sha256", "")


def preprocess(entry, paths: DataPaths, s: MultiBenchSettings, *, force: bool = False, **_) -> Path:
    from .safe_io import UnsafePickleError

    # Fetch what is missing (public data) or re-verify the placed file (MIMIC); quiet when there is nothing to do.
    src = download(entry, paths, quiet=True, base_url=s.base_url)
    out = processed_dir(paths, s)
    expect = {"raw_id": _raw_id(paths, entry), "preprocess_version": mb.PREPROCESS_VERSION}
    if force and out.exists():
        shutil.rmtree(out)
    what = f"preprocessed {entry.name}"
    if _ready(out, what, expect):
        print(f"{entry.name} preprocessed at {out} already and verified: nothing to do")
        return out
    t0 = time.perf_counter()
    extra = {"raw_id": expect["raw_id"]}  # ties the build to the raw data it came from: new raw data, new build
    try:
        if entry.name in AFFECT:
            info = mb.preprocess_affect(src, out, entry.name, extra_params=extra)
        elif entry.name == "mimic":
            info = mb.preprocess_mimic(src, out, extra_params=extra)
        elif entry.name == "visionandtouch":
            info = mb.preprocess_vt(src, out, val_fraction=s.val_fraction, data_seed=s.data_seed,
                                    extra_params=extra)
        else:
            raise ValueError(f"entry: {entry.name!r} is not a MultiBench dataset")
    except (mb.SchemaError, UnsafePickleError) as e:
        raise DatasetError(f"cannot preprocess {entry.name}: {e}") from None
    counts = {s: c.get("kept", c.get("patients", c.get("items"))) for s, c in info["params"]["counts"].items()}
    print(f"preprocessed {entry.name} into {out} in {time.perf_counter() - t0:.1f} s: {counts}")
    return out


# ------------------------------------------------------------------------------------------------ data modules

def datamodule(entry, paths: DataPaths, s: MultiBenchSettings):
    from . import multibench_datamodules as mdm

    kw = dict(batch_size=s.batch_size, num_workers=s.num_workers, max_items=s.max_items, data_seed=s.data_seed,
              image_size=s.image_size, protocol=s.probe_protocol)
    path = processed_dir(paths, s)
    if s.dataset in AFFECT:
        return mdm.AffectDataModule(path, keys=s.keys, augmentations=s.augmentations, **kw)
    if s.dataset == "mimic":
        return mdm.MimicDataModule(path, keys=s.keys, augmentations=s.augmentations, task=s.task, **kw)
    if s.dataset == "visionandtouch":
        return mdm.VisionTouchDataModule(path, keys=s.keys, augmentations=s.augmentations, task=s.task, **kw)
    raise ValueError(f"dataset: {s.dataset!r} is not a MultiBench dataset")


STAGES = DatasetStages(settings=MultiBenchSettings, download=download, preprocess=preprocess,
                       processed_dir=processed_dir, datamodule=datamodule)
