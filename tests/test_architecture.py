"""The shape of the code (DESIGN.md §5): layers without cycles, entries registered where they are
defined, methods that own their metrics, modules of a readable size."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "raybal"

# Bottom to top. A module may import its own layer or a lower one, never a higher one; with no
# cycle anywhere. Every module of the package must be placed here (a new module is placed on purpose).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("leaf", ("raybal._version", "raybal.config", "raybal.registry", "raybal.tasks", "raybal.fileio",
              "raybal.progress", "raybal.constraint", "raybal.selection", "raybal.metrics")),
    ("inputs", ("raybal.data", "raybal.models", "raybal.noise", "raybal.faults")),
    ("measures", ("raybal.utilization",)),
    ("records", ("raybal.records",)),
    ("evaluation", ("raybal.robustness",)),
    ("methods", ("raybal.balancing",)),
    ("resolve", ("raybal.resolve",)),
    ("checkpoint", ("raybal.checkpoint",)),
    ("train", ("raybal.steps", "raybal.train")),
    ("results", ("raybal.results", "raybal.tracking")),
    ("runs", ("raybal.runner", "raybal.distributed", "raybal.distributions", "raybal.objectives", "raybal.space",
              "raybal.recorder", "raybal.searcher", "raybal.study")),
    ("analysis", ("raybal.intervals", "raybal.best", "raybal.plots", "raybal.report")),
    ("cli", ("raybal.cli", "raybal")),
]


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the package modules it imports (every import statement, nested and TYPE_CHECKING too)."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    pkg = root.name
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for t in targets:
                if t == pkg or t.startswith(pkg + "."):
                    while t not in files and "." in t:
                        t = t.rsplit(".", 1)[0]
                    if t != mod:
                        graph[mod].add(t)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer_of(mod: str, layers: list[tuple[str, tuple[str, ...]]]) -> int | None:
    best: tuple[int, int] | None = None
    for i, (_, prefixes) in enumerate(layers):
        for p in prefixes:
            if mod == p or mod.startswith(p + "."):
                if best is None or len(p) > best[1]:
                    best = (i, len(p))
    return None if best is None else best[0]


def up_arrows(graph: dict[str, set[str]], layers: list[tuple[str, tuple[str, ...]]]) -> list[str]:
    bad = []
    for mod, deps in sorted(graph.items()):
        lm = layer_of(mod, layers)
        for d in sorted(deps):
            ld = layer_of(d, layers)
            if lm is not None and ld is not None and ld > lm:
                bad.append(f"{mod} ({layers[lm][0]}) imports {d} ({layers[ld][0]})")
    return bad


def test_every_module_has_a_layer() -> None:
    missing = [m for m in import_graph(ROOT) if layer_of(m, LAYERS) is None]
    assert not missing, f"place these modules in LAYERS: {missing}"


def test_no_import_cycle() -> None:
    assert find_cycles(import_graph(ROOT)) == []


def test_no_import_goes_up_the_layers() -> None:
    assert up_arrows(import_graph(ROOT), LAYERS) == []


def test_the_checker_finds_a_planted_cycle_and_a_back_arrow(tmp_path: Path) -> None:
    pkg = tmp_path / "raybal"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("from raybal.train import fit\n")  # a leaf reaching up
    (pkg / "train.py").write_text("import raybal.data.base\n")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "base.py").write_text("def f():\n    from raybal import train\n")  # closes a cycle
    g = import_graph(pkg)
    assert g["raybal.config"] == {"raybal.train"} and g["raybal.data.base"] == {"raybal.train"}
    assert find_cycles(g) == [["raybal.data.base", "raybal.train"]]
    arrows = up_arrows(g, LAYERS)
    assert "raybal.config (leaf) imports raybal.train (train)" in arrows
    assert "raybal.data.base (inputs) imports raybal.train (train)" in arrows


def test_config_is_a_leaf() -> None:
    assert import_graph(ROOT)["raybal.config"] == set()


def _registered_method_names() -> list[str]:
    from raybal.balancing import METHODS

    return METHODS.names()


@pytest.mark.parametrize("module", ["train", "study", "space", "objectives", "best", "plots", "recorder", "report"])
def test_generic_modules_name_no_method(module: str) -> None:
    """Methods own their metrics and objectives (DESIGN.md §5.10): the loop, the study and the
    reports work for any registered method and so name none."""
    tree = ast.parse((ROOT / f"{module}.py").read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    code = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docs]  # strings in code (docstrings may show examples)
    code += [n.id for n in ast.walk(tree) if isinstance(n, ast.Name)]
    code += [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)]
    for name in _registered_method_names():
        hits = [c for c in code if re.search(rf"\b{re.escape(name)}\b", c)]
        assert not hits, f"{module}.py names the method {name!r}: {hits[:3]}"


def test_no_module_over_400_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_registries_check_their_protocols() -> None:
    from dataclasses import dataclass

    from raybal.balancing import METHODS
    from raybal.data import DATASETS
    from raybal.models import MODELS
    from raybal.noise import CORRUPTIONS
    from raybal.registry import RegistrationError

    @dataclass(frozen=True)
    class NoModalities:
        task: str = "classification"

        def cacheable(self) -> bool:
            return True

    with pytest.raises(RegistrationError, match="must provide `modality_names`"):
        DATASETS.register("_bad", NoModalities)(lambda p: None)
    with pytest.raises(RegistrationError, match="must subclass BalanceMethod"):
        METHODS.register("_bad")(object)
    with pytest.raises(RegistrationError, match="must subclass FusionModel"):
        MODELS.register("_bad")(object)
    with pytest.raises(RegistrationError, match=r"must take \(x, level, generator\)"):
        CORRUPTIONS.register("_bad")(lambda x, level: x)
    with pytest.raises(ValueError, match="registered twice"):
        METHODS.register("vanilla")(METHODS.get("vanilla").obj)
    for reg in (DATASETS, METHODS, MODELS, CORRUPTIONS):
        assert "_bad" not in reg


if __name__ == "__main__":  # the import picture of any tree: python tests/test_architecture.py [path/to/raybal]
    import sys

    root = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT
    graph = import_graph(root)
    cycles = find_cycles(graph)
    arrows = up_arrows(graph, LAYERS)
    print(f"{root}: {len(graph)} modules, {sum(map(len, graph.values()))} import edges")
    print(f"cycles: {len(cycles)}" + "".join(f"\n  {len(c)} modules: {', '.join(c)}" for c in cycles))
    print(f"back-arrows against LAYERS: {len(arrows)}" + "".join(f"\n  {a}" for a in arrows))
