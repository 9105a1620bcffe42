"""Layers point down: the library never imports the CLI, and no import circle crosses layers.

The import graph is read from the source (every ``import`` / ``from ... import``, also those inside functions),
so a lazy import that would hide a circle at import time still counts."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "compactvlm"


def _modules() -> dict[str, Path]:
    mods = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def _graph(top_level_only: bool = False) -> dict[str, set[str]]:
    mods = _modules()

    def targets(mod: str, node) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        pkg = mod.split(".") if mods[mod].name == "__init__.py" else mod.split(".")[:-1]
        if node.level:
            pkg = pkg[: len(pkg) - (node.level - 1)]
            base = ".".join(pkg + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]

    g = {}
    for mod, f in mods.items():
        tree = ast.parse(f.read_text(encoding="utf-8"))
        nodes = tree.body if top_level_only else list(ast.walk(tree))
        out = set()
        for n in nodes:
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                out.update(t for t in targets(mod, n) if t in mods and t != mod)
        g[mod] = out
    return g


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return found


def _layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_library_never_imports_the_cli():
    bad = sorted((m, t) for m, ts in _graph().items() for t in ts
                 if _layer(t) in ("commands", "cli") and _layer(m) not in ("commands", "cli"))
    assert not bad, f"library modules import the command layer: {bad}"


def test_no_import_circle():
    assert not _cycles(_graph(top_level_only=True)), "module-level import circle"
    crossing = [c for c in _cycles(_graph()) if len({_layer(m) for m in c}) > 1]
    assert not crossing, f"import circles across layers (lazy imports included): {crossing}"


def test_the_checker_finds_a_circle():
    g = {"compactvlm.model.vlm": {"compactvlm.interop"}, "compactvlm.interop": {"compactvlm.model.vlm"},
         "compactvlm.data": set()}
    assert _cycles(g) == [["compactvlm.interop", "compactvlm.model.vlm"]]
