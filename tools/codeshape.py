"""The package's shape, measured from its source (nothing is imported or run).

    python tools/codeshape.py imports   # import cycles between mmfuse's modules, and imports that break the layers
    python tools/codeshape.py sizes     # the largest modules and functions, in lines

Every import counts, also one inside a function or under `if TYPE_CHECKING:` (a type annotation is a dependency
too). A package's `__init__.py` is a module of its own (`mmfuse.tasks`), so `from . import name` inside the package
is an import of the `__init__.py`.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "mmfuse"

LAYERS: dict[str, tuple[str, ...]] = {
    # a module of the key's layer may not import from any of these
    "mmfuse.model": ("mmfuse.train", "mmfuse.tasks", "mmfuse.inference", "mmfuse.serving", "mmfuse.commands",
                     "mmfuse.finetune", "mmfuse.tune", "mmfuse.bench"),
    "mmfuse.data": ("mmfuse.train", "mmfuse.tasks", "mmfuse.inference", "mmfuse.serving", "mmfuse.commands",
                    "mmfuse.finetune", "mmfuse.tune", "mmfuse.bench", "mmfuse.model"),
    "mmfuse.encoders": ("mmfuse.train", "mmfuse.tasks", "mmfuse.inference", "mmfuse.serving", "mmfuse.commands",
                        "mmfuse.finetune", "mmfuse.tune", "mmfuse.bench", "mmfuse.model", "mmfuse.data"),
    "mmfuse.fusion": ("mmfuse.train", "mmfuse.tasks", "mmfuse.inference", "mmfuse.serving", "mmfuse.commands",
                      "mmfuse.finetune", "mmfuse.tune", "mmfuse.bench", "mmfuse.model", "mmfuse.data"),
    # tune sits above finetune: fine-tuning and training know nothing of the search that drives them
    "mmfuse.finetune": ("mmfuse.tune", "mmfuse.commands"),
    "mmfuse.train": ("mmfuse.tune", "mmfuse.commands"),
    "mmfuse.tasks": ("mmfuse.tune", "mmfuse.commands"),
}


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, bool]]:
    """(imported module, only under TYPE_CHECKING) for each import of `name`'s module inside the package."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def resolve(module: str | None, level: int) -> str:
        if not level:
            return module or ""
        base = package.split(".")
        base = base[: len(base) - (level - 1)]
        return ".".join(base + ([module] if module else []))

    def visit(node: ast.AST, typing_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.body:
                    visit_stmt(stmt, True)
                for stmt in child.orelse:
                    visit_stmt(stmt, typing_only)
            else:
                visit_stmt(child, typing_only)

    def visit_stmt(node: ast.AST, typing_only: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    found.append((_nearest(alias.name, known), typing_only))
        elif isinstance(node, ast.ImportFrom):
            target = resolve(node.module, node.level)
            if target.split(".")[0] != PACKAGE:
                return
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in known else _nearest(target, known), typing_only))
        else:
            visit(node, typing_only)

    visit(tree, False)
    return [(m, t) for m, t in found if m and m != name]


def _nearest(module: str, known: dict[str, Path]) -> str:
    while module and module not in known:
        module = module.rpartition(".")[0]
    return module


def graph(root: Path = ROOT) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(runtime import graph, graph with the TYPE_CHECKING imports too)."""
    known = modules(root)
    runtime: dict[str, set[str]] = defaultdict(set)
    everything: dict[str, set[str]] = defaultdict(set)
    for name, path in known.items():
        runtime[name], everything[name] = set(), set()
        for target, typing_only in imports(name, path, known):
            everything[name].add(target)
            if not typing_only:
                runtime[name].add(target)
    return dict(runtime), dict(everything)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted; sorted by first module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(10_000)

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
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
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return sorted(out)


def layer_violations(edges: dict[str, set[str]]) -> list[str]:
    """'a imports b' for each import that goes against `LAYERS`."""
    def under(module: str, prefix: str) -> bool:
        return module == prefix or module.startswith(prefix + ".")

    out = []
    for source, targets in sorted(edges.items()):
        for layer, forbidden in LAYERS.items():
            if under(source, layer):
                out += [f"{source} imports {t}" for t in sorted(targets) if any(under(t, f) for f in forbidden)]
    return out


def sizes(root: Path = ROOT, top: int = 12) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(largest modules, largest functions and methods), as (lines, name)."""
    files, functions = [], []
    for path in modules(root).values():
        text = path.read_text()
        files.append((len(text.splitlines()), str(path.relative_to(root))))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(root)}:{node.name}"))
    return sorted(files, reverse=True)[:top], sorted(functions, reverse=True)[:top]


def main(argv: list[str]) -> int:
    what = argv[0] if argv else "imports"
    if what == "imports":
        runtime, everything = graph()
        found = cycles(everything)
        print(f"{len(everything)} modules, {sum(map(len, everything.values()))} imports "
              f"({sum(map(len, runtime.values()))} outside TYPE_CHECKING); {len(found)} import cycles")
        for i, component in enumerate(found, 1):
            print(f"  cycle {i}: {' <-> '.join(component)}")
        wrong = layer_violations(everything)
        print(f"{len(wrong)} imports against the layers (model, data, encoders, fusion import no train, tasks, "
              f"inference, serving, commands, finetune, tune, bench; finetune, train, tasks import no tune)")
        for line in wrong:
            print(f"  {line}")
        return 1 if found or wrong else 0
    if what == "sizes":
        files, functions = sizes()
        print("largest modules (lines):")
        for n, name in files:
            print(f"  {n:5d}  {name}")
        print("largest functions (lines):")
        for n, name in functions:
            print(f"  {n:5d}  {name}")
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
