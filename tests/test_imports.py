"""The package's layout and import rules (docs/architecture.md, "Packages").

``alphastomics/`` keeps its contracts at the top (config, plan, variants, artifacts, layout, seeds, lifecycle,
provenance) and the CLI (``__main__``); everything else lives in one stage package. A contract imports no
stage package; a stage package imports the contracts and only the packages its row of ``MAY_IMPORT`` names;
``analysis`` never imports torch. A stage (a module the CLI runs) imports no other stage: stages hand each
other files whose formats live in ``alphastomics.artifacts``. Imports inside functions count as much as those
at the top of a file.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "alphastomics"
PACKAGES = ("data", "model", "training", "evaluation", "analysis")
# package -> what it may import besides the contracts (a dotted module is that module alone)
MAY_IMPORT = {
    "data": {"data"},
    "model": {"data", "model"},
    "training": {"data", "model", "training"},
    "evaluation": {"data", "model", "evaluation"},
    "analysis": {"analysis", "evaluation.metrics"},  # pure metrics (numpy) sit below the analysis
}
CLI = {"__main__", "main"}


def modules() -> dict[str, Path]:
    """dotted name below ``alphastomics`` ("config", "data.raw") -> file; ``__init__`` files left out."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        if rel.name != "__init__":
            found[".".join(rel.parts)] = path
    return found


def _imports(path: Path, known: set[str]) -> set[str]:
    deps: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "alphastomics":
            base = node.module.removeprefix("alphastomics").lstrip(".")
            for alias in node.names:  # "from alphastomics.data import raw" imports the module data.raw
                sub = f"{base}.{alias.name}".lstrip(".")
                if sub in known:
                    deps.add(sub)
                elif base in known:
                    deps.add(base)
        elif isinstance(node, ast.Import):
            deps |= {a.name.removeprefix("alphastomics.") for a in node.names if a.name.removeprefix("alphastomics.") in known}
    return deps


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (dotted names below ``alphastomics``)."""
    mods = modules()
    return {name: _imports(path, set(mods)) - {name} for name, path in mods.items()}


def package_of(module: str) -> str | None:
    """The stage package of a module, None for a contract or the CLI."""
    head = module.split(".")[0]
    return head if head in PACKAGES else None


def allowed(importer: str, imported: str) -> bool:
    pkg, target = package_of(importer), package_of(imported)
    if target is None:
        return True  # contracts (and nothing imports the CLI but main)
    if pkg is None:
        return importer in CLI
    return target in MAY_IMPORT[pkg] or imported in MAY_IMPORT[pkg]


def stages() -> set[str]:
    """The modules the CLI runs (``alphastomics.__main__.STAGES``, declared as data)."""
    from alphastomics.__main__ import STAGES

    return {s.module.removeprefix("alphastomics.") for s in STAGES.values()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, each as the path that closes it (depth-first search)."""
    found, state = [], dict.fromkeys(graph, 0)  # 0 new, 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                found.append(stack[stack.index(dep):] + [dep])
            elif state.get(dep) == 0:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in graph:
        if state[node] == 0:
            visit(node, [node])
    return found


def test_the_graph_sees_imports_inside_functions_and_of_submodules():
    graph = import_graph()
    assert {"model.denoiser", "artifacts"} <= graph["model.sample"]
    assert "evaluation.diagnostics" in graph["evaluation.evaluate"]  # inside evaluate(), when a model is probed
    assert "evaluation.metrics" in graph["evaluation.diagnostics"]  # "from alphastomics.evaluation import metrics"


def test_every_stage_the_cli_declares_is_a_module_with_a_main():
    run = stages()
    assert {"data.fetch", "training.train", "analysis.decide", "analysis.report"} <= run <= set(modules())
    for name in run:
        tree = ast.parse(modules()[name].read_text())
        assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body), name
    assert not {m for m in import_graph()["__main__"] if package_of(m)}  # imported when the stage runs only


def test_cycle_finder_finds_a_planted_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_rules_catch_planted_crossings():
    assert not allowed("config", "data.raw")  # a contract importing a stage package
    assert not allowed("analysis.report", "model.denoiser")  # analysis reaching torch code
    assert not allowed("training.train", "evaluation.diagnostics")  # a package outside its row
    assert allowed("analysis.report_figures", "evaluation.metrics") and allowed("model.sample", "data.batches")


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_every_module_is_a_contract_or_in_a_stage_package():
    assert {m.split(".")[0] for m in modules() if "." in m} == set(PACKAGES)
    for pkg in PACKAGES:
        assert (PACKAGE / pkg / "__init__.py").is_file(), pkg


def test_every_import_keeps_to_the_layers():
    graph = import_graph()
    crossing = {m: sorted(d for d in deps if not allowed(m, d)) for m, deps in graph.items()}
    assert {m: d for m, d in crossing.items() if d} == {}


def test_no_stage_imports_another_stage():
    graph, run = import_graph(), stages()
    assert {s: sorted(graph[s] & run) for s in run if graph[s] & run} == {}


def test_the_analysis_never_imports_torch():
    # by its source ...
    for name, path in modules().items():
        if package_of(name) == "analysis" or name == "evaluation.metrics":
            tree = ast.parse(path.read_text())
            names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
            names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
            assert not [n for n in names if n.split(".")[0] == "torch"], name
    # ... and by what importing every analysis module really loads
    analysis = sorted(f"alphastomics.{m}" for m in modules() if package_of(m) == "analysis")
    code = f"import sys; import {', '.join(analysis)}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_architecture_doc_names_every_package():
    text = (ROOT / "docs" / "architecture.md").read_text()
    assert all(f"alphastomics/{pkg}/" in text for pkg in PACKAGES)


def test_a_module_over_450_lines_says_why_in_its_docstring():
    long = {}
    for name, path in modules().items():
        lines = path.read_text().count("\n")
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > 450 and "Long because" not in doc:
            long[name] = lines
    assert long == {}
