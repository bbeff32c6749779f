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
    edges = {
        m: {d for d in deps if not (MODULES[m].name == "__init__.py" and d.startswith(m + "."))}
        for m, deps in edges.items()
    }
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                cycle.extend(path[path.index(dep) :] + [node, dep] if dep in path else [node, dep])
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
    """Counted in statements, not lines, so that the formatter's one-argument-a-line layout does not count."""
    sizes = {
        p.name: sum(isinstance(n, ast.stmt) for n in ast.walk(ast.parse(p.read_text())))
        for p in (SRC / "cli").glob("*.py")
    }
    assert max(sizes.values()) <= 80, sizes


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
    files (which also makes fresh models) call ``build_detector``; everything else loads models through the API."""
    assert callers_of("build_detector") == ["defeat.engine.checkpoint", "defeat.engine.weights"]
    assert callers_of("load_checkpoint") == ["defeat.engine.checkpoint", "defeat.engine.trainer"]  # trainer: resume
    loaders = callers_of("load_model")
    assert loaders and all(m.startswith(("defeat.api.", "defeat.engine.")) for m in loaders), loaders


DETECTOR_CLASSES = {"FasterRCNN", "RetinaNet", "FCOS"}
#: where detector classes may be named: the builders and the one module that asks a built model its family
MODEL_BUILDERS = {"defeat.models.families", "defeat.models.zoo", "defeat.models.torchvision_zoo"}
NAME_WORDS = ("fpn", "resnet", "mobilenet", "fasterrcnn", "faster_rcnn", "retinanet", "fcos", "_r")


def _names_in(node: ast.AST) -> set[str]:
    """Identifiers and attribute names under ``node`` (``detection.FCOS`` -> {'detection', 'FCOS'})."""
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
    }


def class_questions(path: Path) -> list[str]:
    """Every place a file names a torchvision detector class: imports, isinstance/issubclass (any form: tuples,
    attributes), ``type(x) is ...`` and class-name strings compared with something."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            found += [f"import {a.name}" for a in node.names if a.name in DETECTOR_CLASSES]
        elif isinstance(node, ast.Call) and callee(node) in ("isinstance", "issubclass") and len(node.args) == 2:
            found += [f"{callee(node)} {n}" for n in _names_in(node.args[1]) & DETECTOR_CLASSES]
        elif isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
            found += [f"compare {n}" for n in set().union(*map(_names_in, parts)) & DETECTOR_CLASSES]
            found += [
                f"compare '{c.value}'" for c in parts if isinstance(c, ast.Constant) and c.value in DETECTOR_CLASSES
            ]
    return found


def name_parsing(path: Path, module: str | None = None) -> list[str]:
    """Every place a file takes a model name apart: regexes over names, split/startswith/endswith/partition/``in``
    with a piece of a name (``"_r"``, ``"resnet"``, ``"mobilenet"``, ...), and, outside ``defeat.models``, tables
    keyed by family."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            pieces = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            pieces += [
                e.value
                for a in node.args
                if isinstance(a, ast.Tuple)
                for e in a.elts
                if isinstance(e, ast.Constant) and isinstance(e.value, str)
            ]
            if node.func.attr in ("compile", "match", "fullmatch", "search") and any(
                w in p for p in pieces for w in ("fpn", "resnet", "_r")
            ):
                found.append(f"re.{node.func.attr}({pieces[0]!r})")
            if node.func.attr in ("split", "rsplit", "startswith", "endswith", "partition") and any(
                p.strip("_") and w in p for p in pieces for w in NAME_WORDS
            ):
                found.append(f".{node.func.attr}({pieces!r})")
        elif (
            isinstance(node, ast.Compare)
            and any(isinstance(op, ast.In) for op in node.ops)
            and isinstance(node.left, ast.Constant)
            and isinstance(node.left.value, str)
            and any(w in node.left.value for w in ("resnet", "mobilenet", "_fpn"))
        ):
            found.append(f"{node.left.value!r} in ...")
        elif isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
            if len(keys & {"faster_rcnn", "retinanet", "fcos"}) >= 2 and not (module or module_name(path)).startswith(
                "defeat.models"
            ):
                found.append("a table keyed by family")
    return found


def test_family_knowledge_lives_in_models():
    """Only the builders and models/families.py name torchvision's detector classes; only models/spec.py takes
    model names apart; per-family tables stay in defeat.models; every other module asks them."""
    questions = {module_name(p): class_questions(p) for p in SRC.rglob("*.py")}
    assert {m: q for m, q in questions.items() if q and m not in MODEL_BUILDERS} == {}
    parsing = {module_name(p): name_parsing(p) for p in SRC.rglob("*.py")}
    assert {m: q for m, q in parsing.items() if q and m != "defeat.models.spec"} == {}


def test_the_family_checks_can_fail(tmp_path):
    """The two checks above see what they are meant to see (so an empty result means something)."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from torchvision.models.detection import FCOS, FasterRCNN\nimport re\n"
        "a = isinstance(m, (FasterRCNN, detection.RetinaNet))\nb = type(m) is FCOS\n"
        "c = type(m).__name__ == 'RetinaNet'\nd = re.compile(r'^(fcos)_r(\\d+)_fpn$')\n"
        "e = name.split('_r')\nf = 'mobilenet' in name\ng = {'faster_rcnn': 4, 'fcos': 8}\n"
    )
    assert sorted(class_questions(sample)) == [
        "compare 'RetinaNet'",
        "compare FCOS",
        "import FCOS",
        "import FasterRCNN",
        "isinstance FasterRCNN",
        "isinstance RetinaNet",
    ]
    assert len(name_parsing(sample, module="defeat.api.sample")) == 4
