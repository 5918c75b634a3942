"""The layering the project promises: no import circles, and a core that imports without Flower."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedtt_flwr", "strategies", "client_app", "server_app")
#: the library's core: everything a user needs to fine-tune with TT adapters, with or without Flower
CORE = ("tt", "adapters", "config", "models", "data", "train", "methods", "privacy", "report", "checkpoint",
        "centralized", "prompts")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node that can run: all of them but the bodies of ``if TYPE_CHECKING:`` (annotations only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in ast.walk(child))
            continue
        yield node
        yield from _runtime_nodes(node)


def import_graph() -> dict[str, set[str]]:
    """Module -> project modules it imports, at module level or inside functions (both run sooner or later);
    imports only for type checkers do not count."""
    modules = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                found = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in found:
                while target and target not in modules:  # `import a.b.c` uses a.b.c; `from a import f`: a
                    target = target.rpartition(".")[0]
                if target and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_imports_of_every_kind():
    graph = import_graph()
    assert "fedtt_flwr.adapters" in graph["fedtt_flwr.checkpoint"]  # module level, relative
    assert "strategies.protocol" in graph["fedtt_flwr.client"]  # module level, absolute
    assert "fedtt_flwr.launch" in graph["fedtt_flwr.cli"]  # inside a function
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles():
    found = cycles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_core_imports_without_flower():
    """A process in which `import flwr` fails imports every core module (and `strategies.schedules`, which the
    core uses): Flower stays in the strategies, the apps and the runtime helpers."""
    code = f"""
import sys
class NoFlower:
    def find_spec(self, name, path=None, target=None):
        if name == "flwr" or name.startswith("flwr."):
            raise ImportError("flwr is not importable in this test")
sys.meta_path.insert(0, NoFlower())
import importlib
for name in {[f"fedtt_flwr.{m}" for m in CORE] + ["fedtt_flwr", "strategies.schedules"]!r}:
    importlib.import_module(name)
assert not any(m == "flwr" or m.startswith("flwr.") for m in sys.modules), "flwr was imported"
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_benchmarks_are_a_package_without_path_hacks():
    """``python -m benchmarks.<name>`` from the repository root: no script edits ``sys.path``."""
    scripts = sorted((ROOT / "benchmarks").glob("*.py"))
    assert (ROOT / "benchmarks" / "__init__.py") in scripts
    assert not [p.name for p in scripts if "sys.path.insert" in p.read_text()]
