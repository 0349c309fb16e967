"""The import graph of sftpipe: no module cycles, no package cycles, and no package imports one above it.

Every import counts, wherever it is written: at the top, under `if TYPE_CHECKING:` or inside a function. A
function-local import still ties two modules together (neither can be moved, split or understood without
the other); it only hides the cycle from Python until the function runs. `from a import b` counts as
importing the submodule `a.b` when there is one, and as importing `a` otherwise. The graph is read from the
source with `ast`: nothing is imported to build it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
ROOT = "sftpipe"

# DESIGN.md's layers, highest first: a package may import packages of its own layer or below, never above.
# Top-level modules are placed like packages; a name missing here fails `test_every_package_has_a_layer`.
LAYERS: list[set[str]] = [
    {"cli"},  # parse, run a stage, print; the demo runs every stage
    {"hpo"},
    {"stages"},  # composes the train stage with evaluate's validation and in-training eval
    {"train", "evaluate", "export", "infer", "preflight", "data.prepare"},  # the stages (prepare lives in data/)
    {"models"},  # loads and builds models; uses data's templates and labels
    {"data"},  # the record model, templates, tokenization with masks, batching
    {"contracts", "config"},
    {"errors", "redact"},
]
# Same layer and still forbidden, either way: the loop receives evaluation as callables (see stages.py).
FORBIDDEN = {("train", "evaluate"), ("evaluate", "train")}

# Module cycles (the modules of one strongly connected component, dotted names below sftpipe) that are
# tolerated: none. Kept as a set so that the tests below read the same whatever is found.
KNOWN_MODULE_CYCLES: set[frozenset[str]] = set()
# Package cycles (top-level sub-packages and modules of sftpipe):
KNOWN_PACKAGE_CYCLES: set[frozenset[str]] = set()


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The modules among `modules` that the import statements anywhere in `tree` (the source of `module`) import."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name
                while name and name not in modules:  # `import a.b.c` of a name that is not a module: its package
                    name = name.rpartition(".")[0]
                if name:
                    found.add(name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package (a package's __init__ is its own package)
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in modules:
                    found.add(submodule)
                elif source in modules:
                    found.add(source)
    found.discard(module)
    return found


def import_graph(src: Path, root: str = ROOT) -> dict[str, set[str]]:
    """Module -> the modules of package `root` it imports, from the sources of `root` under `src`."""
    paths = {module_name(p, src): p for p in sorted((src / root).rglob("*.py"))}
    modules = set(paths)
    return {name: imported_modules(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), name,
                                   path.name == "__init__.py", modules)
            for name, path in paths.items()}


# Sub-packages placed on a layer of their own, unlike the rest of their package.
STAGE_SUBPACKAGES = ("data.prepare",)


def package_of(module: str) -> str | None:
    """The top-level sub-package (or module) of sftpipe that `module` belongs to, or one of STAGE_SUBPACKAGES;
    None for the root package."""
    parts = module.split(".")
    for sub in STAGE_SUBPACKAGES:
        if parts[1 : 1 + sub.count(".") + 1] == sub.split("."):
            return sub
    return parts[1] if len(parts) > 1 else None


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Package -> the other packages its modules import."""
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        source = package_of(module)
        if source is None:
            continue
        packages.setdefault(source, set())
        packages[source] |= {t for t in map(package_of, targets) if t is not None and t != source}
    return packages


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """Strongly connected components of more than one node (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.add(frozenset(component))
    return found


def layer_violations(packages: dict[str, set[str]], layers: list[set[str]] = LAYERS,
                     forbidden: set[tuple[str, str]] = FORBIDDEN) -> list[str]:
    """'a -> b' for every package that imports a package of a higher layer, or one it must never import."""
    rank = {name: level for level, names in enumerate(layers) for name in names}
    return sorted(f"{source} -> {target}" for source, targets in packages.items() for target in targets
                  if rank[target] < rank[source] or (source, target) in forbidden)


def _short(components: Iterable[frozenset[str]]) -> list[list[str]]:
    return sorted(sorted(m.removeprefix(f"{ROOT}.") for m in c) for c in components)


def _strip(components: set[frozenset[str]]) -> set[frozenset[str]]:
    return {frozenset(m.removeprefix(f"{ROOT}.") for m in c) for c in components}


GRAPH = import_graph(SRC)
PACKAGES = package_graph(GRAPH)


def test_the_graph_is_read_from_every_module():
    # positive control: a graph that lost its edges would pass every test below
    assert len(GRAPH) > 50
    assert "sftpipe.data.batches.loader" in GRAPH["sftpipe.train.loop"]
    plan = GRAPH["sftpipe.data.batches.plan"]
    assert "sftpipe.config.schema" in plan and "sftpipe.config" not in plan  # the module named, not its package
    assert {"data", "models", "config"} <= PACKAGES["train"] and {"train", "evaluate"} <= PACKAGES["stages"]


def test_no_module_imports_form_a_cycle():
    found = _strip(cycles(GRAPH))
    assert _short(found - KNOWN_MODULE_CYCLES) == [], "new import cycle between modules"
    assert _short(KNOWN_MODULE_CYCLES - found) == [], "a known cycle is gone: remove it from KNOWN_MODULE_CYCLES"


def test_no_package_imports_form_a_cycle():
    found = cycles(PACKAGES)
    assert _short(found - KNOWN_PACKAGE_CYCLES) == [], "new import cycle between packages"
    assert _short(KNOWN_PACKAGE_CYCLES - found) == [], "a known cycle is gone: remove it from KNOWN_PACKAGE_CYCLES"


def test_no_package_imports_a_package_above_it():
    assert layer_violations(PACKAGES) == []


def test_train_and_evaluate_never_import_each_other():
    assert "evaluate" not in PACKAGES["train"] and "train" not in PACKAGES["evaluate"]
    assert not any({"train", "evaluate"} <= cycle for cycle in KNOWN_PACKAGE_CYCLES)


def test_every_package_has_a_layer():
    placed = set().union(*LAYERS)
    assert sorted(set(PACKAGES) - placed) == []


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_checker_finds_cycles_hidden_in_functions_type_checking_and_submodule_imports(tmp_path):
    """Negative control: every form of import closes a cycle in a small synthetic package."""
    src = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low/__init__.py": "",
        "pkg/low/a.py": "def f():\n    from pkg.high import b\n",  # function-local, submodule by `from`
        "pkg/low/c.py": "from . import a\n",  # relative
        "pkg/high/__init__.py": "",
        "pkg/high/b.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.low.c\n"),
        "pkg/high/d.py": "from pkg.low import a\nimport os\n",  # no cycle: nothing imports d
        "pkg/solo.py": "from pkg.high import d\n",
    })
    graph = import_graph(src, "pkg")
    assert graph["pkg.low.a"] == {"pkg.high.b"} and graph["pkg.low.c"] == {"pkg.low.a"}
    assert graph["pkg.high.b"] == {"pkg.low.c"} and graph["pkg.high.d"] == {"pkg.low.a"}
    assert cycles(graph) == {frozenset({"pkg.low.a", "pkg.high.b", "pkg.low.c"})}
    packages = package_graph(graph)
    assert cycles(packages) == {frozenset({"low", "high"})}
    layers = [{"solo"}, {"high"}, {"low"}]
    assert layer_violations(packages, layers, set()) == ["low -> high"]
    assert layer_violations(packages, layers, {("solo", "high")}) == ["low -> high", "solo -> high"]


def test_checker_passes_an_acyclic_layered_package(tmp_path):
    src = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low/__init__.py": "X = 1\n",
        "pkg/low/a.py": "from pkg.low import X\n",  # a package's __init__, not a submodule
        "pkg/high/__init__.py": "",
        "pkg/high/b.py": "from pkg.low.a import f\nfrom ..low import a\n",
    })
    graph = import_graph(src, "pkg")
    assert graph["pkg.low.a"] == {"pkg.low"} and graph["pkg.high.b"] == {"pkg.low.a"}
    assert cycles(graph) == set()
    assert layer_violations(package_graph(graph), [{"high"}, {"low"}], set()) == []
