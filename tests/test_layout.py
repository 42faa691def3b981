"""The package layout: every name the README documents imports, and the modules import each other without a
circle."""

import ast
import importlib
import re
from pathlib import Path

import pytest

import pccseg

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "pccseg"


def readme_names() -> set[str]:
    """Dotted names the README documents: ``from pccseg.x import a, b`` lines and ``pccseg.x.y`` in
    backquotes."""
    text = (ROOT / "README.md").read_text()
    names = set()
    for module, imported in re.findall(r"^from (pccseg[\w.]*) import ([\w, ]+)", text, flags=re.M):
        names.update(f"{module}.{n.strip()}" for n in imported.split(","))
    names.update(re.findall(r"`(pccseg(?:\.\w+)+)", text))
    return names


def resolve(dotted: str):
    """Import the longest module prefix of ``dotted``, then get the rest as attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_readme_names_import():
    names = readme_names()
    # the README's own examples: the Python API block and the prose after it
    assert {"pccseg.capture.capture", "pccseg.label", "pccseg.train.train", "pccseg.train.evaluate.evaluate",
            "pccseg.capture.synthetic.planted_capture", "pccseg.dataset.generate.generate"} <= names
    unresolved = []
    for name in sorted(names):
        try:
            resolve(name)
        except (ImportError, AttributeError) as e:
            unresolved.append(f"{name}: {e}")
    assert not unresolved


def test_public_api():
    for name in pccseg.__all__:
        assert getattr(pccseg, name) is not None
    with pytest.raises(AttributeError, match="no_such_name"):
        pccseg.no_such_name
    from pccseg.capture import capture
    from pccseg.capture.attention import capture as capture_fn
    from pccseg.train import TrainConfig, train
    assert capture is capture_fn and train.__module__ == "pccseg.train.loop"
    assert TrainConfig is pccseg.TrainConfig


def imports_of(path: Path, module: str, is_package: bool) -> set[str]:
    """pccseg modules that ``module`` imports anywhere: at the top, inside functions (the heavy imports of
    the commands) and under ``if TYPE_CHECKING:``."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            found.update(f"{base}.{a.name}" for a in node.names)   # a submodule, or a name of ``base``
            found.add(base)
    return {m for m in found if m.startswith("pccseg")}


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of the directed graph ``module -> modules it imports``, or None."""
    done, stack = set(), []

    def visit(m):
        if m in stack:
            return stack[stack.index(m):] + [m]
        if m in done:
            return None
        stack.append(m)
        for n in sorted(graph[m]):
            if (circle := visit(n)) is not None:
                return circle
        stack.pop()
        done.add(m)
        return None

    for m in sorted(graph):
        if (circle := visit(m)) is not None:
            return circle
    return None


def test_find_circle():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) is None
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_circles():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    graph = {m: imports_of(p, m, pkg) & modules.keys() - {m} for m, (p, pkg) in modules.items()}
    # what training and evaluation share is in deeplab, which imports neither
    assert {"pccseg.train.deeplab", "pccseg.dataset.voc"} <= graph["pccseg.train.evaluate"]
    assert "pccseg.train.evaluate" in graph["pccseg.train.loop"]
    assert not graph["pccseg.train.deeplab"] & {"pccseg.train.loop", "pccseg.train.evaluate"}
    assert find_circle(graph) is None


#: the folders in the order data flows through them; a module may import its own folder and those before it
FLOW = ("capture", "labellers", "dataset", ("train", "pictures"), "toy", "commands")


def test_imports_follow_the_flow():
    """No import from a lower folder to a higher one (imports inside functions included): capture ->
    labellers -> dataset -> train / pictures -> toy -> commands."""
    rank = {}
    for i, step in enumerate(FLOW):
        for folder in (step if isinstance(step, tuple) else (step,)):
            rank[folder] = i
    backwards = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if len(parts) < 3 or parts[1] not in rank:
            continue
        is_package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_package else parts)
        for imported in imports_of(path, module, is_package):
            folder = imported.split(".")[1] if imported.count(".") else None
            if folder in rank and rank[folder] > rank[parts[1]]:
                backwards.append(f"{module} -> {imported}")
    assert not backwards


#: the most lines a module of src/ may have: a longer one usually holds two jobs
MAX_LINES = 450


def test_no_module_over_the_line_limit():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by role): {long}"


def test_scripts_import_names_that_exist():
    """bench/ scripts import pccseg names inside functions, where a rename goes unnoticed until a user
    runs them: every ``from pccseg... import name`` there must resolve."""
    missing = []
    for path in sorted(ROOT.glob("bench/*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                    and node.module.split(".")[0] == "pccseg"):
                continue
            for alias in node.names:
                try:
                    resolve(f"{node.module}.{alias.name}")
                except (ImportError, AttributeError):
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.module}.{alias.name}")
    assert missing == []
