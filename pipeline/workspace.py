"""Where data, runs, reports, W&B files and the results database live, under one root."""
from __future__ import annotations

import os
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

    def processed(self, dataset: str) -> Path:
        """processed/<dataset>/: the dataset names one subfolder per build in it."""
        return self.root / "processed" / dataset

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
