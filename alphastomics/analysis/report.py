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

from alphastomics.analysis import claims
from alphastomics.analysis import verdict as V
from alphastomics.analysis.markdown import markdown_document, markdown_summary
from alphastomics.analysis.report_provenance import NOT_MEASURED, _manifests, provenance
from alphastomics.analysis.runs import DatasetView, Run, _read_json, group_runs, load_run
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
from alphastomics.variants import VARIANTS


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


def read_stability(path: Path | None) -> dict[str, Any] | None:
    """The learning-rate sweep's stability.json (``make stability``), or None when not given or not written
    yet (its claims rows then say how to measure them)."""
    if path is None or not Path(path).is_file():
        return None
    data = _read_json(Path(path))
    if not isinstance(data, dict) or "claims" not in data:
        raise ReportError(f"{path}: field 'claims' missing; rerun make stability to rewrite it")
    return data


def sweep_figure(stability: Path | None) -> str | None:
    """The sweep's loss curves per learning rate (stability.png beside stability.json), as a data URI."""
    png = Path(stability).with_name("stability.png") if stability else None
    if png is None or not png.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def note_parameters() -> list[dict[str, Any]]:
    """Attention parameters per layer of every variant at the design note's size (the package's default
    model: d_model 256, 8 heads), which the parameter claims are about, against linear."""
    from alphastomics.config import ModelConfig

    m = ModelConfig()
    counts = {name: v.attention_parameters(m.d_model, m.num_heads) for name, v in VARIANTS.items()}
    return [{"variant": name, "attention_per_layer": n, "attention_per_layer_vs_linear": n / counts["linear"] - 1}
            for name, n in counts.items()]


def build_report(
    run_dirs: list[Path],
    out: Path,
    *,
    baseline: str = V.BASELINE,
    family: V.Family | None = None,
    verdict_out: Path | None = None,
    config_snapshot: Path | None = None,
    cfg: Any = None,
    compare_with: list[Path] | None = None,
    stability: Path | None = None,
) -> Path:
    """Read every run folder, write the verdict (``verdict_out``, default next to ``out``) and then the
    HTML page rendered from it; both atomically, the page only after the verdict. ``compare_with``: other
    campaigns' verdict files, whose data sets join the comparison across tissues (a missing one is a row
    saying so; this campaign's own verdict file is skipped)."""
    if not run_dirs:
        raise ReportError(
            "report: no run folders given; pass --runs results/{dataset}/{variant}/seed{seed} ..."
        )
    runs = [load_run(Path(p)) for p in run_dirs]
    verdict_out = Path(verdict_out) if verdict_out else Path(out).with_name("verdict.json")
    others = V.read_others([p for p in compare_with or [] if Path(p).resolve() != verdict_out.resolve()])
    verdict = V.build(runs, family, baseline=baseline, manifests=_manifests(runs), others=others)
    verdict["claims"] = V._clean(claims.table(verdict["datasets"], runs, verdict["family"],
                                              read_stability(stability), note_parameters(), baseline))
    html = _render(verdict, runs, provenance(runs, cfg, config_snapshot), sweep_figure(stability))
    V.write(verdict, verdict_out)
    atomic_write_text(out, html)
    return Path(out)


def main(args: argparse.Namespace, cfg: Any) -> int:
    """``report --runs ... --out PAGE`` builds the verdict and the page; ``--markdown RESULTS`` prints the
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
    if not args.runs or args.out is None:
        raise ReportError("report: pass --runs RUN ... and --out PAGE.html (or --markdown / --screenshot)")
    family = V.Family.parse(getattr(args, "contrasts", None), getattr(args, "primary_metrics", None))
    out = build_report(
        args.runs,
        args.out,
        baseline=getattr(args, "baseline", V.BASELINE),
        family=family,
        verdict_out=getattr(args, "verdict", None),
        config_snapshot=getattr(args, "config_snapshot", None),
        cfg=cfg,
        compare_with=getattr(args, "with_verdict", None),
        stability=getattr(args, "stability", None),
    )
    print(f"report: wrote {out}")
    return 0

