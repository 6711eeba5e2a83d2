"""How a registry file enters the workspace: downloaded from its registry URL or a mirror, or placed by hand; held to
the right trust record; its content checked before it is stamped verified or recorded as a trusted first use.

The reference a file is held to, first match:

1. the published sha256 (``RemoteFile.sha256``), when the registry knows one;
2. the trust-on-first-use record under the registry URL, when there is one: a mirror must serve those bytes;
3. otherwise the record under where the bytes came from, made on first use: the registry URL for a download from
   it, the mirror's URL (credentials stripped) for a mirror, ``placed:<dataset>/<name>`` for a file placed by hand.
   A file on disk came from the source its stamp names, even when it changed since (a damaged copy is then held to
   its source's record, quarantined and fetched again); a file without a stamp was placed by hand.

So a mirror's bytes, or a file placed by hand, are never recorded under the registry URL: a wrong mirror cannot make
the genuine file look tampered with later. Every file is checked (``check``: parsed against its schema, or its
archive listed) before it is recorded or stamped; a stamped file is accepted later on its stamp alone.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from . import fetch, trust_store
from .urls import mirror_url, redact_url

__all__ = ["obtain", "placed_key", "quarantine"]


def placed_key(dataset: str, name: str) -> str:
    return f"placed:{dataset}/{name}"


def quarantine(dest: Path) -> Path:
    """Move ``dest`` aside to ``<dest>.quarantine`` (dropping its stamp) and return where it went."""
    q = dest.with_name(dest.name + ".quarantine")
    if dest.exists():
        os.replace(dest, q)
    dest.with_name(dest.name + ".verified.json").unlink(missing_ok=True)
    return q


def obtain(store: Path, dataset: str, f, dest: Path, *, base_url: str | None, check: fetch.Check,
           say: Callable[[str], None] = print) -> tuple[str, str, bool]:
    """Bring ``dest`` to a checked copy of the registry file ``f``; returns (sha256, source, whether it was
    downloaded now). ``source`` is where the bytes came from (a URL without credentials, or the placed-file key).

    Raises ``fetch.DownloadError`` (``ChecksumError``, ``ContentError``), ``trust_store.TrustStoreError`` and
    ``urls.BadMirrorURL``.
    """
    url = mirror_url(f.url, f.name, base_url)  # checks base_url before anything else happens
    registry = trust_store.get(store, f.url)
    if dest.exists():
        source = fetch.stamped_source(dest) or placed_key(dataset, f.name)
        try:
            sha = fetch.verify_file(dest, expected_sha256=f.sha256, expected_size=f.size, tofu_store=store,
                                    key=f.url if registry is not None else source, check=check, source=source)
            return sha, source, False
        except fetch.ContentError as e:  # a file placed by hand that is not what it should be: say so, use nothing
            q = quarantine(dest)
            raise fetch.ContentError(f"{e}; moved it to {q}", url=e.url, quarantine=q) from None
        except fetch.ChecksumError as e:  # a damaged copy of a checked file: fetch it again
            q = quarantine(dest)
            say(f"{dest} does not match its record ({e}); moved it to {q} and downloading again")
    source = redact_url(url)
    size = f" ({f.approx_size})" if f.approx_size not in ("", "unknown") else ""
    say(f"downloading {source} -> {dest}{size}")
    fetch.download(url, dest, expected_sha256=f.sha256, expected_size=f.size, tofu_store=store,
                   tofu_key=f.url if url == f.url or registry is not None else source, check=check)
    return fetch.verified_record(dest)["sha256"], source, True
