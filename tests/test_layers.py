"""The layers of dg_core, enforced: no import cycle (module-level or inside a function), no import from a higher
layer, and dg_core's own imports at module level (so the graph below is the whole truth).

    0 foundation  errors, utils, progress
    1 store       dg_core.store (URI grammar, transport, artifact protocol, cache)
    2 config      config (stage Configs: fields, help, bounds; a field may name a store location), knob (eta's rule)
    3 base        dg_core.base (divergences, alignment, advantages, generation, log-probs)
    4 resources   dg_core.models, dg_core.data, metrics, checkpoint
    5 stages      evaluate, traps (diagnosis), distill, calibrate, gate, publish, report, importer
    6 registry    dg_core.stages (the stage table), dg_core.launch (running a stage in N processes / a TrainJob)
    7 entry       dg_core.runner (run_stage), dg_core.cli

Stages (layer 5) may import each other, but never in a cycle. docs/ARCHITECTURE.md draws the same map.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS: list[tuple[str, ...]] = [
    ("dg_core", "dg_core.errors", "dg_core.utils", "dg_core.progress"),
    ("dg_core.store",),
    ("dg_core.config", "dg_core.knob"),
    ("dg_core.base",),
    ("dg_core.models", "dg_core.data", "dg_core.metrics", "dg_core.checkpoint"),
    (
        "dg_core.evaluate",
        "dg_core.traps",
        "dg_core.distill",
        "dg_core.calibrate",
        "dg_core.gate",
        "dg_core.publish",
        "dg_core.report",
        "dg_core.importer",
        "dg_core.recipes",
    ),  # fmt: skip
    ("dg_core.stages", "dg_core.launch"),
    ("dg_core.runner", "dg_core.cli"),
]
#: Function-level imports of dg_core modules that must stay where they are, and why.
INNER_OK = {
    # shipped as source into a TrainJob's command: the function must carry its own imports
    ("dg_core.launch.trainjob", "dg_core.launch.worker"),
}


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted((ROOT / "dg_core").rglob("*.py")):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def layer_of(module: str) -> int:
    best = (-1, -1)
    for i, names in enumerate(LAYERS):
        for n in names:
            if (module == n or module.startswith(n + ".")) and len(n) > best[1]:
                best = (i, len(n))
    assert best[0] >= 0, f"{module}: in no layer of tests/test_layers.py"
    return best[0]


def imports(mods: dict[str, Path]) -> list[tuple[str, str, int, bool]]:
    """(importer, imported dg_core module, line, inside a function) for every import statement."""

    def resolve(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    out = []
    for m, p in mods.items():
        tree = ast.parse(p.read_text())
        inner = {
            id(n)
            for f in ast.walk(tree)
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f)
            if isinstance(n, (ast.Import, ast.ImportFrom))
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                if t.startswith("dg_core") and (r := resolve(t)) and r != m and not m.startswith(r + "."):
                    out.append((m, r, node.lineno, id(node) in inner))
    return out


def test_no_import_cycles():
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for a, b, _, _ in imports(mods):
        graph[a].add(b)
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(v: str) -> None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(w) :] + [w]))
            if w not in state:
                visit(w)
        path.pop()
        state[v] = 2

    for m in sorted(mods):
        if m not in state:
            visit(m)


def test_no_upward_imports():
    bad = [
        f"{a}:{line} imports {b} (layer {layer_of(b)} above {layer_of(a)})"
        for a, b, line, _ in imports(modules())
        if layer_of(b) > layer_of(a)
    ]
    assert not bad, "\n".join(bad)


def test_dg_core_imports_itself_at_module_level():
    bad = [f"{a}:{line} imports {b} inside a function" for a, b, line, inner in imports(modules())
           if inner and (a, b) not in INNER_OK]  # fmt: skip
    assert not bad, f"{len(bad)} function-level imports:\n" + "\n".join(bad)


def test_the_checks_bite(tmp_path, monkeypatch):
    """A planted cycle and a planted upward import are caught (the checks are not vacuous)."""
    fake = tmp_path / "dg_core"
    (fake / "store").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "errors.py").write_text("from dg_core.store import x\n")
    (fake / "store" / "__init__.py").write_text("from dg_core.errors import y\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    import pytest

    with pytest.raises(AssertionError, match="import cycle"):
        test_no_import_cycles()
    with pytest.raises(AssertionError, match="dg_core.errors:1 imports dg_core.store"):
        test_no_upward_imports()
