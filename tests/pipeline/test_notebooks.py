"""The result notebooks run headless (nbclient) on a workspace with results and on empty/missing ones; they are
committed without outputs and their figures are real pictures."""
import json

import nbformat

from infmask.cli import main
from infmask.stages.notebooks import NOTEBOOK_DIR, NOTEBOOKS, execute_notebooks
from helpers.report_fixtures import SWEEP_ID, assert_png_not_blank, build_workspace


def _first_output(nb) -> str:
    cell = next(c for c in nb.cells if c.cell_type == "code" and c.outputs)
    out = cell.outputs[0]
    return out.get("text") or out.get("data", {}).get("text/plain", "")


def test_notebooks_are_committed_without_outputs():
    for name in NOTEBOOKS:
        nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), name
        assert "parameters" in code[0].metadata.get("tags", []), name
        assert "infmask.reporting" in "".join(c.source for c in code), name   # one implementation


def test_every_cell_has_a_stable_id():
    """Read as stored, not through nbformat (which fills in missing ids, with a MissingIDFieldWarning, and a new
    random id on every run)."""
    for name in NOTEBOOKS:
        cells = json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text())["cells"]
        ids = [c.get("id") for c in cells]
        assert all(ids) and len(set(ids)) == len(ids), (name, ids)


def test_notebooks_run_on_a_workspace_with_results(tmp_path):
    root = tmp_path / "ws"
    build_workspace(root)
    paths = execute_notebooks(root, tmp_path / "out")
    assert [p.name for p in paths] == [f"{n}.ipynb" for n in NOTEBOOKS]
    for p in paths:
        nb = nbformat.read(p, as_version=4)
        assert "Workspace" in _first_output(nb) and "empty" not in _first_output(nb)
        assert not [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
        assert p.with_suffix(".html").stat().st_size > 10_000
    figs = root / "reports" / "figures"
    expected = [f"table_{t}_seeds.png" for t in ("trifeatures", "multibench", "multibench3", "mmimdb")] + [
        f"sweep_{SWEEP_ID}_heatmap.png", f"sweep_{SWEEP_ID}_sensitivity.png",   # one pool: the one sweep
        "curves_trifeatures.png"]
    for name in expected:
        assert_png_not_blank(figs / name)
    tables = nbformat.read(paths[0], as_version=4)
    shown = json.dumps([o for c in tables.cells for o in c.get("outputs", [])])
    assert "InfMasking (CLIP backbone) (V+L) [cached features]" in shown and "image/png" in shown


def test_notebooks_say_plainly_when_the_workspace_is_empty_or_missing(tmp_path, capsys):
    empty = tmp_path / "empty"
    assert main(["notebooks", "--root", str(empty)]) == 0          # the CLI, on an empty workspace
    for name in NOTEBOOKS:
        nb = nbformat.read(empty / "reports" / "notebooks" / f"{name}.ipynb", as_version=4)
        assert f"The workspace {empty.resolve()} is empty" in _first_output(nb), name
    assert not (empty / "reports" / "figures").exists()

    missing = tmp_path / "missing"
    for p in execute_notebooks(missing, tmp_path / "out", html_out=False):
        assert "does not exist" in _first_output(nbformat.read(p, as_version=4))
    assert not missing.exists()                                      # looking creates nothing
