import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The code is imported as the installed `infmask` package (pip install -e .), never as top-level `pipeline`,
# `models` or `data`; tests/ itself is on the path for the helpers.
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

# One intra-op thread: the suite runs many small models on 2 cores beside W&B's own processes, where OpenMP
# spin-waiting with 2 threads made steps several times slower. Inherited by subprocesses (trials, DDP ranks).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# Tests never talk to the W&B server and never carry a key.
os.environ.pop("WANDB_API_KEY", None)
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_X_DISABLE_STATS", "true")


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A fresh workspace root, also exported as INFMASK_ROOT for subprocesses."""
    r = tmp_path / "ws"
    monkeypatch.setenv("INFMASK_ROOT", str(r))
    return r


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """A fresh workspace root for in-process CLI calls: INFMASK_ROOT set (the CLI reads it; monkeypatch puts the
    old value back), W&B disabled, no mirror from the environment. Modules may define their own `ws`."""
    root = tmp_path / "ws"
    monkeypatch.setenv("INFMASK_ROOT", str(root))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv("INFMASK_BASE_URL", raising=False)
    return root


@pytest.fixture
def umask():
    """Set a umask for the test (call it with the mask) and put the previous one back."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield lambda mask: os.umask(mask)
    os.umask(previous)
