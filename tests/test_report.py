"""The comparison report built from fixture runs that follow docs/architecture.md: content, numbers in the
verdict, missing pieces, no external URLs, atomic writes, and a rendering check in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
from html import escape as html_escape
from html import unescape
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from report_helpers import build_report

from alphastomics.__main__ import main as cli
from alphastomics.analysis import markdown, report, screenshot, tables
from alphastomics.analysis.claims import ClaimsError
from alphastomics.analysis.runs import RunError, direction
from alphastomics.layout import parse_run_path

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
SECTIONS = ["s0", "s1", "s2", "s3"]
SEEDS = [0, 1, 2]


def _linear(metric: str, seed: int, i: int) -> float:
    base = {"distance_mse": 0.10, "knn_preservation": 0.50, "morans_i_corr": 0.90, "procrustes_rmsd": 2.0,
            "distance_spearman": 0.80, "procrustes_rmsd_scaled": 0.40}
    return base[metric] * (1 + 0.05 * i + 0.02 * seed)


# Per-section value of each variant as a function of the linear one: headwise is exactly 20 % better on
# distance MSE, 10 % better on kNN and 5 % worse on Moran's I in every (seed, section), and -1 %, 0, +1 % on
# distance Spearman over seeds 0, 1, 2 (noise); elementwise wobbles around linear (+-2 % alternating by
# section, so every seed's cell-weighted mean equals linear's).
FACTORS = {
    "linear": lambda m, s, i: 1.0,
    "gated_headwise": lambda m, s, i: {
        "distance_mse": 0.8,
        "knn_preservation": 1.1,
        "morans_i_corr": 0.95,
        "distance_spearman": 1 + 0.01 * (s - 1),
    }.get(m, 1.0),
    "gated_elementwise": lambda m, s, i: 1 + 0.02 * (-1) ** (i + s),
    "peer_knn": lambda m, s, i: {"distance_mse": 0.5, "knn_preservation": 1.2}.get(m, 1.0),
}


def _write_run(
    root: Path, dataset: str, variant: str, seed: int, *, train: bool = True, diagnostics: bool = True
):
    run = root / dataset / variant / f"seed{seed}"
    (run / "eval").mkdir(parents=True)
    metrics = ["distance_mse", "knn_preservation", "morans_i_corr", "procrustes_rmsd", "distance_spearman",
               "procrustes_rmsd_scaled"]
    per_section = [
        {
            "section": s,
            "n_cells": 40,
            **{m: _linear(m, seed, i) * FACTORS[variant](m, seed, i) for m in metrics},
        }
        for i, s in enumerate(SECTIONS)
    ]
    overall = {m: float(np.mean([r[m] for r in per_section])) for m in metrics}
    # Overall only (evaluate computes it once per run): no per-section pairs, so never "significant".
    overall["masked_reconstruction_mse"] = {"linear": 1.0, "gated_headwise": 0.7}.get(variant)
    diag = {"attention_sink": [], "gate": []}
    if diagnostics and variant in ("linear", "gated_headwise"):
        shares = [0.30, 0.45] if variant == "linear" else [0.02, 0.03]
        diag["attention_sink"] = [{"layer": i, "share": v, "share_per_head": [v, v / 2]}
                                  for i, v in enumerate(shares)]
        rng = np.random.default_rng(seed)  # attention_map.npz as docs/architecture.md specifies it
        np.savez(
            run / "eval" / "attention_map.npz",
            attn=rng.dirichlet(np.ones(40), 40).astype(np.float32),
            positions=rng.normal(size=(40, 3)),
            cell_id=np.array([f"s0_{j}" for j in range(40)]),
            section="s0",
            layer=0,
            head=0,
        )
    if diagnostics and variant == "gated_headwise":
        diag["gate"] = [
            {
                "layer": i,
                "mean": 0.5,
                "std": 0.2,
                "bins": list(np.linspace(0, 1, 11)),
                "counts": [1, 2, 5, 9, 20, 20, 9, 5, 2, 1],
            }
            for i in range(2)
        ]
    (run / "eval" / "metrics.json").write_text(
        json.dumps(
            {
                "method": variant,
                "mode": "expr_to_pos",
                "overall": overall,
                "random_reference": {"distance_mse": 1.9, "knn_preservation": 0.004, "procrustes_rmsd": 40.0},
                "per_section": per_section,
                "diagnostics": diag,
                "params": {},
                "cost": {"wall_time_s": 3.0} if variant.startswith("peer_") else {},
            }
        )
    )
    pd.DataFrame(per_section).to_csv(run / "eval" / "sections.csv", index=False)
    rng = np.random.default_rng(seed)
    rows = []
    for s in SECTIONS:
        true = rng.normal(size=(40, 3)) * [10, 4, 0]
        theta = 0.7
        rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
        pred = true @ rot.T + 5 + rng.normal(scale=0.5, size=true.shape) * [1, 1, 0]
        for j in range(40):
            rows.append(
                dict(
                    cell_id=f"{s}_{j}",
                    section=s,
                    cell_type=f"type{j % 3}",
                    x_true=true[j, 0],
                    y_true=true[j, 1],
                    z_true=0.0,
                    x_pred=pred[j, 0],
                    y_pred=pred[j, 1],
                    z_pred=0.0,
                )
            )
    pd.DataFrame(rows).to_parquet(run / "samples.parquet")
    if train and not variant.startswith("peer_"):
        (run / "train").mkdir()
        lines = [{"step": t, "loss": 2.0 / (1 + t) + 0.01 * seed, "lr": 1e-3} for t in range(0, 50, 5)]
        lines += [{"step": t, "val_loss": 2.2 / (1 + t) + 0.01 * seed} for t in range(0, 50, 10)]
        (run / "train" / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        (run / "train" / "train_summary.json").write_text(
            json.dumps(
                {
                    "params_total": 1_000_000 if variant == "linear" else 1_040_000,
                    "params_attention": 500_000,
                    "wall_time_s": 12.5,
                    "cells_per_s": 3000.0,
                    "peak_mem_mb": 256.0,
                    "device": "cpu",
                }
            )
        )
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("results")
    out = [
        _write_run(root, "toy", v, s)
        for v in ("linear", "gated_headwise", "gated_elementwise")
        for s in SEEDS
    ]
    out.append(_write_run(root, "toy", "peer_knn", 0))
    data = root / "data" / "toy" / "processed"
    data.mkdir(parents=True)
    (data / "manifest.json").write_text(
        json.dumps({"dataset": "toy", "source_checksums": {"raw.csv": "ab" * 32}})
    )
    return out


@pytest.fixture(scope="module")
def page(runs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("page") / "report.html"
    build_report(runs, out, baseline="linear")
    return out, out.read_text()


def _text(html: str) -> str:
    return unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)))


def test_every_variant_and_peer_present(page):
    text = _text(page[1])
    for name in ("linear", "gated_headwise", "gated_elementwise", "peer_knn", "random placement"):
        assert name in text
    for heading in (
        "1. Verdict",
        "2. The design note",
        "3. Metrics",
        "4. Cost",
        "5. Figures",
        "6. Provenance",
    ):
        assert heading in text


def _verdict(page) -> dict:
    return json.loads(page[0].with_name("verdict.json").read_text())


def test_first_screen_is_the_forest_plot_then_the_decisions(page):
    html = page[1]
    verdict_part = html[html.index('id="verdict"'):html.index('id="expectations"')]
    # forest plot (a figure), then the decisions table, then the prose collapsed
    f, t, d = (verdict_part.index(x) for x in ('alt="forest plot of toy"', 'class="decisions"', "<details>"))
    assert f < t < d
    rows = re.findall(r"<tr><td>([\w ]+ vs \w+)</td>(.*?)</tr>", verdict_part, re.S)
    cells = {name: re.findall(r"<b>([^<]+)</b>", body) for name, body in rows}
    cols = re.findall(r"<th>(\w+)</th>", verdict_part.split('class="decisions"')[1].split("</tr>")[0])
    assert cols == ["contrast", "knn_preservation", "distance_spearman", "procrustes_rmsd_scaled",
                    "masked_reconstruction_mse"]
    cols = cols[1:]
    # declared order; elementwise has no masked reconstruction (not measured)
    assert list(cells) == ["gated_headwise vs linear", "gated_elementwise vs linear"]
    head = dict(zip(cols, cells["gated_headwise vs linear"]))
    assert head["knn_preservation"] == "better"  # +10 % on every seed
    assert head["distance_spearman"].startswith("no difference detected (smallest detectable: ")
    assert head["procrustes_rmsd_scaled"].startswith("no difference detected")  # identical to linear
    # -30 % on every seed but the same amount each time: no spread, no t-test, no word
    assert head["masked_reconstruction_mse"].startswith(
        "no difference detected (smallest detectable: not estimable"
    )
    assert all(c.startswith("no difference detected") for c in cells["gated_elementwise vs linear"])
    # the page's numbers are verdict.json's
    rec = next(r for r in _verdict(page)["datasets"][0]["records"]
               if (r["variant"], r["metric"]) == ("gated_headwise", "knn_preservation"))
    ci = f"[{100 * rec['relative_ci_low']:+.1f}, {100 * rec['relative_ci_high']:+.1f} %]"
    assert f"+10.0 % {ci}" in verdict_part
    assert "Holm p " + html_escape(tables.fmt_p(rec["holm_p"])) in verdict_part


def test_prose_secondary_and_peers_in_details(page):
    text = _text(page[1])
    assert re.search(
        r"gated_headwise vs linear on neighbour preservation \(knn_preservation, higher is better\), "
        r"3 paired seeds: .*?Holm-adjusted p = \S+ \(family of 7\): better\.",
        text,
    )
    # Moran's I is secondary: numbers, never a word
    assert re.search(r"gated_headwise vs linear on spatial-pattern agreement \(Moran's I\) \(morans_i_corr, "
                     r"higher is better\), 3 paired seeds: [^.]*\.[^:]*p = \S+\.", text.replace("&#39;", "'"))
    v = _verdict(page)["datasets"][0]
    assert all(r["decision"] is None for r in v["secondary"])
    # the peer ran once on 4 sections: per-section differences, no test
    assert all(r["decision"] == "too few sections to test (4 < 5)" for r in v["peers"])
    assert all(r["p_value"] is None for r in v["peers"])
    assert re.search(
        r"gated_headwise vs knn on neighbour preservation .*?, 4 paired sections: .*?; differences per "
        r"section s0 \S+, s1 \S+, s2 \S+, s3 \S+: too few sections to test \(4 < 5\)\.",
        text,
    )
    assert "gated_headwise_no_qknorm vs linear: no runs of gated_headwise_no_qknorm" in text


def test_claims_marked(page):
    """Section 2: the claims table, one row per claim x data set x variant, from verdict.json 'claims'."""
    rows = _verdict(page)["claims"]
    marks = {(r["claim"], r["variant"]): r["mark"] for r in rows}
    assert marks[("position distance MSE", "gated_headwise")] == "met"  # -20 %, interval beyond -10..-15
    assert marks[("kNN preservation", "gated_headwise")] == "met"  # +10 %
    assert marks[("Moran's I agreement", "gated_headwise")] == "not met"  # -5 % on every seed
    assert marks[("masked reconstruction MSE", "gated_headwise")] == "met"  # -30 % on every seed
    assert marks[("position distance MSE", "gated_elementwise")] == "not met"  # exactly 0: rules out -10 %
    assert marks[("no attention sink", "gated_headwise")] == "met"  # worst head 3 % < 10 %
    assert ("no attention sink", "gated_elementwise") not in marks  # no diagnostics: no row of its own
    assert marks[("healthy gate range", "gated_headwise")] == "met"  # mean 0.5, std 0.2
    # what this campaign cannot measure says which target does
    absent = {r["claim"]: r["why"] for r in rows if r["mark"] == "not measured"}
    assert "make claims" in absent["expression MSE"]
    assert "make claims" in absent["joint-mode expression-position consistency"]
    assert "make stability" in absent["stable at larger learning rates"]
    assert "make stability" in absent["faster convergence"]
    assert "gate_over_t" in absent["the gate adjusts across diffusion time"]
    # the note's parameter claims, counted at its size: +0.8 % and +25 %, not +4 % and +50 %
    note = {r["variant"]: r for r in rows if r["claim"].startswith("parameter") and r["dataset"] is None}
    assert note["gated_headwise"]["mark"] == note["gated_elementwise"]["mark"] == "not met"
    assert note["gated_elementwise"]["measured"] == pytest.approx(0.25, abs=0.01)
    text = _text(page[1])
    assert "2. The design note's claims, checked" in text
    assert "worst head (layer 1, head 0) 3.0 %" in text


def test_tables_cost_and_provenance(page):
    text = _text(page[1])
    assert "1,040,000" in text and "12.5" in text  # params and wall time from train_summary.json
    assert "3" in text and "(peer)" in text  # the peer row carries its wall time from metrics.json cost
    assert "alphastomics 0.1.0" in text or "alphastomics" in text
    assert "abab" in text  # data checksum found through results/**/manifest.json
    assert "Snakemake" in text and "CPU:" in text


def test_figures_embedded_and_no_external_urls(page):
    html = page[1]
    imgs = re.findall(r'<img src="([^"]+)"', html)
    assert len(imgs) == 6 and all(src.startswith("data:image/png;base64,") for src in imgs)
    assert not re.search(r"https?://", html)
    links = re.findall(r"""\b(?:src|href|action|poster)\s*=\s*["']?([^"'\s>]*)""", html, re.I)
    assert links and all(x.startswith(("data:", "#")) for x in links)
    assert "url(" not in html and "@import" not in html


def test_missing_pieces_say_not_measured(tmp_path):
    a = _write_run(tmp_path, "toy", "linear", 0, diagnostics=False)
    b = _write_run(tmp_path, "toy", "gated_headwise", 0, train=False, diagnostics=False)
    c = tmp_path / "toy" / "softmax" / "seed0"  # trained, never evaluated
    (c / "train").mkdir(parents=True)
    out = build_report([a, b, c], tmp_path / "r.html")
    text = _text(out.read_text())
    assert "softmax" in text and "not measured" in text
    assert "Training and validation loss" in text


def test_bad_run_folder_errors_and_leaves_nothing(tmp_path):
    run = _write_run(tmp_path, "toy", "linear", 0)
    (run / "eval" / "metrics.json").write_text("{not json")
    out = tmp_path / "site" / "report.html"
    with pytest.raises(RunError, match=r"metrics\.json: not valid JSON"):
        build_report([run], out)
    assert not out.exists() and not list(out.parent.glob("*"))
    odd = tmp_path / "somewhere"
    (odd / "eval").mkdir(parents=True)
    (odd / "eval" / "metrics.json").write_text("{}")
    with pytest.raises(RunError, match="cannot tell dataset/variant/seed"):
        report.load_run(odd)


def test_runs_are_what_metrics_json_says_they_are(tmp_path):
    """A run is identified by metrics.json's dataset/variant/seed, wherever its folder is; without them
    (an older metrics.json) by the folder's place in the layout."""
    run = _write_run(tmp_path, "toy", "linear", 0)
    moved = tmp_path / "elsewhere" / "run-a"
    moved.parent.mkdir()
    run.rename(moved)
    metrics = json.loads((moved / "eval" / "metrics.json").read_text())
    (moved / "eval" / "metrics.json").write_text(json.dumps({"dataset": "toy", "variant": "softmax", "seed": 4,
                                                             **metrics}))
    r = report.load_run(moved)
    assert (r.dataset, r.variant, r.seed) == ("toy", "softmax", 4)
    old = _write_run(tmp_path, "toy", "linear", 1)
    r = report.load_run(old)
    assert (r.dataset, r.variant, r.seed) == ("toy", "linear", 1)


def test_path_layout_and_fields():
    assert parse_run_path(Path("results/bdtnp/linear/seed2")) == ("bdtnp", "linear", 2)
    assert parse_run_path(Path("results/bdtnp/linear/last")) is None
    assert direction("distance_mse") == -1 and direction("distance_pearson") == 1


def test_cli(runs, tmp_path, capsys):
    # the verdict stage decides (the declared family), the report stage renders what it wrote
    out, verdict = tmp_path / "cli.html", tmp_path / "v.json"
    assert cli(["verdict", "--runs", *map(str, runs), "--out", str(verdict),
                "--contrasts", "gated_headwise:gated_elementwise", "--primary-metrics", "knn_preservation"]) == 0
    v = json.loads(verdict.read_text())
    assert v["family"]["contrasts"] == [["gated_headwise", "gated_elementwise"]]
    assert [(r["variant"], r["reference"], r["metric"]) for r in v["datasets"][0]["records"]] == [
        ("gated_headwise", "gated_elementwise", "knn_preservation")
    ]
    assert not out.exists()
    assert cli(["report", "--verdict", str(verdict), "--runs", *map(str, runs), "--out", str(out)]) == 0
    assert "gated_headwise vs gated_elementwise" in _text(out.read_text())
    assert json.loads(verdict.read_text()) == v  # rendering changes no decision
    capsys.readouterr()
    assert cli(["verdict", "--runs", str(tmp_path / "nope"), "--out", str(verdict)]) == 2
    assert "run folder not found" in capsys.readouterr().err
    assert cli(["verdict", "--runs", *map(str, runs), "--out", str(verdict), "--contrasts", "a-b"]) == 2
    assert "not VARIANT:REFERENCE" in capsys.readouterr().err
    assert cli(["report", "--runs", *map(str, runs), "--out", str(out)]) == 2  # no verdict to render
    assert "pass --verdict" in capsys.readouterr().err


def test_markdown_prints_the_decisions_from_verdict_json(page, capsys):
    """report --markdown RESULTS prints the page after its header (the whole page: tests/test_markdown.py)."""
    results = page[0].parent
    assert cli(["report", "--markdown", str(results)]) == 0
    text = capsys.readouterr().out
    # first the answer, then each data set: one line, one table (nothing pooled: no real tissue)
    assert text.startswith("## The answer\n\n**")
    assert text.index("## The answer") < text.index("## Each data set") and "## Pooled" not in text
    assert "## Every contrast on every data set" not in text
    toy = text[text.index("\n**toy**"):]
    toy = toy[:toy.index("\n## ")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in toy.splitlines() if line.startswith("| ")]
    assert [r[0] for r in rows if r[0]] == ["contrast", "gated_headwise vs linear", "gated_elementwise vs linear"]
    rec = next(r for r in _verdict(page)["datasets"][0]["records"]
               if (r["variant"], r["metric"]) == ("gated_headwise", "knn_preservation"))
    cells = next(r for r in rows if r[:2] == ["gated_headwise vs linear", "knn_preservation"])
    pct = [tables.fmt_pct(rec[k]).removesuffix(" %") for k in ("relative_change", "relative_ci_low", "relative_ci_high")]
    assert cells[2:] == [f"{pct[0]} [{pct[1]}, {pct[2]}]", "better",
                         tables.fmt_mde(rec["mde_relative"]).removesuffix(" %")]
    # the power plan: one row per primary record of gated_headwise against linear
    plan = text[text.index("## Power plan: gated_headwise vs linear"):]
    plan_rows = [line for line in plan.splitlines() if line.startswith("| ")][1:]
    assert len(plan_rows) == sum(r["variant"] == "gated_headwise" for r in _verdict(page)["datasets"][0]["records"])
    assert text.count("too few held-out sections to test") == 1  # the untestable peers: one sentence
    assert cli(["report", "--markdown", str(results / "nothing-here")]) == 2


def test_markdown_out_writes_the_same_tables_as_a_page(page, capsys, tmp_path):
    results = page[0].parent
    assert cli(["report", "--markdown", str(results)]) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "docs" / "results.md"
    assert cli(["report", "--markdown", str(results), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# Results\n") and f"--markdown {results.as_posix()} --out {out.as_posix()}`" in text
    assert f"- `{results.as_posix()}/verdict.json` (" in text
    assert text.rstrip().endswith(printed.rstrip())
    # given the verdict file itself, the page names that file
    verdict = (results / "verdict.json").as_posix()
    assert cli(["report", "--markdown", verdict, "--out", str(out)]) == 0
    assert f"- `{verdict}` (" in out.read_text() and "verdict.json/verdict.json" not in out.read_text()


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="needs Debian chromium (apt-get install -y chromium)"
)
def test_renders_in_headless_chromium(page, tmp_path):
    from PIL import Image

    ARTIFACTS.mkdir(exist_ok=True)
    png = ARTIFACTS / "report.png"
    log = screenshot.screenshot(page[0], png, width=1280, height=4000)
    assert screenshot.console_errors(log) == []
    img = np.asarray(Image.open(png).convert("L"), dtype=float)
    assert img.shape == (4000, 1280)
    inked = np.flatnonzero((img < 200).mean(axis=1) > 0.002)  # rows with text or figures
    assert inked.size > 500 and inked.max() > 3000  # a long page of content, not a blank or error page
    # The first screen is the table across tissues: its "better" cell (#e6f4ea, gated_headwise on kNN
    # preservation) is in the top 400 px; the forest plot's filled "better" marker (#1e7b34) follows.
    rgb = np.asarray(Image.open(png).convert("RGB"), dtype=int)
    assert (np.abs(rgb[:400] - [0xE6, 0xF4, 0xEA]).sum(axis=2) < 6).sum() > 500
    rows = np.flatnonzero((np.abs(rgb - [0x1E, 0x7B, 0x34]).sum(axis=2) < 12).sum(axis=1) > 5)
    assert (rows > 400).sum() > 5  # in the first data set's verdict, below the tables
    # The README screenshot command: a shrunken PNG of the top of the page.
    small = tmp_path / "readme.png"
    assert cli(["report", "--screenshot", str(page[0]), str(small), "--height", "600", "--scale", "0.5"]) == 0
    assert Image.open(small).size == (640, 300)
    # The checker itself: a page whose script throws is reported.
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><p>x</p><script>throw new Error('boom')</script></body></html>")
    assert screenshot.console_errors(screenshot.screenshot(bad, tmp_path / "bad.png", width=400, height=300))


def test_position_figure_takes_the_first_draw_of_a_multi_draw_samples_file(tmp_path):
    import pandas as pd

    from alphastomics.analysis.report_figures import _samples
    from alphastomics.analysis.runs import Run

    run = tmp_path / "toy" / "linear" / "seed0"
    run.mkdir(parents=True)
    rows = pd.DataFrame({"cell_id": ["a", "b", "a", "b"], "section": "s", "draw": [0, 0, 1, 1],
                         "x_pred": [1.0, 2.0, 3.0, 4.0]})
    rows.to_parquet(run / "samples.parquet")
    got = _samples(Run(run, "toy", "linear", 0))
    assert list(got["cell_id"]) == ["a", "b"] and list(got["x_pred"]) == [1.0, 2.0]


# ------------------------------------------------------------------------------------------------------
# The first screen: every contrast on every data set, pooled over the real tissues


TISSUE_MANIFESTS = {
    "bdtnp": {"source": "bdtnp", "cell_types": None},
    "synthetic": {"source": "synthetic", "cell_types": ["type0", "type1", "type2"]},
    "mop": {"source": "h5ad", "cell_types": None},
    "starmap": {"source": "h5ad", "cell_types": ["type0", "type1", "type2"]},
}


def _with_cell_types(run: Path, seed: int) -> None:
    """Add the cell-type neighbourhood metrics to a fixture run (what evaluate writes on labelled data)."""
    m = json.loads((run / "eval" / "metrics.json").read_text())
    for i, row in enumerate(m["per_section"]):
        row["neighborhood_ari"] = 0.3 + 0.01 * ((i + seed) % 3) + (0.02 if "headwise" in str(run) else 0)
        row["neighborhood_nmi"] = 0.4
    for key in ("neighborhood_ari", "neighborhood_nmi"):
        m["overall"][key] = float(np.mean([r[key] for r in m["per_section"]]))
    (run / "eval" / "metrics.json").write_text(json.dumps(m))
    pd.DataFrame(m["per_section"]).to_csv(run / "eval" / "sections.csv", index=False)


@pytest.fixture(scope="module")
def tissue_page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("tissues") / "results"
    runs = []
    for ds, manifest in TISSUE_MANIFESTS.items():
        for v in ("linear", "gated_headwise"):
            for seed in SEEDS:
                run = _write_run(root, ds, v, seed, diagnostics=False)
                if manifest["cell_types"]:
                    _with_cell_types(run, seed)
                runs.append(run)
        if ds == "bdtnp":  # a third variant on one data set only
            runs += [_write_run(root, ds, "gated_elementwise", seed, diagnostics=False) for seed in SEEDS]
        data = root / "data" / ds / "processed"
        data.mkdir(parents=True)
        (data / "manifest.json").write_text(json.dumps({"dataset": ds, **manifest}))
    out = root / "tissues" / "report.html"
    verdict = out.with_name("verdict.json")
    args = ["verdict", "--runs", *map(str, runs), "--out", str(verdict), "--contrasts", "gated_headwise:linear",
            "gated_elementwise:linear", "softmax:linear", "--primary-metrics", "knn_preservation",
            "distance_spearman", "neighborhood_ari",
            "--with-verdict", str(root / "verdict.json")]  # the default campaign, not run here
    assert cli(args) == 0
    assert cli(["report", "--verdict", str(verdict), "--runs", *map(str, runs), "--out", str(out)]) == 0
    return out, out.read_text()


def test_the_page_opens_with_every_contrast_on_every_tissue(tissue_page):
    html = tissue_page[1]
    first = html[html.index('<section class="across"'):html.index("</section>")]
    assert html.index('id="across"') < html.index('class="lead"') < html.index('id="verdict"')
    assert html.index("<h1>") < html.index('id="across"')  # nothing else before it but the title
    text = _text(first).replace(" ;", ";").replace(" .", ".")
    # the learning gate lines come first, then one compact table per declared contrast with runs
    assert text.strip().startswith(
        "Learning gate: bdtnp learned; synthetic learned; MOp learned; STARmap learned.")
    assert re.findall(r"<caption>([^<]+)</caption>", first) == ["gated_headwise vs linear",
                                                                 "gated_elementwise vs linear"]
    assert "Tested on no data set: softmax vs linear (no runs of softmax)." in text
    table = first[:first.index("</table>")]
    labels = re.findall(r'<tr(?: class="pooled")?><td class="name">(?:<a href="#verdict-\w+">|<b>)([^<]+)<',
                        table)
    assert labels == ["bdtnp", "synthetic", "MOp", "STARmap", f"{tissue_page[0].parent.parent.as_posix()}/",
                      "pooled: MOp, STARmap"]
    assert "not run here: " + str(tissue_page[0].parent.parent / "verdict.json") in _text(table)
    heads = re.findall(r'<th colspan="3">(\w+) ', table)
    assert heads == ["knn_preservation", "distance_spearman", "neighborhood_ari"]
    # the numbers are verdict.json's; the cell-type metric says why it is missing, no blank cells
    v = json.loads(tissue_page[0].with_name("verdict.json").read_text())
    row = next(r for e in v["across_tissues"]["contrasts"] for r in e["rows"]
               if (e["metric"], r["dataset"]) == ("knn_preservation", "mop"))
    assert tables.fmt_rel_ci(row) in _text(table) and row["decision"] == "better"
    assert _text(table).count("not computed: no cell-type labels") == 2  # bdtnp and MOp
    assert not re.search(r"<td[^>]*>\s*</td>", table)
    pooled = next(e for e in v["across_tissues"]["contrasts"] if e["metric"] == "knn_preservation")["pooled"]
    assert pooled["tissues"] == ["mop", "starmap"] and pooled["k"] == 2
    ari = next(e for e in v["across_tissues"]["contrasts"] if e["metric"] == "neighborhood_ari")["pooled"]
    assert ari["tissues"] == ["starmap"] and "one tissue (STARmap): its own estimate" in _text(table)
    # elementwise ran on bdtnp only: one reason per other data set, not a row of blanks
    other = first[first.index("<caption>gated_elementwise vs linear"):]
    other = other[:other.index("</table>")]
    assert _text(other).count("no runs of gated_elementwise") == 3 + 2  # 3 rows, and the pooled row's reasons
    assert re.findall(r'<td class="nm" colspan="6">([^<]+)</td>', other) == [
        "no runs of gated_elementwise"] * 3 + [
        f"not run here: {tissue_page[0].parent.parent / 'verdict.json'} does not exist; run `make run`",
        "no real tissue to pool (MOp: no runs of gated_elementwise; STARmap: no runs of gated_elementwise)"]
    assert not re.search(r"<td[^>]*>\s*</td>", other)


def test_a_data_set_without_cell_types_says_so_once_and_has_no_empty_column(tissue_page):
    html = tissue_page[1]
    mop = html[html.index('id="verdict-mop"'):html.index('id="verdict-starmap"')]
    note = "Not computed on mop: neighborhood_ari, neighborhood_nmi: the data set has no cell-type labels"
    assert _text(mop).count(note) == 1 and _text(html).count(note) == 1
    starmap = html[html.index('id="verdict-starmap"'):html.index('id="expectations"')]
    assert "Not computed on" not in _text(starmap)
    metrics = html[html.index('id="metrics"'):html.index('id="cost"')]
    metric_tables = dict(re.findall(r"<h3>(\w+)</h3>\s*<div class=\"scroll\"><table>(.*?)</table>", metrics, re.S))
    assert "neighborhood_ari" in metric_tables["starmap"] and "neighborhood_ari" not in metric_tables["mop"]
    cols = {ds: re.findall(r"<th>(\w+)</th>", t) for ds, t in metric_tables.items()}
    assert cols["mop"] == [c for c in cols["starmap"] if not c.startswith("neighborhood_")]
    v = json.loads(tissue_page[0].with_name("verdict.json").read_text())
    kinds = {d["dataset"]: (d["kind"], d["cell_types"]) for d in v["datasets"]}
    assert kinds == {"bdtnp": ("real, cut sections", False), "mop": ("real sections", False),
                     "starmap": ("real sections", True), "synthetic": ("synthetic", True)}
    # said once: not again where the reader's own note (preprocess, manifest notes) already names them
    mop_v = next(d for d in v["datasets"] if d["dataset"] == "mop")
    note = "no cell-type column 'cell_type': the cell-type metrics (neighborhood_ari, neighborhood_nmi) are"
    assert tables.not_computed_lines(mop_v, [note]) == [] and len(tables.not_computed_lines(mop_v, [])) == 1
    md = markdown.markdown_summary(tissue_page[0].with_name("verdict.json"))
    each = md[md.index("## Each data set"):]
    lines = {line[2:line.index("**", 2)]: line for line in each.splitlines() if line.startswith("**")}
    assert list(lines) == ["bdtnp", "synthetic", "MOp", "STARmap"]  # in the order of their kinds
    gone = "Not computed: neighborhood_ari, neighborhood_nmi (no cell-type labels)."
    assert [k for k, line in lines.items() if line.endswith(gone)] == ["bdtnp", "MOp"] and md.count(gone) == 2
    # the pooled estimates: over 2 or more real tissues only (neighbourhood ARI has one: not a row)
    pooled_md = md[md.index("## Pooled over the real tissues"):]
    pooled_md = pooled_md[:pooled_md.index("\n## ")]
    pooled_rows = [[c.strip() for c in line.strip("|").split("|")] for line in pooled_md.splitlines()
                   if line.startswith("| ")][1:]
    assert pooled_rows and {r[-1] for r in pooled_rows} == {"MOp, STARmap"}
    assert "neighborhood_ari" not in {r[1] for r in pooled_rows}


def test_claims_read_the_sweep_and_show_its_figure(runs, tmp_path):
    """--stability: the sweep's claims join the table, its loss-curve figure sits under it."""
    sweep = tmp_path / "stability" / "stability.json"
    sweep.parent.mkdir()
    sweep.write_text(json.dumps({"claims": [
        {"claim": "supports larger learning rates", "dataset": "toy", "variant": "gated_headwise",
         "reference": "linear", "variant_max_stable_lr": 0.03, "reference_max_stable_lr": 0.01,
         "variant_beyond_sweep": False, "reference_beyond_sweep": False}], "runs": [], "convergence": []}))
    fig = plt_png(sweep.with_name("stability.png"))
    out = tmp_path / "page" / "report.html"
    build_report(runs, out, baseline="linear", stability=sweep)
    rows = json.loads(out.with_name("verdict.json").read_text())["claims"]
    lr = next(r for r in rows if r["claim"] == "stable at larger learning rates")
    assert (lr["measured"], lr["control"], lr["mark"]) == (0.03, 0.01, "met")
    assert fig in out.read_text() and 'alt="training loss per learning rate"' in out.read_text()
    # a sweep file without its claims is refused in one line naming the fix
    sweep.write_text("{}")
    with pytest.raises(ClaimsError, match=r"stability.json: field 'claims' missing; rerun make stability"):
        build_report(runs, out, baseline="linear", stability=sweep)


def plt_png(path):
    """A tiny PNG at path; its base64 as the page embeds it."""
    import base64

    from PIL import Image

    Image.new("RGB", (4, 3), (200, 10, 10)).save(path)
    return base64.b64encode(path.read_bytes()).decode("ascii")
