"""The shape of the code (DESIGN.md §5): wings without cycles or arrows back up, entries registered where
they are defined, methods that own their metrics."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "raybal"

# The wings, bottom to top (DESIGN.md §5.9). A module may import its own wing or a lower one, never a
# higher one; with no cycle anywhere. Every module of the package lies in a wing (a new wing is placed
# on purpose). Within a wing the order is free, and the cycle check holds it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("raybal._version", "raybal._atomic")),       # the version string; atomic file writes
    ("config", ("raybal.config",)),                         # the typed tree, the registry class, tasks
    ("inputs", ("raybal.data", "raybal.models", "raybal.noise")),  # the registries of inputs
    ("measure", ("raybal.measure",)),                       # metrics, utilization, robustness sweeps
    ("results", ("raybal.results",)),                       # the record schema, Parquet tables, tracking
    ("balancing", ("raybal.balancing",)),                   # one strategy per method over the loop's hooks
    ("resolve", ("raybal.resolve",)),                       # a run file checked against the registries
    ("training", ("raybal.training",)),                     # fit in phases, checkpoints, Ray Train, runner
    ("study", ("raybal.study",)),                           # Ray Tune + Optuna
    ("analysis", ("raybal.analysis",)),                     # best, intervals, figures, report
    ("cli", ("raybal.cli", "raybal")),                      # the command line and the Python API
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
            # The package itself ("raybal") names its __init__ only, never every module below it.
            if mod == p or ("." in p and mod.startswith(p + ".")):
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
    (pkg / "training").mkdir()
    (pkg / "training" / "__init__.py").write_text("")
    (pkg / "config.py").write_text("from raybal.training.loop import fit\n")  # the bottom wing reaching up
    (pkg / "training" / "loop.py").write_text("import raybal.data.base\n")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "base.py").write_text("def f():\n    from raybal.training import loop\n")  # closes a cycle
    (pkg / "stray.py").write_text("")  # in no wing
    g = import_graph(pkg)
    assert g["raybal.config"] == {"raybal.training.loop"} and g["raybal.data.base"] == {"raybal.training.loop"}
    assert find_cycles(g) == [["raybal.data.base", "raybal.training.loop"]]
    arrows = up_arrows(g, LAYERS)
    assert "raybal.config (config) imports raybal.training.loop (training)" in arrows
    assert "raybal.data.base (inputs) imports raybal.training.loop (training)" in arrows
    assert [m for m in g if layer_of(m, LAYERS) is None] == ["raybal.stray"]


def test_config_is_a_leaf() -> None:
    graph = import_graph(ROOT)
    below = {m: deps for m, deps in graph.items() if m == "raybal.config" or m.startswith("raybal.config.")}
    assert all(d.startswith("raybal.config") for deps in below.values() for d in deps), below


def _registered_method_names() -> list[str]:
    from raybal.balancing import METHODS

    return METHODS.names()


GENERIC = ["training/loop.py", "training/steps.py", "study/driver.py", "study/space.py", "study/objectives.py",
           "study/recorder.py", "analysis/best.py", "analysis/plots.py", "analysis/report.py"]


@pytest.mark.parametrize("module", GENERIC)
def test_generic_modules_name_no_method(module: str) -> None:
    """Methods own their metrics and objectives (DESIGN.md §5.10): the loop, the study and the
    reports work for any registered method and so name none."""
    tree = ast.parse((ROOT / module).read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    code = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docs]  # strings in code (docstrings may show examples)
    code += [n.id for n in ast.walk(tree) if isinstance(n, ast.Name)]
    code += [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)]
    for name in _registered_method_names():
        hits = [c for c in code if re.search(rf"\b{re.escape(name)}\b", c)]
        assert not hits, f"{module} names the method {name!r}: {hits[:3]}"


def test_registries_check_their_protocols() -> None:
    from dataclasses import dataclass

    from raybal.balancing import METHODS
    from raybal.config.registry import RegistrationError
    from raybal.data import DATASETS
    from raybal.models import MODELS
    from raybal.noise import CORRUPTIONS

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


def test_the_public_api_resolves_every_name_it_lists() -> None:
    """``raybal.X`` is imported on first use; ``__all__`` and the TYPE_CHECKING block name the same things."""
    import raybal

    assert set(raybal.__all__) == {"__version__", *raybal._LAZY}
    for name in raybal.__all__:
        assert getattr(raybal, name) is not None, name
    checked = {a.asname or a.name for n in ast.walk(ast.parse((ROOT / "__init__.py").read_text()))
               if isinstance(n, ast.If) for s in n.body if isinstance(s, ast.ImportFrom) for a in s.names}
    assert checked == set(raybal._LAZY)


if __name__ == "__main__":  # the import picture of any tree: python tests/test_architecture.py [path/to/raybal]
    import sys

    root = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT
    graph = import_graph(root)
    cycles = find_cycles(graph)
    arrows = up_arrows(graph, LAYERS)
    print(f"{root}: {len(graph)} modules, {sum(map(len, graph.values()))} import edges")
    print(f"cycles: {len(cycles)}" + "".join(f"\n  {len(c)} modules: {', '.join(c)}" for c in cycles))
    print(f"back-arrows against LAYERS: {len(arrows)}" + "".join(f"\n  {a}" for a in arrows))
