"""The package's import graph: no circle, and no stage imports another stage (docs/architecture.md).

A stage is a module the CLI runs (``python -m alphastomics <stage>``); stages hand each other files whose
formats live in ``alphastomics.artifacts``, so a stage imports contracts and libraries only. Imports inside
functions count as much as those at the top of a file.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "alphastomics"
# Every module the CLI runs: fetch-data, preprocess, train, sample, evaluate, report, baseline,
# learning-curve, params, variance, reassemble, stability.
STAGES = {"fetch", "preprocess", "train", "sample", "evaluate", "report", "peers", "study", "params",
          "variance", "reassemble", "stability"}


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (``alphastomics.x`` -> ``x``)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        name = path.stem
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "alphastomics":
                    deps |= {a.name for a in node.names if (PACKAGE / f"{a.name}.py").is_file()}
                elif node.module.startswith("alphastomics."):
                    deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("alphastomics.")}
        graph[name] = deps - {name}
    return graph


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


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "model" in graph["sample"] and "artifacts" in graph["train"]
    assert STAGES <= graph["__main__"]  # the CLI imports each stage plainly, inside its own function
    assert "diagnostics" in graph["evaluate"]  # imported inside evaluate(), only when a model is probed


def test_cycle_finder_finds_a_planted_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_no_stage_imports_another_stage():
    graph = import_graph()
    crossing = {stage: sorted(graph[stage] & STAGES) for stage in STAGES if graph[stage] & STAGES}
    assert crossing == {}


def test_every_module_the_cli_runs_counts_as_a_stage():
    """The CLI imports the config, the process set-up (lifecycle.keep_freed_memory) and the stages, nothing
    else: a new stage cannot be missed above."""
    assert import_graph()["__main__"] - {"config", "lifecycle"} == STAGES
