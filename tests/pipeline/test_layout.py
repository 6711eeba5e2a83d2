"""The shape of the code: layers import only downwards, no import cycles, small files, every package installed.

pipeline/ is the `infmask` package, models/ `infmask.models`, data/ `infmask.data`. The library layers (models,
data) know nothing of the pipeline; models/ is pure torch and does not read datasets.
"""
import ast
import configparser
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FOLDERS = {"pipeline": "infmask", "models": "infmask.models", "data": "infmask.data"}
MAX_LINES = 500
# at most two cohesive exceptions, each under 750 lines (none today)
LONG_FILES: dict[str, int] = {}


def _modules() -> dict[str, Path]:
    mods = {}
    for folder, pkg in FOLDERS.items():
        for path in (REPO / folder).rglob("*.py"):
            rel = path.relative_to(REPO / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = path
    return mods


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules imported when `name` is imported: module-level statements only (a function's lazy import runs
    later and cannot take part in an import cycle)."""
    here = name if _is_package(path) else name.rpartition(".")[0]
    found = set()

    def resolve(base: str) -> str | None:
        while base and base not in modules:
            base = base.rpartition(".")[0]
        return base or None

    def visit(stmts):
        for node in stmts:
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("infmask") and (m := resolve(a.name)):
                        found.add(m)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here
                    for _ in range(node.level - 1):
                        base = base.rpartition(".")[0]
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                if not base.startswith("infmask"):
                    continue
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    if sub in modules:
                        found.add(sub)
                    elif m := resolve(base):
                        found.add(m)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                for block in ("body", "orelse", "finalbody"):
                    visit(getattr(node, block, []) or [])
                for h in getattr(node, "handlers", []):
                    visit(h.body)
    visit(ast.parse(path.read_text()).body)
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> str:
    for pkg in ("infmask.models", "infmask.data"):
        if module == pkg or module.startswith(pkg + "."):
            return pkg
    return "infmask"


def test_library_layers_never_import_the_pipeline():
    bad = []
    for folder in ("models", "data"):
        for path in (REPO / folder).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):   # lazy imports inside functions count too
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                for n in names:
                    if n.split(".")[0] in ("pipeline", "models", "data") or (
                            n.startswith("infmask") and _layer(n) == "infmask"):
                        bad.append(f"{path.relative_to(REPO)}:{node.lineno} imports {n}")
                    if folder == "models" and _layer(n) == "infmask.data" and n.startswith("infmask"):
                        bad.append(f"{path.relative_to(REPO)}:{node.lineno} imports {n}")
    assert not bad, "\n".join(bad)


def test_the_import_graph_has_no_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def dfs(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                dfs(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            dfs(node, [])
    assert not cycles, "\n".join(cycles)


def test_files_are_small():
    long = {str(p.relative_to(REPO)): n for folder in FOLDERS for p in (REPO / folder).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert set(long) <= set(LONG_FILES) and all(n < 750 for n in long.values()), long


def test_every_package_folder_is_installed():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    on_disk = {name for name, path in _modules().items() if _is_package(path)}
    assert listed == on_disk
