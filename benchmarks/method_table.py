"""Markdown table of a campaign's variants per data set and primary metric (the means over seeds that the
learning gate in verdict.json holds) beside the best peer, the expression ceiling and random placement: the
learning gate's numbers behind docs/results.md's line for each real tissue (the page gives the outcome).

    python benchmarks/method_table.py results/tissues/verdict.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def table(verdict: dict) -> str:
    lines = []
    for ds in verdict["datasets"]:
        metrics = [e for e in ds["learning_gate"]["metrics"] if e.get("random") is not None]
        if not metrics:
            continue
        lines += [f"**{ds['dataset']}**", "", "| | " + " | ".join(e["metric"] for e in metrics) + " |",
                  "|---|" + "---|" * len(metrics)]
        names = [r["variant"] for r in metrics[0]["variants"]]
        for name in names:
            cells = [next(f"{r['mean']:.4f}" for r in e["variants"] if r["variant"] == name) for e in metrics]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if metrics[0].get("best_peer"):
            lines.append("| best peer | " + " | ".join(
                f"{e['best_peer']['value']:.4f} ({e['best_peer']['peer']})" for e in metrics) + " |")
        if metrics[0].get("ceiling"):
            lines.append("| expression ceiling | " + " | ".join(f"{e['ceiling']['value']:.4f}" for e in metrics) + " |")
        lines.append("| random placement | " + " | ".join(f"{e['random']:.4f}" for e in metrics) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("verdict", type=Path)
    print(table(json.loads(p.parse_args().verdict.read_text())))


if __name__ == "__main__":
    main()
