"""The package's layers import only downwards: shared definitions (core) know nothing of the store,
the store nothing of reports or the driver, reports nothing of the driver, the driver nothing of the
studies, nothing of the command line (the edge), and the backends only the shared definitions and
the contract; and no module grows past MAX_LINES, where it holds more than one meaning. Read from
the source, so a new back-edge, an import circle or an outgrown module fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

# package -> the framebench packages it may import (besides itself and framebench.errors)
ALLOWED = {
    "core": set(),
    "store": {"core"},
    "reports": {"core", "store"},
    "history": {"core", "store", "reports"},
    "driver": {"core", "store", "reports", "history"},
    "studies": {"core", "store", "reports", "history", "driver", "impls"},
    "cli": {"core", "store", "reports", "history", "driver", "studies"},
    "impls": {"core", "store"},
    "testing": {"core", "store"},
}
FOLDERS = {"impls": REPO / "impls", "cli": REPO / "bench" / "cli.py"}
MAX_LINES = 420  # a module longer than this holds more than one meaning: split it along them (issue 27)


def modules(package: str) -> list[Path]:
    where = FOLDERS.get(package, REPO / "bench" / package)
    return [where] if where.is_file() else sorted(where.glob("*.py"))


def imported_packages(path: Path) -> set[str]:
    """The framebench sub-packages a module imports, at any depth of its code (lazy imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "framebench" and len(parts) > 1 and parts[1] != "errors":
                found.add(parts[1])
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_layer_imports_only_the_layers_below_it(package):
    for path in modules(package):
        upward = imported_packages(path) - ALLOWED[package] - {package}
        assert not upward, f"{path.relative_to(REPO)} imports framebench.{', framebench.'.join(sorted(upward))}"


def test_the_layer_check_sees_a_back_edge(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from framebench.driver.session import run\n")
    assert imported_packages(module) == {"driver"}


def test_no_module_finds_the_checkout_through_its_own_file():
    offenders = [p for p in (REPO / "bench").rglob("*.py") if "parent.parent" in p.read_text()]
    assert not offenders, offenders


def modules_over(limit: int, *folders: Path) -> dict[Path, int]:
    """Every module under `folders` (at any depth) longer than `limit` lines, with its line count."""
    counts = {path: len(path.read_text().splitlines()) for folder in folders for path in sorted(folder.rglob("*.py"))}
    return {path: lines for path, lines in counts.items() if lines > limit}


def test_no_module_is_longer_than_the_line_limit():
    over = {str(path.relative_to(REPO)): lines for path, lines in modules_over(MAX_LINES, REPO / "bench", REPO / "impls").items()}
    listed = ", ".join(f"{name} ({lines})" for name, lines in sorted(over.items()))
    assert not over, f"over {MAX_LINES} lines, split along their meanings: {listed}"


def test_the_line_limit_sees_a_long_module(tmp_path):
    (tmp_path / "deep").mkdir()
    (tmp_path / "short.py").write_text("x = 1\n" * MAX_LINES)
    (tmp_path / "deep" / "long.py").write_text("x = 1\n" * (MAX_LINES + 1))
    assert modules_over(MAX_LINES, tmp_path) == {tmp_path / "deep" / "long.py": MAX_LINES + 1}


def module_graph(root: Path, package: str) -> dict[str, set[str]]:
    """{module: the modules of the same tree it imports, lazily too}, modules named as installed."""
    names = {
        path: ".".join([package, *path.relative_to(root).with_suffix("").parts]).removesuffix(".__init__") for path in root.rglob("*.py")
    }
    graph = {}
    for path, name in names.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
        graph[name] = (imported & set(names.values())) - {name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle a depth-first walk meets, each as the path round it."""
    state, path, found = {}, [], []

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                found.append(path[path.index(imported) :] + [imported])
            elif imported not in state:
                visit(imported)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


def test_no_modules_import_each_other_round_a_circle():
    found = circles(module_graph(REPO / "bench", "framebench"))
    assert not found, "import circles: " + "; ".join(" -> ".join(circle) for circle in found)


def test_the_circle_check_sees_a_lazy_circle(tmp_path):
    (tmp_path / "a.py").write_text("from pkg import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from pkg.a import x\n")
    assert circles(module_graph(tmp_path, "pkg")) == [["pkg.a", "pkg.b", "pkg.a"]]
