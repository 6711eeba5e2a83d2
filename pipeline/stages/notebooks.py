"""`infmask notebooks`: execute the result notebooks (notebooks/*.ipynb) headless on a workspace and render HTML.

Executed copies and HTML go to <root>/reports/notebooks/; the notebooks themselves save their figures under
<root>/reports/figures/. The workspace reaches each notebook twice, so either route works on its own: as an
injected `root = ...` cell after the cell tagged "parameters" (the papermill convention) and as $INFMASK_ROOT.

HTML comes from nbconvert when it is installed (extra `notebooks`); without it a plain built-in rendering
(code, text and PNG outputs) is written instead, so `make notebooks` never depends on it.

Exit codes: 0 all notebooks ran; 1 a cell raised (the partly executed copy is still written, to read the error).
"""
from __future__ import annotations

import base64
import html
import os
import subprocess
import sys
from pathlib import Path

from infmask.data.durable import atomic_write_text

from ..errors import RunFailed, UsageError
from ..workspace import Workspace

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = ("results_tables", "sweep_analysis", "training_curves")
KERNEL = "python3"


def notebooks_cli(args) -> int:
    ws = Workspace.open(getattr(args, "root", None))
    if ws.db_path.exists():  # a damaged store: one line here, not a traceback from inside a notebook's kernel
        from ..store import ResultsStore

        ResultsStore(ws.db_path)
    out_dir = ws.reports / "notebooks"
    paths = execute_notebooks(ws.root, out_dir)
    for p in paths:
        print(f"executed: {p}  (HTML: {p.with_suffix('.html')})")
    return 0


def ensure_kernel() -> None:
    """Make the `python3` kernel spec findable; install it into this venv (--sys-prefix) only when missing."""
    from jupyter_client.kernelspec import KernelSpecManager

    if KERNEL in KernelSpecManager().find_kernel_specs():
        return
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix"], check=True,
                   capture_output=True, timeout=120)


def inject_parameters(nb, **params) -> None:
    """Papermill's convention: a cell tagged 'injected-parameters' right after the one tagged 'parameters'."""
    import nbformat

    src = "# Parameters injected by `infmask notebooks`\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(src, metadata={"tags": ["injected-parameters"]})
    at = next((i + 1 for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])), 0)
    nb.cells.insert(at, cell)


def execute_notebooks(root: Path, out_dir: Path, timeout: int = 120, names: tuple[str, ...] = NOTEBOOKS,
                      html_out: bool = True) -> list[Path]:
    """Run each notebook on workspace `root` with nbclient; write the executed copy (and its HTML) to `out_dir`.
    Any cell error raises RunFailed after the partly executed copy is written. Returns the executed .ipynb paths."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    ensure_kernel()
    root, out_dir = Path(root).resolve(), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, INFMASK_ROOT=str(root), MPLBACKEND="Agg")
    env.pop("JPY_PARENT_PID", None)
    done = []
    for name in names:
        src = NOTEBOOK_DIR / f"{name}.ipynb"
        if not src.is_file():
            raise UsageError(f"notebook {src} is missing")
        nb = nbformat.read(src, as_version=4)
        inject_parameters(nb, root=str(root))
        client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL, allow_errors=False,
                                extra_arguments=["--IPKernelApp.log_level=ERROR"],  # no TCP-transport warning
                                resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
        out = out_dir / f"{name}.ipynb"
        try:
            client.execute(env=env)
        except CellExecutionError as e:
            atomic_write_text(out, nbformat.writes(nb))
            raise RunFailed(f"notebook {name} failed (executed copy with the error: {out}):\n{e}") from e
        atomic_write_text(out, nbformat.writes(nb))
        if html_out:
            atomic_write_text(out.with_suffix(".html"), render_html(nb, name))
        done.append(out)
    return done


def render_html(nb, title: str) -> str:
    try:
        from nbconvert import HTMLExporter
    except ImportError:
        return _plain_html(nb, title)
    body, _ = HTMLExporter().from_notebook_node(nb)
    return body


def _plain_html(nb, title: str) -> str:
    """Minimal rendering without nbconvert: markdown as preformatted text, code, stream/text outputs, PNGs."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}pre{background:#f6f6f6;padding:6px;"
             "overflow-x:auto}.out{background:#fff;border-left:3px solid #ccc}</style></head><body>",
             "<p><em>Rendered without nbconvert (install the `notebooks` extra for full HTML).</em></p>"]
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            parts.append(f"<pre>{html.escape(cell.source)}</pre>")
            continue
        if cell.cell_type != "code":
            continue
        parts.append(f"<pre><code>{html.escape(cell.source)}</code></pre>")
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(f"<pre class='out'>{html.escape(out.get('text', ''))}</pre>")
            elif out.get("output_type") in ("display_data", "execute_result"):
                data = out.get("data", {})
                if "image/png" in data:
                    png = data["image/png"]
                    png = png if isinstance(png, str) else base64.b64encode(png).decode()
                    parts.append(f"<img src='data:image/png;base64,{png.strip()}'/>")
                elif "text/html" in data:
                    parts.append(data["text/html"])
                elif "text/markdown" in data:
                    parts.append(f"<pre class='out'>{html.escape(data['text/markdown'])}</pre>")
                elif "text/plain" in data:
                    parts.append(f"<pre class='out'>{html.escape(data['text/plain'])}</pre>")
            elif out.get("output_type") == "error":
                parts.append(f"<pre class='out'>{html.escape(out.get('ename', ''))}: "
                             f"{html.escape(out.get('evalue', ''))}</pre>")
    return "\n".join(parts + ["</body></html>"])
