"""Files the pipeline writes honour the user's umask (written atomically, but never left at mkstemp's 0600), so
collaborators on a shared workspace can read reports, figures, notebooks and run configs."""
from infmask import reporting as R
from infmask.cli import main
from helpers.files import file_mode
from helpers.report_fixtures import build_workspace


def test_report_tables_and_figures_are_readable_by_the_group(tmp_path, umask):
    umask(0o022)
    root = tmp_path / "ws"
    build_workspace(root, parts=("trifeatures", "sweep"))
    assert main(["report", "--table", "trifeatures", "--root", str(root), "--no-wandb"]) == 0
    assert main(["report", "--sweep", "tri-grid-1", "--root", str(root), "--no-wandb"]) == 0
    written = [p for p in (root / "reports").rglob("*") if p.is_file()]
    assert {p.suffix for p in written} >= {".md", ".csv", ".tex", ".png"}
    for p in written:
        assert file_mode(p) == 0o644, (p.name, oct(file_mode(p)))
    rep = R.build_table(R.load_results(root), "trifeatures")
    png = R.plot_seed_strips(rep, R.figures_dir(root) / "strips.png")
    assert file_mode(png) == 0o644
