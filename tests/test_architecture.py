"""The package layout is the architecture: layers import downwards only, no import circle, thin CLI modules,
one way to rebuild a model from a checkpoint, no file I/O in the method package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "defeat"

#: what each layer may import from the package (besides itself, ``config`` and ``utils``); lower layers first
ALLOWED = {
    "data": set(),
    "models": set(),
    "distill": {"models"},
    "analysis": {"data", "distill", "models"},
    "engine": {"data", "models", "distill", "analysis"},
    "api": {"data", "models", "distill", "analysis", "engine"},
    "study": {"api", "data", "models", "distill", "analysis", "engine"},
    "cli": {"api", "study", "engine", "analysis", "data", "models", "distill"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every ``defeat.*`` module a file imports (at any depth: function-level imports count too)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("defeat")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("defeat"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def resolve(name: str) -> str | None:
    """The package module an imported name refers to (``defeat.api.train`` -> ``defeat.api``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def graph() -> dict[str, set[str]]:
    return {m: {r for r in (resolve(i) for i in imports_of(p)) if r and r != m} for m, p in MODULES.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_layers_import_only_downwards():
    bad = []
    for module, deps in graph().items():
        own = layer(module)
        if own not in ALLOWED:
            continue
        for dep in deps:
            other = layer(dep)
            if other != own and other in ALLOWED and other not in ALLOWED[own]:
                bad.append(f"{module} imports {dep}")
    assert not bad, bad


def test_no_import_circle_between_modules():
    edges = graph()
    # package __init__ files re-export their own submodules: those edges are not circles between layers
    edges = {m: {d for d in deps if not (MODULES[m].name == "__init__.py" and d.startswith(m + "."))}
             for m, deps in edges.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                cycle.extend(path[path.index(dep):] + [node, dep] if dep in path else [node, dep])
                return True
            if dep not in state and visit(dep, path + [node]):
                return True
        state[node] = 2
        return False

    for module in sorted(edges):
        if module not in state and visit(module, []):
            break
    assert not cycle, " -> ".join(cycle)


def test_cli_modules_are_thin():
    sizes = {p.name: len(p.read_text().splitlines()) for p in (SRC / "cli").glob("*.py")}
    assert max(sizes.values()) <= 150, sizes


@pytest.mark.parametrize("package", ["distill", "models"])
def test_method_packages_do_no_file_io(package):
    """The method works on tensors: no checkpoint, JSON or figure I/O in distill/ and models/."""
    banned = ("torch.save", "torch.load", "open(", "write_text", "read_text", "json.dump", "savefig")
    for path in (SRC / package).glob("*.py"):
        text = path.read_text()
        assert not [b for b in banned if b in text], (path.name, [b for b in banned if b in text])
        assert not any(i.startswith("defeat.utils") for i in imports_of(path)), path.name


def calls(path: Path) -> list[ast.Call]:
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)]


def callee(call: ast.Call) -> str:
    return call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", "")


def callers_of(name: str) -> list[str]:
    return sorted(module_name(p) for p in SRC.rglob("*.py") if any(callee(c) == name for c in calls(p)))


def test_one_way_to_rebuild_a_model_from_a_checkpoint():
    """Only ``engine.checkpoint.load_model`` turns a checkpoint into a model; only it and the builder from weight
    files (which also makes fresh models) call ``build_detector``."""
    assert callers_of("build_detector") == ["defeat.engine.checkpoint", "defeat.engine.weights"]
    assert callers_of("load_checkpoint") == ["defeat.engine.checkpoint", "defeat.engine.trainer"]  # trainer: resume
    assert callers_of("load_model")[0] == "defeat.api.features"  # and everything else goes through it


def test_family_knowledge_lives_in_models_families():
    """Only models/families.py asks which torchvision class a detector is."""
    families = {"FasterRCNN", "RetinaNet", "FCOS"}
    askers = sorted(module_name(p) for p in SRC.rglob("*.py")
                    if any(callee(c) == "isinstance" and len(c.args) == 2 and ast.unparse(c.args[1]) in families
                           for c in calls(p)))
    assert askers == [], askers
