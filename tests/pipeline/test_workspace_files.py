"""Files the pipeline writes honour the user's umask (written atomically, but never left at mkstemp's 0600), so
collaborators on a shared workspace can read reports, figures, notebooks and run configs."""
import os
import shutil
import stat

import pytest

from infmask import reporting as R
from infmask.cli import main
from infmask.workspace import atomic_path, atomic_write_text
from helpers.report_fixtures import build_workspace


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Set a umask for the test and put the previous one back."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_writes_take_the_umask_mode(tmp_path, umask, mask):
    umask(mask)
    atomic_write_text(tmp_path / "a" / "config.yaml", "x: 1\n")
    with atomic_path(tmp_path / "fig.png") as tmp:
        tmp.write_bytes(b"png")
    for name in ("a/config.yaml", "fig.png"):
        assert _mode(tmp_path / name) == 0o666 & ~mask, (name, oct(_mode(tmp_path / name)))
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_report_tables_and_figures_are_readable_by_the_group(tmp_path, umask):
    umask(0o022)
    root = tmp_path / "ws"
    build_workspace(root, parts=("trifeatures", "sweep"))
    assert main(["report", "--table", "trifeatures", "--root", str(root), "--no-wandb"]) == 0
    assert main(["report", "--sweep", "tri-grid-1", "--root", str(root), "--no-wandb"]) == 0
    written = [p for p in (root / "reports").rglob("*") if p.is_file()]
    assert {p.suffix for p in written} >= {".md", ".csv", ".tex", ".png"}
    for p in written:
        assert _mode(p) == 0o644, (p.name, oct(_mode(p)))
    rep = R.build_table(R.load_results(root), "trifeatures")
    png = R.plot_seed_strips(rep, R.figures_dir(root) / "strips.png")
    assert _mode(png) == 0o644
