"""The comparison report: one self-contained HTML page that answers "does gating help, and at what cost?".

The page renders ``results/verdict.json`` (``alphastomics.analysis.verdict``: the declared contrasts tested over
seeds, Holm-adjusted, with intervals) and adds what the verdict does not decide: descriptive tables, cost,
figures and provenance, read from the run folders (``alphastomics.analysis.runs``). Its first screen is the answer:
each data set's learning gate in one line, then one compact table per declared contrast with every data set
(this campaign's and, with ``--with-verdict``, other campaigns') and the estimate pooled over the real
tissues (verdict.json ``across_tissues``). Then per data set the learning gate and the run warnings
(``alphastomics.analysis.checks``), a forest plot of the declared contrasts on the primary metrics and a table of
decisions; the sentence per test follows, collapsed.
A data set that failed the gate says so first and shows its contrasts as "not interpreted", without a forest
plot. Gated attention is that of Qiu et al. 2025 (arXiv 2505.06708), the
baseline the linear attention of LUNA (Yu et al. 2025). Inline CSS and PNG figures as data URIs: the page
opens without network. The page's cells and tables are ``alphastomics.analysis.tables`` (shared with the
Markdown of ``alphastomics.analysis.markdown``), its figures ``report_figures``; ``report --screenshot`` is
``alphastomics.analysis.screenshot``.
"""

from __future__ import annotations

import argparse
import base64
from pathlib import Path
from typing import Any

from alphastomics.analysis import verdict as V
from alphastomics.analysis.markdown import markdown_document, markdown_summary
from alphastomics.analysis.report_provenance import NOT_MEASURED, provenance
from alphastomics.analysis.runs import DatasetView, Run, group_runs, load_run
from alphastomics.analysis.screenshot import _screenshot_png
from alphastomics.analysis.tables import (
    BDTNP_REFERENCE,
    LABELS,
    SINK_THRESHOLD,
    ReportError,
    across_notes,
    across_tables,
    claim_cells,
    cost_table,
    decisions_table,
    fmt,
    fmt_pct,
    gate_table,
    metrics_table,
    not_computed_lines,
    plan_rows,
    sentence,
)
from alphastomics.artifacts import atomic_write_text


