"""The house rules of the Python code, read from its import statements:
no import circle; the rooms of htsparse_llama (its subpackages) import only
rooms below them (LAYERS); no module imports another module's _private
names; the converter imports nothing of the runtime package (convert ->
GGUF files -> runtime); no package module is imported inside a function
(the sign of a circle being dodged).

    python tests/test_layering.py     # the graph's numbers: modules, arrows, circles, ...
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Set, Tuple

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "htsparse_llama": ROOT / "python" / "htsparse_llama",
    "htsparse_convert": ROOT / "convert" / "htsparse_convert",
}
EXTENSIONS = {"htsparse_llama._native"}  # compiled modules (python/src)

# Rooms of htsparse_llama, lowest first; a room imports only rooms of a lower rank
# (the public core is the package's own top-level modules).
LAYERS = {
    "core": 0,
    "video": 1,
    "fetch": 1,
    "tasks": 2,
    "calibrate": 3,
    "bench": 3,
    "server": 3,
    "cli": 4,
    "__main__": 5,
}


@dataclass
class Graph:
    modules: Dict[str, Path]
    arrows: Dict[str, Set[str]] = field(default_factory=lambda: defaultdict(set))
    local_imports: List[Tuple[str, str]] = field(default_factory=list)  # inside a function
    private_names: List[Tuple[str, str, str]] = field(default_factory=list)
    external: Dict[str, Set[str]] = field(default_factory=lambda: defaultdict(set))  # other package's modules


def _module_name(pkg: str, root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([pkg] + parts)


def _resolve(module: str, is_package: bool, level: int, name: str) -> str:
    if level == 0:
        return name
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _in_function(node: ast.AST, parents: Dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return True
    return False


def build_graph(pkg: str) -> Graph:
    root = PACKAGES[pkg]
    g = Graph({_module_name(pkg, root, p): p for p in sorted(root.rglob("*.py"))})
    known = set(g.modules) | EXTENSIONS
    for module, path in g.modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            targets: List[Tuple[str, str]] = []  # (module, name imported from it or "")
            if isinstance(node, ast.Import):
                targets = [(a.name, "") for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, path.name == "__init__.py", node.level, node.module or "")
                targets = [
                    (f"{base}.{a.name}", "") if f"{base}.{a.name}" in known else (base, a.name) for a in node.names
                ]
            for target, name in targets:
                top = target.split(".")[0]
                if top in PACKAGES and top != pkg:
                    g.external[module].add(target)
                if top != pkg:
                    continue
                while target not in known and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target != module:
                    g.arrows[module].add(target)
                if _in_function(node, parents):
                    g.local_imports.append((module, target))
                if name.startswith("_") and not name.startswith("__"):
                    g.private_names.append((module, target, name))
    return g


def circles(g: Graph) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g.arrows.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g.modules:
        if v not in index:
            visit(v)
    return out


def room(module: str) -> str:
    """htsparse_llama.video.turn -> "video"; top-level modules -> "core"."""
    parts = module.split(".")
    if len(parts) == 1 or (len(parts) == 2 and parts[1] not in LAYERS):
        return "core"
    return parts[1]


def upward_arrows(g: Graph) -> List[Tuple[str, str]]:
    """Arrows into a room of the same or a higher rank than the importer's own (other than itself)."""
    bad = []
    for src, targets in g.arrows.items():
        for dst in targets:
            a, b = room(src), room(dst)
            if a != b and LAYERS[b] >= LAYERS[a]:
                bad.append((src, dst))
    return sorted(bad)


# -- the rules ------------------------------------------------------------------------------------


def test_no_import_circles():
    for pkg in PACKAGES:
        assert circles(build_graph(pkg)) == [], pkg


def test_rooms_import_only_rooms_below():
    g = build_graph("htsparse_llama")
    assert {room(m) for m in g.modules} <= set(LAYERS), "a new room needs its place in LAYERS"
    assert upward_arrows(g) == []


def test_no_private_names_across_modules():
    for pkg in PACKAGES:
        assert build_graph(pkg).private_names == [], pkg


def test_no_package_imports_inside_functions():
    for pkg in PACKAGES:
        assert build_graph(pkg).local_imports == [], pkg


def test_the_converter_stands_beside_the_runtime():
    assert dict(build_graph("htsparse_convert").external) == {}


def test_the_checks_see_a_circle_and_an_upward_arrow():
    """The checks themselves: a circle and an upward arrow are found."""
    g = Graph({"p.a": Path("a"), "p.b": Path("b"), "p.cli.x": Path("x"), "p.video.y": Path("y")})
    g.arrows.update({"p.a": {"p.b"}, "p.b": {"p.a"}, "p.video.y": {"p.cli.x"}})
    assert circles(g) == [["p.a", "p.b"]]
    assert upward_arrows(g) == [("p.video.y", "p.cli.x")]


def summary(pkg: str) -> str:
    g = build_graph(pkg)
    cyc = circles(g)
    up = upward_arrows(g) if pkg == "htsparse_llama" else []
    return (
        f"{pkg}: {len(g.modules)} modules, {sum(len(t) for t in g.arrows.values())} arrows, {len(cyc)} circles "
        f"({sum(len(c) for c in cyc)} modules in them), {len(up)} upward arrows between rooms, "
        f"{len(g.local_imports)} function-local imports of package modules, {len(g.private_names)} private-name "
        f"imports, imports of the other package: {sorted(t for ts in g.external.values() for t in ts)}"
    )


if __name__ == "__main__":
    for name in PACKAGES:
        print(summary(name))
    sys.exit(0)
