"""URLs as we show and store them: without credentials, and how a mirror maps a registry URL.

A mirror URL may carry credentials (``http://user:PASS@host/...``) or a token in its query (``?token=...``); they
are sent to the server but never printed, logged or written: ``redact_url`` drops the userinfo and every query
parameter whose name looks like a secret, and ``redact_text`` does the same inside free text such as an
exception's message.
"""
from __future__ import annotations

import re
import urllib.parse

__all__ = ["redact_url", "redact_text", "check_base_url", "mirror_url", "BadMirrorURL"]

# Query parameters whose value is a credential: tokens, signatures, keys, passwords, sessions (S3 and GCS signed
# URLs included).
_SECRET_PARAM = re.compile(r"token|secret|passw|pwd|signature|credential|auth|session|api[-_]?key|^key$|^sig$|"
                           r"^x-(amz|goog)-", re.I)
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_PARAM_IN_TEXT = re.compile(r"([?&])([^=&\s'\"?#]+)=([^&\s'\"#)]*)")


class BadMirrorURL(ValueError):
    """``--base-url`` (or ``$INFMASK_BASE_URL``) is not an http(s) URL with a host."""


def redact_url(url: str) -> str:
    """``url`` without userinfo and without secret-looking query parameters."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # an unparsable port or the like: keep only what precedes any '@'
        return re.sub(r"//[^/@]*@", "//", url)
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query = [(k, v) for k, v in pairs if not _SECRET_PARAM.search(k)]
    if "@" not in parts.netloc and len(query) == len(pairs):
        return url  # nothing secret: keep it exactly as given
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return urllib.parse.urlunsplit((parts.scheme, host + port, parts.path, urllib.parse.urlencode(query), ""))


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted, and secret-looking query parameters dropped wherever they appear
    (urllib3's errors quote the path and query without the scheme: "with url: /x?token=...")."""
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), str(text))
    return _PARAM_IN_TEXT.sub(lambda m: "" if _SECRET_PARAM.search(m.group(2)) else m.group(0), text)


def check_base_url(base_url: str) -> str:
    """``base_url`` if it is an http(s) URL with a host; else ``BadMirrorURL`` (its message shows it redacted)."""
    try:
        parts = urllib.parse.urlsplit(base_url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        ok = False
    if not ok:
        raise BadMirrorURL(f"--base-url must be an http(s) URL like http://127.0.0.1:8000/mirror, got "
                           f"{redact_url(str(base_url))!r}")
    return base_url


def _is_drive(url: str) -> bool:
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    return host == "drive.google.com" or host.endswith(".googleusercontent.com")


def mirror_url(url: str, name: str, base_url: str | None) -> str:
    """The URL to fetch the registry URL ``url`` (file ``name``) from when a mirror ``base_url`` is given.

    The registry URL's scheme and host are replaced by the mirror's, its path kept under the mirror's path:
    ``http://downloads.cs.stanford.edu/juno/x.zip`` -> ``<base_url>/juno/x.zip``. Google Drive ids have no
    meaningful path, so a mirror serves those files as ``<base_url>/<name>``. The mirror's own query (a token) is
    kept and sent with every request.
    """
    if not base_url:
        return url
    base = urllib.parse.urlsplit(check_base_url(base_url))
    reg = urllib.parse.urlsplit(url)
    path = "/" + urllib.parse.quote(name) if _is_drive(url) else reg.path
    query = "&".join(q for q in (base.query, "" if _is_drive(url) else reg.query) if q)
    return urllib.parse.urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + path, query, ""))