def _render(verdict: dict[str, Any], runs: list[Run], prov: dict[str, Any], sweep_png: str | None = None) -> str:
    import jinja2

    from alphastomics.analysis.report_figures import (
        fig_attention,
        fig_forest,
        fig_gates,
        fig_loss,
        fig_positions,
        fig_sinks,
    )

    primary = list(verdict["family"]["primary_metrics"])
    views = {v.name: v for v in group_runs(runs, verdict["baseline"])}
    pages = []
    for ds in verdict["datasets"]:
        view = views.get(ds["dataset"]) or DatasetView(ds["dataset"], verdict["baseline"], {}, {})
        names = view.metric_names()
        shown = next((m for m in primary if m in names), names[0] if names else "knn_preservation")
        cols, rows = metrics_table(ds, {**view.variants, **view.peers})
        dcols, drows = decisions_table(ds, primary)
        gcols, grows = gate_table(ds)
        pos_png, pos_caption = fig_positions(view, shown)
        gate = ds.get("learning_gate") or {
            "outcome": "not assessed", "message": "no learning gate in verdict.json", "metrics": [],
            "min_skill": None,
        }
        gate = gate | {"unchecked": [e["metric"] for e in gate["metrics"] if e.get("random") is None]}
        pages.append(dict(
            name=ds["dataset"],
            baseline=verdict["baseline"],
            seeds=ds["seeds"],
            gate=gate,
            gate_cols=gcols,
            gate_rows=grows,
            warnings=[w["message"] for w in ds.get("warnings", [])],
            data_notes=prov.get("data_notes", {}).get(ds["dataset"], []),
            not_computed=not_computed_lines(ds, prov.get("data_notes", {}).get(ds["dataset"], [])),
            forest=fig_forest(ds, primary) if gate["outcome"] != "not learned" else None,
            decision_cols=dcols,
            decision_rows=drows,
            plan=plan_rows(ds),
            sentences=[sentence(r) for r in ds["records"]],
            secondary=[sentence(r) for r in ds["secondary"]],
            peers=ds["peers"],
            peer_sentences=[sentence(r) for r in ds["peers"]],
            skipped=ds["skipped"],
            metric_cols=cols,
            metric_rows=rows,
            cost=cost_table(view),
            bdtnp=BDTNP_REFERENCE if ds["dataset"] == "bdtnp" else None,
            figures=[
                (
                    "Training and validation loss per variant: mean over seeds, band = min..max over seeds "
                    "(moving average over 1/40 of the logged points)",
                    fig_loss(view),
                ),
                (f"Predicted vs true coordinates after Procrustes alignment: {pos_caption}", pos_png),
                ("Gate score histograms per layer (healthy: mean about 0.5, std about 0.2)", fig_gates(view)),
                ("Attention-sink share per layer: attention mass received by the most-attended cell",
                 fig_sinks(view)),
                ("Attention map of the worst head (the one whose most-attended cell receives the largest "
                 "share) on one held-out section: gated vs the ungated softmax control, seed 0",
                 fig_attention(view, shown)),
            ],
        ))
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("alphastomics.analysis", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["capitalize_first"] = lambda text: text[:1].upper() + text[1:]
    return env.get_template("report.html.j2").render(
        code_warning=(verdict.get("code") or {}).get("message"),
        run_commits=(verdict.get("code") or {}).get("commits") or [],
        across=across_tables(verdict),
        claims=[claim_cells(r) for r in verdict.get("claims") or []],
        sweep_png=sweep_png,
        across_notes=across_notes(verdict),
        method=(verdict.get("across_tissues") or {}).get("method") or {},
        views=pages,
        family=verdict["family"],
        labels=LABELS,
        prov=prov,
        not_measured=NOT_MEASURED,
        sink_threshold=f"{SINK_THRESHOLD:.0%}",
        fmt_pct=fmt_pct,
        fmt=fmt,
    )


def sweep_figure(stability: Path | None) -> str | None:
    """The sweep's loss curves per learning rate (stability.png beside stability.json), as a data URI."""
    png = Path(stability).with_name("stability.png") if stability else None
    if png is None or not png.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def render_page(
    verdict_path: Path,
    run_dirs: list[Path],
    out: Path,
    *,
    config_snapshot: Path | None = None,
    cfg: Any = None,
    stability: Path | None = None,
) -> Path:
    """The report stage: the HTML page rendered from ``verdict_path`` (written by the verdict stage) and the
    run folders it was decided on (descriptive tables, figures, provenance); written atomically."""
    if not run_dirs:
        raise ReportError(
            "report: no run folders given; pass --runs results/{dataset}/{variant}/seed{seed} ..."
        )
    verdict = V.read(Path(verdict_path))
    runs = [load_run(Path(p)) for p in run_dirs]
    html = _render(verdict, runs, provenance(runs, cfg, config_snapshot), sweep_figure(stability))
    atomic_write_text(out, html)
    return Path(out)


def main(args: argparse.Namespace, cfg: Any) -> int:
    """``report --verdict VERDICT --runs ... --out PAGE`` renders the page; ``--markdown RESULTS`` prints the
    verdict as Markdown (with ``--out FILE``: writes it as a whole page, docs/results.md); ``--screenshot PAGE
    PNG`` renders a page to PNG."""
    if getattr(args, "markdown", None) is not None:
        if args.out is None:
            print(markdown_summary(args.markdown))
        else:
            atomic_write_text(args.out, markdown_document(args.markdown, args.out))
            print(f"report: wrote {args.out}")
        return 0
    if getattr(args, "screenshot", None):
        return _screenshot_png(Path(args.screenshot[0]), Path(args.screenshot[1]), args.width, args.height,
                               args.scale)
    if not args.runs or args.out is None or getattr(args, "verdict", None) is None:
        raise ReportError("report: pass --verdict VERDICT.json --runs RUN ... --out PAGE.html "
                          "(or --markdown / --screenshot); the verdict stage writes VERDICT.json")
    out = render_page(args.verdict, args.runs, args.out, config_snapshot=getattr(args, "config_snapshot", None),
                      cfg=cfg, stability=getattr(args, "stability", None))
    print(f"report: wrote {out}")
    return 0
