"""What a file's first bytes say it is, for refusing and describing what a server or a user handed us instead of the
expected data (most often an HTML error or quota page saved under the data file's name)."""
from __future__ import annotations

import re

_HTML = re.compile(rb"^\s*(<!--.*?-->\s*)*<(!doctype\s+html|html|head|body|title|meta)[\s>/]", re.I | re.S)
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.I | re.S)
_MAGIC = ((b"PK\x03\x04", "a zip archive"), (b"PK\x05\x06", "an empty zip archive"), (b"\x1f\x8b", "a gzip stream"),
          (b"BZh", "a bzip2 stream"), (b"\xfd7zXZ\x00", "an xz stream"), (b"\x89HDF", "an HDF5 file"),
          (b"%PDF", "a PDF document"), (b"\x93NUMPY", "a .npy array file"))


def looks_like_html(head: bytes) -> bool:
    """True when ``head`` (the first bytes of a body or file) starts like an HTML document."""
    return bool(_HTML.match(head.lstrip(b"\xef\xbb\xbf")[:4096]))


def describe_head(head: bytes) -> str:
    """A few words on what ``head`` looks like (``""`` when nothing is recognised)."""
    if not head:
        return "an empty file"
    if looks_like_html(head):
        m = _TITLE.search(head[:65536])
        title = " ".join(m.group(1).decode("utf-8", "replace").split())[:80] if m else ""
        return f"an HTML page ({title!r})" if title else "an HTML page"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    return ""
