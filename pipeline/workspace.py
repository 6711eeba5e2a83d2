"""Where data, runs, reports, W&B files and the results database live, under one root."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Files are written atomically and honour the umask through the project's one durable-IO helper; re-exported here,
# where the pipeline's stages look for them.
from infmask.data.durable import atomic_path, atomic_write_bytes, atomic_write_text, current_umask  # noqa: F401

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
