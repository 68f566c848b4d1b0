"""The evaluate stage on samples files built here from processed data (synthetic tissue with cell types)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from alphastomics.__main__ import main as cli
from alphastomics.config import load_config
from alphastomics.data.fetch import fetch_synthetic
from alphastomics.data.preprocess import preprocess
from alphastomics.evaluation.evaluate import EvaluationError, evaluate
from alphastomics.model.denoiser import Denoiser

SYNTH = {
    "dataset": {
        "source": "synthetic",
        "name": "tiny",
        "synthetic": {
            "num_sections": 4,
            "min_cells": 60,
            "max_cells": 90,
            "num_genes": 12,
            "num_cell_types": 3,
        },
    },
    "evaluation": {"num_random_references": 3},
}


@pytest.fixture(scope="module")
def proc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = load_config(overrides=SYNTH)
    root = tmp_path_factory.mktemp("eval")
    fetch_synthetic(root / "raw", cfg.dataset.synthetic)
    preprocess(root / "raw", cfg.dataset, root / "proc")
    return root / "proc"


Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def write_samples(
    proc: Path,
    out: Path,
    *,
    positions: Transform = lambda x, rng: x,
    expression: Transform | None = None,
    mode: str = "expr_to_pos",
    sections: list[str] | None = None,
) -> Path:
    """Held-out sections in the samples format, predictions = transform(truth) in original units."""
    manifest = json.loads((proc / "manifest.json").read_text())
    cells = pq.read_table(proc / "cells.parquet")
    scale, centers = manifest["coordinates"]["scale"], manifest["coordinates"]["centers"]
    g = manifest["n_genes"]
    mean = np.array(manifest["normalization"]["gene_mean"])
    std = np.array(manifest["normalization"]["gene_std"])
    rng = np.random.default_rng(7)
    parts = []
    for s in sections or manifest["splits"]["test"] + manifest["splits"]["val"]:
        rows = cells.filter(pc.equal(cells["section"].cast(pa.string()), s))
        true = np.c_[rows["x"], rows["y"], rows["z"]].astype(np.float64) * scale + np.array(
            centers.get(s, [0, 0, 0])
        )
        pred = true.copy()
        pred[:, : manifest["dims"]] = positions(true[:, : manifest["dims"]], rng)
        cols = {
            "cell_id": rows["cell_id"].cast(pa.string()),
            "section": pa.array([s] * rows.num_rows),
            "cell_type": rows["cell_type"].cast(pa.string()),
        }
        for a, axis in enumerate("xyz"):
            cols[f"{axis}_true"], cols[f"{axis}_pred"] = true[:, a], pred[:, a]
        if expression is not None:
            e = np.asarray(rows["expression"].combine_chunks().flatten()).reshape(-1, g) * std + mean
            for name, v in (("expression_true", e), ("expression_pred", expression(e, rng))):
                cols[name] = pa.FixedSizeListArray.from_arrays(pa.array(v.astype(np.float32).ravel()), g)
        parts.append(pa.table(cols))
    table = pa.concat_tables(parts).replace_schema_metadata(
        {b"alphastomics.mode": mode.encode(), b"alphastomics.method": b"handmade"}
    )
    pq.write_table(table, out)
    return out


def rigid(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    theta = 0.7
    r = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]) @ np.diag([1.0, -1.0])
    return x @ r + 123.0


def shuffle(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return x[rng.permutation(len(x))]


def test_truth_scores_perfectly_and_writes_both_tables(proc: Path, tmp_path: Path) -> None:
    cfg = load_config(overrides=SYNTH)
    samples = write_samples(proc, tmp_path / "samples.parquet", positions=rigid)
    out = tmp_path / "eval"
    result = evaluate(samples, proc, out, cfg)
    o = result["overall"]
    assert o["knn_preservation"] == 1.0
    assert o["procrustes_rmsd"] == pytest.approx(0.0, abs=1e-6)
    assert o["distance_mse"] == pytest.approx(0.0, abs=1e-12)
    assert o["distance_pearson"] == pytest.approx(1.0)
    assert o["neighborhood_ari"] == pytest.approx(1.0) and o["neighborhood_nmi"] == pytest.approx(1.0)
    assert o["morans_i_corr"] == pytest.approx(1.0)
    assert o["morans_i_mean_pred"] == pytest.approx(o["morans_i_mean_true"])
    # the random reference is far worse, and the file holds what evaluate returned
    r = result["random_reference"]
    assert r["knn_preservation"] < 0.3 and r["procrustes_rmsd"] > 1.0 and abs(r["distance_pearson"]) < 0.3
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["overall"]["knn_preservation"] == 1.0 and on_disk["mode"] == "expr_to_pos"
    assert on_disk["method"] == "handmade" and on_disk["n_sections"] == 2
    lines = (out / "sections.csv").read_text().splitlines()
    assert lines[0].startswith("section,n_cells,") and len(lines) == 3
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "sections.csv"]
    assert "dataset" not in on_disk  # no --run-id given: the report falls back to the folder's path


def test_run_id_is_recorded_first_in_metrics_json(proc: Path, tmp_path: Path) -> None:
    samples = write_samples(proc, tmp_path / "samples.parquet", positions=rigid)
    argv = ["evaluate", "--samples", str(samples), "--data_dir", str(proc), "--out", str(tmp_path / "e"),
            "--run-id", "toy", "gated_headwise", "3", "--set", "evaluation.num_random_references=1"]
    assert cli(argv) == 0
    on_disk = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert list(on_disk)[:3] == ["dataset", "variant", "seed"]
    assert (on_disk["dataset"], on_disk["variant"], on_disk["seed"]) == ("toy", "gated_headwise", 3)


def test_overall_is_cell_weighted_mean_of_sections(proc: Path, tmp_path: Path) -> None:
    cfg = load_config(overrides=SYNTH)
    samples = write_samples(
        proc, tmp_path / "s.parquet", positions=lambda x, rng: x + rng.normal(0, 0.05, x.shape)
    )
    result = evaluate(samples, proc, tmp_path / "eval", cfg)
    rows = result["per_section"]
    n = np.array([r["n_cells"] for r in rows])
    for key in ("knn_preservation", "procrustes_rmsd", "random_knn_preservation"):
        want = (np.array([r[key] for r in rows]) * n).sum() / n.sum()
        got = result["overall" if not key.startswith("random_") else "random_reference"][
            key.removeprefix("random_")
        ]
        assert got == pytest.approx(want)


def test_random_prediction_is_near_random_reference(proc: Path, tmp_path: Path) -> None:
    cfg = load_config(overrides={**SYNTH, "evaluation": {"num_random_references": 5}})
    samples = write_samples(proc, tmp_path / "s.parquet", positions=shuffle)
    result = evaluate(samples, proc, tmp_path / "eval", cfg)
    o, r = result["overall"], result["random_reference"]
    assert o["knn_preservation"] == pytest.approx(r["knn_preservation"], abs=0.1)
    assert o["distance_pearson"] == pytest.approx(r["distance_pearson"], abs=0.15)
    assert o["procrustes_rmsd"] == pytest.approx(r["procrustes_rmsd"], rel=0.2)


def test_expression_modes(proc: Path, tmp_path: Path) -> None:
    cfg = load_config(overrides=SYNTH)
    samples = write_samples(proc, tmp_path / "s.parquet", expression=lambda e, rng: e, mode="pos_to_expr")
    result = evaluate(samples, proc, tmp_path / "eval", cfg)
    o, r = result["overall"], result["random_reference"]
    assert o["expression_mse"] == pytest.approx(0.0, abs=1e-8)
    assert o["expression_pearson"] == pytest.approx(1.0, abs=1e-5)
    assert o["expr_morans_i_corr"] == pytest.approx(1.0, abs=1e-5)
    assert "knn_preservation" not in o  # positions were given, not generated
    assert r["expression_mse"] > 0.5 and abs(r["expression_pearson"]) < 0.3
    joint = write_samples(
        proc, tmp_path / "j.parquet", positions=rigid, expression=lambda e, rng: e, mode="joint"
    )
    result = evaluate(joint, proc, tmp_path / "eval2", cfg)
    both, r = result["overall"], result["random_reference"]
    # joint: a generated tissue, not these cells: its consistency, no per-cell metric
    assert "knn_preservation" not in both and "expression_mse" not in both
    assert both["joint_coupling"] == pytest.approx(both["joint_coupling_true"]) and both["joint_coupling"] > 0.05
    assert both["joint_consistency_error"] == pytest.approx(0.0, abs=1e-12)
    # random: positions and expression permuted independently, so no coupling is left
    assert abs(r["joint_coupling"]) < 0.05
    assert r["joint_consistency_error"] == pytest.approx(both["joint_coupling_true"], abs=0.05)


def test_train_summary_is_copied(proc: Path, tmp_path: Path) -> None:
    cfg = load_config(overrides=SYNTH)
    summary = tmp_path / "train_summary.json"
    summary.write_text(
        json.dumps(
            {
                "params_total": 1234,
                "params_attention": 200,
                "wall_time_s": 9.5,
                "cells_per_s": 100.0,
                "peak_mem_mb": 12.0,
                "best_val_loss": 0.3,
            }
        )
    )
    samples = write_samples(proc, tmp_path / "s.parquet")
    result = evaluate(samples, proc, tmp_path / "eval", cfg, train_summary=summary)
    assert result["params"] == {"params_total": 1234, "params_attention": 200}
    assert result["cost"]["wall_time_s"] == 9.5


def test_unknown_section_is_a_one_line_error_and_nothing_is_written(proc: Path, tmp_path: Path) -> None:
    samples = write_samples(proc, tmp_path / "s.parquet")
    t = pq.read_table(samples)
    sec = pa.array(["nowhere"] * t.num_rows)
    pq.write_table(t.set_column(t.column_names.index("section"), "section", sec), samples)
    out = tmp_path / "eval"
    with pytest.raises(EvaluationError) as err:
        evaluate(samples, proc, out, load_config(overrides=SYNTH))
    msg = str(err.value)
    assert "\n" not in msg and str(samples) in msg and "'section'" in msg and "nowhere" in msg
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["s.parquet"]


def test_cli_bad_input_exits_2_with_file_and_field(
    proc: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    samples = write_samples(proc, tmp_path / "s.parquet")
    t = pq.read_table(samples).drop_columns(["x_pred"])
    pq.write_table(t, samples)
    code = cli(["evaluate", "--samples", str(samples), "--data_dir", str(proc), "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and str(samples) in err and "'x_pred'" in err
    assert len(err.splitlines()) == 1


def test_nan_predictions_are_rejected(proc: Path, tmp_path: Path) -> None:
    samples = write_samples(proc, tmp_path / "s.parquet", positions=lambda x, rng: np.where(x > 0, np.nan, x))
    with pytest.raises(EvaluationError, match="'x_pred' has .* NaN"):
        evaluate(samples, proc, tmp_path / "e", load_config(overrides=SYNTH))


# ---------------------------------------------------------------------------------------------- checkpoint


def tiny_checkpoint(proc: Path, path: Path, diffusion: dict | None = None, **model: object) -> Path:
    """A checkpoint with the keys of docs/architecture.md, holding an untrained tiny model (EMA = weights)."""
    import torch

    settings = {"d_model": 32, "num_layers": 2, "num_heads": 2, "time_embed_dim": 16, **model}
    cfg = load_config(overrides={**SYNTH, "TransformerLayer_setting": settings, "diffusion": diffusion or {}})
    manifest = json.loads((proc / "manifest.json").read_text())
    torch.manual_seed(0)
    net = Denoiser.from_config(cfg, manifest["n_genes"], manifest["dims"])
    torch.save(
        {
            "config": cfg.to_dict(),
            "model": net.state_dict(),
            "ema": net.state_dict(),
            "step": 0,
            "n_genes": manifest["n_genes"],
            "dims": manifest["dims"],
            "manifest": manifest,
        },
        path,
    )
    return path


def test_checkpoint_diagnostics_and_attention_map(proc: Path, tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(proc, tmp_path / "final.pt", diffusion={"mask_fraction": 0.15})
    cfg = load_config(
        overrides={**SYNTH, "evaluation": {"num_random_references": 1, "diagnostics_max_cells": 50}}
    )
    samples = write_samples(proc, tmp_path / "s.parquet", positions=rigid)
    out = tmp_path / "eval"
    result = evaluate(samples, proc, out, cfg, checkpoint=ckpt)
    d = result["diagnostics"]
    assert len(d["attention_sink_detail"]) == 2 * 2 * 2  # sections x layers x heads
    for row in d["attention_sink_detail"]:
        assert row["n_cells"] == 50  # every held-out section is larger than 50: subsampled, and said so
        assert 1 / 50 - 1e-6 <= row["share"] <= 1.0 and row["share_x_uniform"] == pytest.approx(
            row["share"] * 50
        )
    assert set(d["subsampled"]) == {r["section"] for r in result["per_section"]}
    assert [g["layer"] for g in d["gate"]] == [0, 1]
    for g in d["gate"]:  # headwise gate: one score per head per real cell, over both sections
        assert sum(g["counts"]) == 2 * 50 * 2 and 0.0 < g["mean"] < 1.0
    assert np.isfinite(result["overall"]["masked_reconstruction_mse"])
    per = [(r["masked_reconstruction_mse"], r["n_cells"]) for r in result["per_section"]]
    assert result["overall"]["masked_reconstruction_mse"] == pytest.approx(
        sum(v * n for v, n in per) / sum(n for _, n in per)
    )  # per section, so the report can pair seeds x sections; overall cell-weighted like every metric
    amap = np.load(out / "attention_map.npz")
    n = amap["attn"].shape[0]
    assert amap["attn"].shape == (n, n) and n <= 256 and amap["positions"].shape == (n, 2)
    assert np.allclose(amap["attn"].sum(axis=1), 1.0, atol=1e-5)  # 50 cells < 256: the whole matrix
    on_disk = json.loads((out / "metrics.json").read_text())
    per_layer = on_disk["diagnostics"]["attention_sink"]
    assert [r["layer"] for r in per_layer] == [0, 1]
    for li, r in enumerate(per_layer):  # per layer: mean over heads and sections of the detail rows
        rows = [x["share"] for x in d["attention_sink_detail"] if x["layer"] == li]
        assert r["share"] == pytest.approx(np.mean(rows)) and r["share_max"] == pytest.approx(max(rows))


def test_every_metric_evaluate_writes_has_a_declared_direction(proc: Path, tmp_path: Path) -> None:
    # Every key of metrics.json (overall, random reference, per section, per draw) in each mode, with cell
    # types and a checkpoint's masked reconstruction, is declared in metrics.DIRECTIONS: the verdict, the
    # learning gate and the report read which way it is better there, and an undeclared one stops them.
    from alphastomics.analysis.runs import direction
    from alphastomics.evaluation import metrics as M

    ckpt = tiny_checkpoint(proc, tmp_path / "final.pt", diffusion={"mask_fraction": 0.15})
    cfg = load_config(
        overrides={**SYNTH, "evaluation": {"num_random_references": 1, "diagnostics_max_cells": 50}}
    )
    keys: set[str] = set()
    for mode, kw in (
        ("expr_to_pos", {"positions": rigid}),
        ("pos_to_expr", {"expression": lambda e, rng: e + rng.normal(0, 0.5, e.shape)}),
        ("joint", {"positions": shuffle, "expression": lambda e, rng: e}),
    ):
        samples = write_samples(proc, tmp_path / f"{mode}.parquet", mode=mode, **kw)
        evaluate(samples, proc, tmp_path / mode, cfg, checkpoint=ckpt if mode == "expr_to_pos" else None)
        m = json.loads((tmp_path / mode / "metrics.json").read_text())
        keys |= set(m["overall"]) | set(m["random_reference"])
        for row in m["per_section"]:
            keys |= {k.removeprefix("random_") for k in row} - {"section", "n_cells", "draws"}
        for row in m["per_draw"]:
            keys |= set(row) - {"section", "draw"}
    # every family of metrics was written, so none escaped the check
    assert {"knn_preservation", "procrustes_rssd_scaled", "morans_i_mean_pred", "neighborhood_nmi",
            "expression_mse", "expr_morans_i_corr", "joint_coupling", "masked_reconstruction_mse"} <= keys
    assert sorted(k for k in keys if k not in M.DIRECTIONS) == []
    assert all(direction(k) in (1, -1, None) for k in keys)


def test_linear_checkpoint_has_sinks_but_no_gates(proc: Path, tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(
        proc, tmp_path / "final.pt", attention="linear", gate="none", qk_norm=False
    )
    cfg = load_config(overrides={**SYNTH, "evaluation": {"num_random_references": 1}})
    samples = write_samples(proc, tmp_path / "s.parquet")
    result = evaluate(samples, proc, tmp_path / "eval", cfg, checkpoint=ckpt)
    d = result["diagnostics"]
    assert d["gate"] == [] and len(d["attention_sink"]) == 2 and d["subsampled"] == {}
    # expr_to_pos without masked diffusion never trains the expression head: nothing to reconstruct with
    assert "masked_reconstruction_mse" not in result["overall"]
    assert len(d["attention_sink_detail"]) == 2 * 2 * 2


def test_gate_over_t_one_row_per_time_and_layer(proc: Path, tmp_path: Path) -> None:
    from alphastomics.evaluation.diagnostics import model_diagnostics

    ckpt = tiny_checkpoint(proc, tmp_path / "final.pt")  # headwise gate, 2 layers, T = 1000
    sections = json.loads((proc / "manifest.json").read_text())["splits"]["test"]
    times = [0.2, 0.6, 1.0]
    ev = {"diagnostics_max_cells": 40, "gate_times": times}
    cfg = load_config(overrides={**SYNTH, "evaluation": ev})
    diag, _, _ = model_diagnostics(ckpt, proc, sections, cfg)
    rows = diag["gate_over_t"]
    assert [(r["t"], r["step"], r["layer"]) for r in rows] == [
        (pytest.approx(t), round(t * 1000), li) for t in times for li in (0, 1)
    ]
    for r in rows:
        assert set(r) == {"t", "step", "layer", "mean", "std", "share_below"}
        assert 0.0 <= r["mean"] <= 1.0 and 0.0 <= r["std"] <= 0.5 and 0.0 <= r["share_below"] <= 1.0
    # the noise level reaches the gate: layer 0's mean is not the same at every time
    assert len({r["mean"] for r in rows if r["layer"] == 0}) > 1
    # seeded: the same rows again; other times leave the rows at diagnostic_time and the sinks as they were
    again, _, _ = model_diagnostics(ckpt, proc, sections, cfg)
    assert again["gate_over_t"] == rows
    other = load_config(overrides={**SYNTH, "evaluation": {**ev, "gate_times": [0.5]}})
    one, _, _ = model_diagnostics(ckpt, proc, sections, other)
    assert one["gate"] == diag["gate"] and one["attention_sink_detail"] == diag["attention_sink_detail"]
    assert [(r["step"], r["layer"]) for r in one["gate_over_t"]] == [(500, 0), (500, 1)]


def test_linear_checkpoint_has_no_gate_over_t(proc: Path, tmp_path: Path) -> None:
    from alphastomics.evaluation.diagnostics import model_diagnostics

    ckpt = tiny_checkpoint(proc, tmp_path / "final.pt", attention="linear", gate="none", qk_norm=False)
    sections = json.loads((proc / "manifest.json").read_text())["splits"]["test"]
    diag, _, _ = model_diagnostics(ckpt, proc, sections, load_config(overrides=SYNTH))
    assert diag["gate"] == [] and diag["gate_over_t"] == []


def test_neighbourhood_scores_equal_the_metric_functions_and_runs_repeat_bit_for_bit(
    proc: Path, tmp_path: Path
) -> None:
    from alphastomics.evaluation import metrics as M

    cfg = load_config(overrides=SYNTH)
    samples = write_samples(
        proc, tmp_path / "s.parquet", positions=lambda x, rng: x + rng.normal(0, 0.3, x.shape)
    )
    first = evaluate(samples, proc, tmp_path / "a", cfg)
    evaluate(samples, proc, tmp_path / "b", cfg)
    assert (tmp_path / "a" / "metrics.json").read_bytes() == (tmp_path / "b" / "metrics.json").read_bytes()
    t = pq.read_table(samples).to_pandas()
    for row in first["per_section"]:
        part = t[t["section"] == row["section"]]
        pred, true = part[["x_pred", "y_pred"]].to_numpy(), part[["x_true", "y_true"]].to_numpy()
        labels = part["cell_type"].to_numpy().astype(str)
        assert row["neighborhood_ari"] == pytest.approx(M.neighborhood_ari(pred, true, labels, k=15))
        assert row["neighborhood_nmi"] == pytest.approx(M.neighborhood_nmi(pred, true, labels, k=15))
        assert row["knn_preservation"] == pytest.approx(M.knn_preservation(pred, true, k=10))


def test_every_position_score_and_random_reference_equals_the_metric_functions(
    proc: Path, tmp_path: Path
) -> None:
    # evaluate computes each section's truth once (true distances and ranks, kNN, Moran's I, neighbourhood
    # clusters and their random reference) and shares it between draws and random placements: every
    # number it writes must still be that of the public metric functions on that draw or permutation.
    from alphastomics.evaluation import metrics as M

    cfg = load_config(overrides=SYNTH)
    ecfg = cfg.evaluation
    def noisy(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return x + rng.normal(0, 0.3, x.shape)

    # two draws of the same cells: a noisy placement and a shuffled one
    parts = [pq.read_table(write_samples(proc, tmp_path / f"d{i}.parquet", positions=f))
             for i, f in enumerate((noisy, shuffle))]
    table = pa.concat_tables([t.append_column("draw", pa.array([i] * len(t))) for i, t in enumerate(parts)])
    samples = tmp_path / "s.parquet"
    pq.write_table(table.replace_schema_metadata(parts[0].schema.metadata), samples)
    result = evaluate(samples, proc, tmp_path / "eval", cfg)

    manifest = json.loads((proc / "manifest.json").read_text())
    axes, g = "xyz"[: manifest["dims"]], manifest["n_genes"]
    cells = pq.read_table(proc / "cells.parquet")
    k, kn, seed = ecfg.knn_k, ecfg.neighborhood_k, ecfg.seed

    def scores(pred: np.ndarray, true: np.ndarray, expr: np.ndarray) -> dict[str, float]:
        mi_pred, mi_true = M.morans_i(pred, expr, k=k), M.morans_i(true, expr, k=k)
        return {
            "distance_mse": M.distance_mse(pred, true, seed=seed),
            "distance_pearson": M.distance_pearson(pred, true, seed=seed),
            "distance_spearman": M.distance_spearman(pred, true, seed=seed),
            "knn_preservation": M.knn_preservation(pred, true, k=k),
            "procrustes_rmsd": M.procrustes_rmsd(pred, true),
            "procrustes_rssd": M.procrustes_rssd(pred, true),
            "procrustes_rmsd_scaled": M.procrustes_rmsd(pred, true, scaled=True),
            "procrustes_rssd_scaled": M.procrustes_rssd(pred, true, scaled=True),
            "morans_i_corr": M.morans_i_correlation(pred, true, expr, k=k),
            "morans_i_mean_pred": float(np.nanmean(mi_pred)),
            "morans_i_mean_true": float(np.nanmean(mi_true)),
        }

    expected, reference, weights = [], [], []
    sections = list(dict.fromkeys(table["section"].to_pylist()))
    for index, s in enumerate(sections):
        draws = []
        for t in parts:
            part = t.filter(pc.equal(t["section"], s))
            pred = np.c_[tuple(part[f"{a}_pred"].to_numpy() for a in axes)]
            true = np.c_[tuple(part[f"{a}_true"].to_numpy() for a in axes)]
            rows = cells.filter(pc.equal(cells["section"].cast(pa.string()), s))
            assert rows["cell_id"].cast(pa.string()).to_pylist() == part["cell_id"].to_pylist()
            expr = np.asarray(rows["expression"].combine_chunks().flatten(), dtype=np.float64).reshape(-1, g)
            assert part["cell_type"].null_count == 0  # all labelled: no cell left out of neighbourhoods
            labels = part["cell_type"].to_numpy(zero_copy_only=False).astype(str)
            d = scores(pred, true, expr)
            d["neighborhood_ari"] = M.neighborhood_ari(pred, true, labels, k=kn, seed=seed)
            d["neighborhood_nmi"] = M.neighborhood_nmi(pred, true, labels, k=kn, seed=seed)
            draws.append(d)
        expected.append({key: float(np.mean([d[key] for d in draws])) for key in draws[0]})
        rng = np.random.default_rng([seed, index])
        perms = [rng.permutation(len(true)) for _ in range(ecfg.num_random_references)]
        rand = [scores(true[p], true, expr) for p in perms]
        ref = {key: float(np.nanmean([d[key] for d in rand])) for key in rand[0]}
        rng = np.random.default_rng([seed, index, 1])
        perms = [rng.permutation(len(true)) for _ in range(ecfg.num_random_references)]
        for key, fn in (("neighborhood_ari", M.neighborhood_ari), ("neighborhood_nmi", M.neighborhood_nmi)):
            ref[key] = float(np.mean([fn(true[p], true, labels, k=kn, seed=seed) for p in perms]))
        reference.append(ref)
        weights.append(len(true))

    def close(want: float) -> object:
        return pytest.approx(want, rel=1e-12, abs=1e-15, nan_ok=True)

    assert [r["section"] for r in result["per_section"]] == sections and len(result["per_draw"]) == 4
    for row, want, ref in zip(result["per_section"], expected, reference):
        assert row["draws"] == 2
        for key in want:
            assert row[key] == close(want[key]), key
            assert row[f"random_{key}"] == close(ref[key]), key
    for key in expected[0]:
        assert result["overall"][key] == close(M.weighted_mean([e[key] for e in expected], weights)), key
        assert result["random_reference"][key] == close(M.weighted_mean([r[key] for r in reference], weights))


def test_unknown_cell_id_names_file_field_and_section(proc: Path, tmp_path: Path) -> None:
    samples = write_samples(proc, tmp_path / "s.parquet")
    t = pq.read_table(samples)
    ids = t["cell_id"].to_pylist()
    ids[0] = "ghost"
    pq.write_table(t.set_column(0, "cell_id", pa.array(ids)), samples)
    with pytest.raises(EvaluationError, match=r"s\.parquet: field 'cell_id' has 'ghost' \(\+0 more\)"):
        evaluate(samples, proc, tmp_path / "e", load_config(overrides=SYNTH))
