"""Where data, runs, reports, W&B files and the results database live, under one root."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = "workspace"


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """`root`, else $INFMASK_ROOT, else ./workspace, resolved. Read where a person starts the code (the CLI, the
    notebooks); the stages then pass the root on explicitly."""
    return Path(root or os.environ.get("INFMASK_ROOT") or DEFAULT_ROOT).expanduser().resolve()


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def open(cls, root: str | os.PathLike | None = None) -> "Workspace":
        ws = cls(resolve_root(root))
        try:
            ws.root.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            from .errors import UsageError

            raise UsageError(f"the workspace root {ws.root} (--root or $INFMASK_ROOT) is a file, or lies under one; "
                             "give a folder") from None
        return ws

    def raw(self, dataset: str) -> Path:
        return self.root / "raw" / dataset

    def processed(self, dataset: str, variant: str = "default") -> Path:
        return self.root / "processed" / dataset / variant

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def run_dir(self, cfg) -> Path:
        """runs/<benchmark>/<method>/<config hash without seed>/seed_<n>/"""
        return self.runs / cfg.benchmark / cfg.method / cfg.config_hash() / f"seed_{cfg.seed}"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def wandb_dir(self) -> Path:
        return self.root  # wandb writes <dir>/wandb/...

    @property
    def db_path(self) -> Path:
        return self.root / "results.sqlite"

    @property
    def sweeps(self) -> Path:
        return self.root / "sweeps"

    @property
    def checksums(self) -> Path:
        """Trust-on-first-use record of downloaded files (size, sha256)."""
        return self.root / "raw" / "checksums.json"


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (/proc), else by setting it back at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_sibling(path: Path) -> tuple[int, str]:
    """A temporary file beside `path` with the mode a plain open() would give it. mkstemp creates 0600 files, which
    os.replace would carry over: collaborators on a shared workspace could not read reports, figures or configs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd, tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = _temp_sibling(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary sibling path to write; it replaces `path` only if the block succeeds. Like every file
    written here, it gets the mode the umask gives."""
    fd, tmp = _temp_sibling(path)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
