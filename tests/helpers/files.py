"""Small checks on files the code writes."""
import os
import stat


def file_mode(path) -> int:
    """The permission bits of `path` (0o644 and the like)."""
    return stat.S_IMODE(os.stat(path).st_mode)
