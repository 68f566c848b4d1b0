"""The verdict (alphastomics/analysis/verdict.py) on fixture run folders: decisions for a planted effect and for none,
every number of verdict.json recomputed by hand from the per-seed metrics.json files (its documented schema),
seeds as the unit (two sections of one seed are never two pairs), peers per section with too few sections,
the claims' marks, and the declared family of config/config.yaml."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats as st

from alphastomics.analysis import claims
from alphastomics.analysis import verdict as V
from alphastomics.analysis.runs import load_run

ROOT = Path(__file__).resolve().parents[1]
PRIMARY = ("knn_preservation", "distance_spearman", "procrustes_rmsd_scaled")
SEEDS = [0, 1, 2, 3, 4]
SECTIONS = {"s0": 30, "s1": 70}  # cell counts: the per-seed value is a 30:70 weighted mean


def _write(
    root: Path,
    dataset: str,
    variant: str,
    seed: int,
    sections: dict[str, dict[str, float]],
    n_cells: dict[str, int],
) -> Path:
    run = root / dataset / variant / f"seed{seed}"
    (run / "eval").mkdir(parents=True)
    rows = [{"section": s, "n_cells": n_cells[s], **vals} for s, vals in sections.items()]
    metrics = sorted({m for r in rows for m in r} - {"section", "n_cells"})
    overall = {
        m: float(np.average([r[m] for r in rows], weights=[r["n_cells"] for r in rows])) for m in metrics
    }
    (run / "eval" / "metrics.json").write_text(json.dumps({"overall": overall, "per_section": rows}))
    return run


def _planted(root: Path) -> list[Path]:
    """linear: seed-level noise; gated_headwise: +0.05 kNN preservation on every section of every seed (plus
    noise), nothing else; softmax: linear plus zero-mean noise. One secondary metric (morans_i_corr)."""
    rng = np.random.default_rng(3)
    runs = []
    for seed in SEEDS:
        lin = {
            s: {
                "knn_preservation": 0.50 + 0.02 * rng.normal(),
                "distance_spearman": 0.80 + 0.02 * rng.normal(),
                "procrustes_rmsd_scaled": 0.40 + 0.02 * rng.normal(),
                "morans_i_corr": 0.9,
            }
            for s in SECTIONS
        }
        head = {
            s: {
                m: v + (0.05 if m == "knn_preservation" else 0.0) + 0.003 * rng.normal()
                for m, v in vals.items()
            }
            for s, vals in lin.items()
        }
        soft = {s: {m: v + 0.01 * rng.normal() for m, v in vals.items()} for s, vals in lin.items()}
        for name, vals in (("linear", lin), ("gated_headwise", head), ("softmax", soft)):
            runs.append(_write(root, "toy", name, seed, vals, SECTIONS))
    return runs


FAMILY = V.Family(
    contrasts=(("gated_headwise", "linear"), ("softmax", "linear"), ("gated_elementwise", "linear")),
    primary_metrics=PRIMARY,
)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("results")
    runs = _planted(root)
    v = V.build([load_run(p) for p in runs], FAMILY)
    V.write(v, root / "verdict.json")
    return root, json.loads((root / "verdict.json").read_text())


# ---------------------------------------------------------------------------------------------------------
# Recomputing verdict.json by hand (numpy + the textbook formulas), from metrics.json files only


def _seed_value(run: Path, metric: str) -> float:
    m = json.loads((run / "eval" / "metrics.json").read_text())
    rows = m["per_section"]
    return sum(r[metric] * r["n_cells"] for r in rows) / sum(r["n_cells"] for r in rows)


def _t_p(d: np.ndarray) -> float:
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    return 2 * st.t.sf(abs(t), len(d) - 1)


def _perm_p(d: np.ndarray) -> float:
    obs = abs(d.mean())
    flips = [abs(np.mean(np.array(s) * d)) >= obs - 1e-12 for s in itertools.product((-1, 1), repeat=len(d))]
    return sum(flips) / len(flips)


def _holm(p: list[float]) -> list[float]:
    m, order = len(p), sorted(range(len(p)), key=lambda i: p[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def _power(effect: float, sd: float, n: int, alpha: float) -> float:
    crit = st.t.ppf(1 - alpha / 2, n - 1)
    return st.nct.sf(crit, n - 1, effect * math.sqrt(n) / sd)  # the far tail is < 1e-6 here


def recompute_and_check(results: Path, v: dict) -> int:
    """Every number of every primary record of ``v``, from the runs' ``eval/metrics.json`` files."""
    checked = 0
    for ds in v["datasets"]:
        recs = ds["records"]
        for r in recs:
            seeds = sorted(
                set(int(p.name[4:]) for p in (results / ds["dataset"] / r["variant"]).glob("seed*"))
                & set(int(p.name[4:]) for p in (results / ds["dataset"] / r["reference"]).glob("seed*"))
            )
            a = np.array(
                [_seed_value(results / ds["dataset"] / r["variant"] / f"seed{s}", r["metric"]) for s in seeds]
            )
            b = np.array(
                [
                    _seed_value(results / ds["dataset"] / r["reference"] / f"seed{s}", r["metric"])
                    for s in seeds
                ]
            )
            d = a - b
            n = len(d)
            half = st.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n)
            assert r["units"] == seeds and r["n"] == n
            np.testing.assert_allclose(r["variant_values"], a, rtol=1e-12)
            np.testing.assert_allclose(r["reference_values"], b, rtol=1e-12)
            assert r["mean_difference"] == pytest.approx(d.mean(), rel=1e-9)
            assert r["relative_change"] == pytest.approx(d.mean() / abs(b.mean()), rel=1e-9)
            assert (r["ci_low"], r["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half), rel=1e-9)
            assert r["relative_ci_low"] == pytest.approx((d.mean() - half) / abs(b.mean()), rel=1e-9)
            assert r["p_value"] == pytest.approx(_t_p(d), rel=1e-9)
            assert r["permutation_p"] == pytest.approx(_perm_p(d), abs=1e-12)
            alpha = v["family"]["alpha"] / len(recs)
            assert _power(r["mde"], d.std(ddof=1), n, alpha) == pytest.approx(v["family"]["power"], abs=1e-6)
            assert r["mde_relative"] == pytest.approx(r["mde"] / abs(b.mean()), rel=1e-9)
            checked += 1
        for r, h in zip(recs, _holm([r["p_value"] for r in recs])):
            assert r["holm_p"] == pytest.approx(h, rel=1e-9) and r["family_size"] == len(recs)
            sign = 1 if r["metric"] in ("knn_preservation", "distance_spearman") else -1
            if h < 0.05:
                assert r["decision"] == ("better" if sign * r["mean_difference"] > 0 else "worse")
            else:
                pct = 100 * r["mde_relative"]
                shown = f"{pct:.1f}" if pct >= 0.1 else f"{pct:.2g}"
                assert r["decision"] == f"no difference detected (smallest detectable: {shown} %)"
    return checked


def test_every_number_recomputed_from_metrics_json(planted) -> None:
    root, v = planted
    assert recompute_and_check(root, v) == 6  # 2 contrasts with runs x 3 primary metrics


def test_planted_effect_is_better_and_nothing_else_gets_a_word(planted) -> None:
    _, v = planted
    recs = {(r["variant"], r["metric"]): r for r in v["datasets"][0]["records"]}
    hit = recs[("gated_headwise", "knn_preservation")]
    assert hit["decision"] == "better" and hit["holm_p"] < 0.05
    assert 0.05 / 0.5 * 0.8 < hit["relative_change"] < 0.05 / 0.5 * 1.2  # +10 % planted
    assert hit["permutation_p"] == pytest.approx(2 / 32)  # all 5 differences positive: 2 of 2^5 patterns
    for key, r in recs.items():
        if key != ("gated_headwise", "knn_preservation"):
            assert r["decision"].startswith("no difference detected (smallest detectable: "), key
    # secondary metrics are shown with their numbers but never given a word or a Holm p
    sec = v["datasets"][0]["secondary"]
    assert {r["metric"] for r in sec} == {"morans_i_corr"}
    assert all(r["decision"] is None and r["holm_p"] is None for r in sec)
    # a declared contrast without runs is listed, not silently dropped
    assert {
        "variant": "gated_elementwise",
        "reference": "linear",
        "reason": "no runs of gated_elementwise",
    } in (v["datasets"][0]["skipped"])


def test_two_sections_of_one_seed_are_never_two_pairs(tmp_path: Path) -> None:
    # One seed each, four sections that all move the same way: one pair, so no test at all.
    sections = {f"s{i}": 50 for i in range(4)}
    runs = [
        _write(
            tmp_path,
            "toy",
            name,
            0,
            {s: {"knn_preservation": 0.5 + shift + 0.01 * i} for i, s in enumerate(sections)},
            sections,
        )
        for name, shift in (("linear", 0.0), ("gated_headwise", 0.1))
    ]
    fam = V.Family(contrasts=(("gated_headwise", "linear"),), primary_metrics=("knn_preservation",))
    (r,) = V.build([load_run(p) for p in runs], fam)["datasets"][0]["records"]
    assert r["n"] == 1 and r["units"] == [0]
    assert r["p_value"] is None and r["holm_p"] is None and r["decision"] == "no test (n = 1 < 2)"


def _peer_fixture(root: Path, n_sections: int) -> list[Path]:
    sections = {f"s{i}": 40 + i for i in range(n_sections)}
    runs = []
    for seed in (0, 1, 2):
        runs.append(
            _write(
                root,
                "toy",
                "linear",
                seed,
                {s: {"knn_preservation": 0.5 + 0.1 * seed + 0.01 * i} for i, s in enumerate(sections)},
                sections,
            )
        )
    runs.append(
        _write(
            root,
            "toy",
            "peer_knn",
            0,
            {s: {"knn_preservation": 0.3 + 0.02 * i * i} for i, s in enumerate(sections)},
            sections,
        )
    )
    return runs


def test_a_peer_with_two_test_sections_is_too_few_to_test(tmp_path: Path) -> None:
    fam = V.Family(contrasts=(), primary_metrics=("knn_preservation",))
    v = V.build([load_run(p) for p in _peer_fixture(tmp_path, 2)], fam)
    (r,) = v["datasets"][0]["peers"]
    assert r["decision"] == "too few sections to test (2 < 5)"
    assert r["p_value"] is None and r["permutation_p"] is None and r["holm_p"] is None
    # the model's value per section is its mean over seeds 0..2 (0.5 + 0.1 + 0.01 i), the peer's its own
    np.testing.assert_allclose(r["variant_values"], [0.6, 0.61])
    np.testing.assert_allclose(np.subtract(r["variant_values"], r["reference_values"]), [0.3, 0.29])


def test_a_peer_with_six_sections_is_tested_per_section(tmp_path: Path) -> None:
    fam = V.Family(contrasts=(), primary_metrics=("knn_preservation",))
    v = V.build([load_run(p) for p in _peer_fixture(tmp_path, 6)], fam)
    (r,) = v["datasets"][0]["peers"]
    d = np.array([0.6 + 0.01 * i - (0.3 + 0.02 * i * i) for i in range(6)])
    assert r["n"] == 6 and r["units"] == [f"s{i}" for i in range(6)]
    assert r["p_value"] == pytest.approx(_t_p(d)) and r["permutation_p"] == pytest.approx(_perm_p(d))
    assert r["holm_p"] == pytest.approx(r["p_value"])  # a family of one


@pytest.mark.parametrize(
    "lo,hi,interval,mark",
    [
        (-15.0, -10.0, (-0.20, -0.12), "met"),  # inside the range, excludes 0
        (-15.0, -10.0, (-0.40, -0.30), "met"),  # beyond the range in the expected direction
        (-15.0, -10.0, (-0.12, 0.02), "inconclusive"),  # overlaps both 0 and the range
        (-15.0, -10.0, (-0.05, 0.03), "not met"),  # rules the expected change out
        (5.0, 10.0, (-0.08, -0.01), "not met"),  # the wrong way
        (None, None, (0.01, 0.03), "met"),  # "up"
        (None, None, (-0.01, 0.03), "inconclusive"),
        (5.0, 10.0, (0.0, 0.0), "not met"),  # no change on any seed (a zero bound is a bound, not missing)
        (None, -0.0, (-0.03, -0.01), "met"),  # "down" (joint_consistency_error)
        (None, -0.0, (-0.03, 0.01), "inconclusive"),
        (None, -0.0, (0.01, 0.03), "not met"),
    ],
)
def test_expectation_marks(lo, hi, interval, mark) -> None:
    assert claims.expectation_mark(interval[0], interval[1], lo, hi) == mark


def test_config_runs_the_package_default_family() -> None:
    """config.yaml declares no family of its own (the package's defaults are the one copy) and runs every
    variant the default contrasts name."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    assert "verdict" not in cfg
    assert set(v for pair in V.DEFAULT_CONTRASTS for v in pair) <= set(cfg["variants"])


def test_family_parse_and_verdict_file_errors(tmp_path: Path) -> None:
    fam = V.Family.parse(["a:b", "c:b"], ["knn_preservation"])
    assert fam.contrasts == (("a", "b"), ("c", "b")) and fam.primary_metrics == ("knn_preservation",)
    assert V.Family.parse(None, None) == V.Family()
    with pytest.raises(V.VerdictError, match="not VARIANT:REFERENCE"):
        V.Family.parse(["a-b"], None)
    with pytest.raises(V.VerdictError, match="verdict.json: not found"):
        V.read(tmp_path)
    (tmp_path / "verdict.json").write_text('{"schema": "other"}')
    with pytest.raises(V.VerdictError, match="field 'schema'"):
        V.read(tmp_path)


@pytest.mark.workflow
def test_workflow_passes_the_declared_family_and_rejects_unknown_variants(tmp_path: Path) -> None:
    from test_workflow import make_copy, snakemake, write_config

    repo = make_copy(tmp_path)
    good = write_config(
        repo,
        "good.yaml",
        lambda c: c.update(
            verdict={"contrasts": [["gated_headwise", "linear"]], "primary_metrics": ["knn_preservation"]}
        ),
    )
    proc = snakemake(repo, "-n", "-p", "--cores", "1", "--configfile", good)
    assert (
        "--out results/verdict.json --contrasts gated_headwise:linear --primary-metrics knn_preservation"
        in (proc.stdout)
    )
    bad = write_config(
        repo, "bad.yaml", lambda c: c.update(verdict={"contrasts": [["gated_headwise", "softmax"]]})
    )
    proc = snakemake(repo, "-n", "--cores", "1", "--configfile", bad, check=False)
    assert proc.returncode != 0
    assert "verdict.contrasts has ['gated_headwise', 'softmax'], but 'softmax' is not a key of variants" in (
        proc.stdout + proc.stderr
    )


# ------------------------------------------------------------------------------------------------------
# cross-validation folds and the power plan


def _fold_run(root: Path, variant: str, seed: int, fold: int, values: dict[str, float], walls: float) -> Path:
    run = _write(root, f"toy_fold{fold}", variant, seed, {s: {"knn_preservation": v} for s, v in values.items()},
                 {s: 10 * (i + 1) for i, s in enumerate(values)})
    m = json.loads((run / "eval" / "metrics.json").read_text())
    m["fold"] = {"dataset": "toy", "index": fold, "of": 2}
    (run / "eval" / "metrics.json").write_text(json.dumps(m))
    (run / "train").mkdir()
    (run / "train" / "train_summary.json").write_text(json.dumps({"wall_time_s": walls}))
    return run


def test_folds_pool_into_one_observation_per_seed_weighted_by_cells(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    runs, expected = [], {}
    for variant, shift in (("linear", 0.0), ("gated_headwise", 0.02)):
        for seed in range(4):
            a = {"s0": 0.5 + shift + 0.01 * rng.normal(), "s1": 0.4 + shift}  # fold 1 tests s0, s1
            b = {"s2": 0.3 + shift + 0.01 * rng.normal()}  # fold 2 tests s2
            runs += [_fold_run(tmp_path, variant, seed, 1, a, 60.0), _fold_run(tmp_path, variant, seed, 2, b, 90.0)]
            # cells: s0 10, s1 20 (fold 1), s2 10 (fold 2)
            expected[(variant, seed)] = (10 * a["s0"] + 20 * a["s1"] + 10 * b["s2"]) / 40
    fam = V.Family(contrasts=(("gated_headwise", "linear"),), primary_metrics=("knn_preservation",))
    v = V.build([load_run(p) for p in runs], fam)
    (ds,) = v["datasets"]
    assert ds["dataset"] == "toy" and ds["seeds"] == {"linear": [0, 1, 2, 3], "gated_headwise": [0, 1, 2, 3]}
    (r,) = ds["records"]
    assert r["n"] == 4 and r["units"] == [0, 1, 2, 3]  # four seeds, not eight folds
    assert r["variant_values"] == pytest.approx([expected[("gated_headwise", s)] for s in range(4)])
    assert r["reference_values"] == pytest.approx([expected[("linear", s)] for s in range(4)])
    (plan,) = ds["power_plan"]
    # training minutes per seed: (60 + 90) s per variant, two variants
    assert plan["train_minutes_per_seed"] == pytest.approx(2 * 150 / 60)
    n = plan["seeds_needed"]
    effect = 0.05 * abs(r["reference_mean"])
    alpha = fam.alpha / r["family_size"]
    from alphastomics.analysis.stats import min_detectable_effect

    assert min_detectable_effect(r["sd_difference"], n, alpha=alpha) <= effect
    assert n == 2 or min_detectable_effect(r["sd_difference"], n - 1, alpha=alpha) > effect
    assert plan["train_minutes"] == pytest.approx(n * plan["train_minutes_per_seed"])


def test_a_seed_missing_a_fold_is_an_error_naming_it(tmp_path: Path) -> None:
    runs = [_fold_run(tmp_path, "linear", 0, 1, {"s0": 0.5}, 1.0)]
    with pytest.raises(Exception, match=r"folds \[1\] of 2 \(missing \[2\]\)"):
        V.build([load_run(p) for p in runs])


# ------------------------------------------------------------------------------------------------------
# across tissues: every contrast on every data set, pooled over the real tissues


MANIFESTS = {
    "bdtnp": {"dataset": "bdtnp", "source": "bdtnp", "cell_types": None},
    "synthetic": {"dataset": "synthetic", "source": "synthetic", "cell_types": ["a", "b"]},
    "starmap": {"dataset": "starmap", "source": "h5ad", "cell_types": ["a", "b", "c"]},
    # cross-validated: the folds' manifests name the data set they pool into
    "mop_fold1": {"dataset": "mop_fold1", "source": "h5ad", "cell_types": None,
                  "fold": {"dataset": "mop", "index": 1, "of": 2}},
    "mop_fold2": {"dataset": "mop_fold2", "source": "h5ad", "cell_types": None,
                  "fold": {"dataset": "mop", "index": 2, "of": 2}},
}


def _tissue(root: Path, dataset: str, effect: float, noise: float, seed: int,
            types: bool = True) -> list[Path]:
    """linear and gated_headwise on five seeds: headwise = linear x (1 + effect) + noise on kNN preservation;
    with ``types`` also a neighbourhood ARI."""
    rng = np.random.default_rng(seed)
    runs = []
    for s in SEEDS:
        base = {"knn_preservation": 0.4 + 0.02 * rng.normal(), "distance_spearman": 0.8}
        if types:
            base["neighborhood_ari"] = 0.3
        head = dict(base, knn_preservation=base["knn_preservation"] * (1 + effect) + noise * rng.normal())
        if types:
            head["neighborhood_ari"] = 0.3 + 0.01 * rng.normal()
        for variant, vals in (("linear", base), ("gated_headwise", head)):
            runs.append(_write(root, dataset, variant, s, {"s0": vals}, {"s0": 100}))
    return runs


TISSUE_FAMILY = V.Family(contrasts=(("gated_headwise", "linear"),),
                         primary_metrics=("knn_preservation", "distance_spearman", "neighborhood_ari"))


@pytest.fixture(scope="module")
def tissues(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("tissues")
    runs = (_tissue(root, "bdtnp", 0.10, 0.004, 1, types=False) + _tissue(root, "synthetic", 0.0, 0.004, 2)
            + _tissue(root, "starmap", 0.05, 0.01, 3) + _tissue(root, "mop", 0.02, 0.01, 4, types=False))
    return V.build([load_run(p) for p in runs], TISSUE_FAMILY, manifests=MANIFESTS)


def _entry(v: dict, metric: str) -> dict:
    return next(e for e in v["across_tissues"]["contrasts"] if e["metric"] == metric)


def test_each_data_set_is_labelled_by_kind_and_cell_types(tissues) -> None:
    sets = {d["dataset"]: d for d in tissues["across_tissues"]["datasets"]}
    order = [d["dataset"] for d in tissues["across_tissues"]["datasets"]]
    assert order == ["bdtnp", "synthetic", "mop", "starmap"]
    assert {k: d["kind"] for k, d in sets.items()} == {
        "bdtnp": "real, cut sections", "synthetic": "synthetic", "mop": "real sections",
        "starmap": "real sections"}
    assert sets["mop"]["cell_types"] is False and sets["starmap"]["cell_types"] is True
    ds = {d["dataset"]: d for d in tissues["datasets"]}
    # no cell types: the cell-type metrics are said once, as not computed, and why
    assert ds["mop"]["not_computed"] == [{"metrics": ["neighborhood_ari", "neighborhood_nmi"],
                                          "reason": V.NO_CELL_TYPES_WHY}]
    assert ds["starmap"]["not_computed"] == [] and ds["synthetic"]["not_computed"] == []
    skipped = [s for s in ds["mop"]["skipped"] if s.get("metric") == "neighborhood_ari"]
    assert [s["reason"] for s in skipped] == [V.NO_CELL_TYPES]
    rows = {r["dataset"]: r for r in _entry(tissues, "neighborhood_ari")["rows"]}
    assert rows["mop"]["status"] == rows["bdtnp"]["status"] == V.NO_CELL_TYPES
    assert rows["starmap"]["status"] == "tested"


def test_rows_are_the_per_data_set_records(tissues) -> None:
    e = _entry(tissues, "knn_preservation")
    assert [r["dataset"] for r in e["rows"]] == ["bdtnp", "synthetic", "mop", "starmap"]
    recs = {d["dataset"]: next(r for r in d["records"] if r["metric"] == "knn_preservation")
            for d in tissues["datasets"]}
    for row in e["rows"]:
        rec = recs[row["dataset"]]
        assert row["from"] == "this campaign" and row["n"] == 5
        for key in ("relative_change", "relative_ci_low", "relative_ci_high", "mde_relative", "decision"):
            assert row[key] == rec[key]
        se = rec["sd_difference"] / math.sqrt(5) / abs(rec["reference_mean"])
        assert row["relative_se"] == pytest.approx(se)
    assert {r["dataset"]: r["decision"] for r in e["rows"]}["bdtnp"] == "better"  # +10 % planted


def test_pooled_over_the_real_tissues_by_hand(tissues) -> None:
    e = _entry(tissues, "knn_preservation")
    p = e["pooled"]
    assert p["tissues"] == ["mop", "starmap"] and p["k"] == 2 and p["left_out"] == []
    real = [r for r in e["rows"] if r["kind"] == "real sections"]
    y = np.array([r["relative_change"] for r in real])
    v = np.array([r["relative_se"] ** 2 for r in real])
    w = 1 / v
    q = float((w * (y - (w * y).sum() / w.sum()) ** 2).sum())
    tau2 = max(0.0, (q - 1) / (w.sum() - (w ** 2).sum() / w.sum()))
    ws = 1 / (v + tau2)
    mean = float((ws * y).sum() / ws.sum())
    se = math.sqrt(1 / ws.sum())
    hksj = math.sqrt(float((ws * (y - mean) ** 2).sum()) / ws.sum())
    t1 = st.t.ppf(0.975, 1)
    assert p["relative_change"] == pytest.approx(mean) and p["tau2"] == pytest.approx(tau2)
    assert (p["dl_ci_low"], p["dl_ci_high"]) == pytest.approx((mean - 1.959964 * se, mean + 1.959964 * se))
    assert (p["hksj_ci_low"], p["hksj_ci_high"]) == pytest.approx((mean - t1 * hksj, mean + t1 * hksj))
    used = max(se, hksj)
    assert (p["relative_ci_low"], p["relative_ci_high"]) == pytest.approx((mean - t1 * used,
                                                                            mean + t1 * used))
    assert p["i2"] == pytest.approx(max(0.0, (q - 1) / q)) and p["q"] == pytest.approx(q)
    # Holm over the pooled estimates of 2+ tissues: knn_preservation only (distance_spearman: the same on
    # both variants of every seed, no spread, nothing to pool; neighborhood_ari: one tissue)
    assert p["family_size"] == 1 and p["holm_p"] == pytest.approx(p["p_value"])
    assert p["decision"].startswith("no difference detected (smallest detectable: ")  # 2 tissues, t with 1 df
    assert p["mde_relative"] == pytest.approx(stats_mde(used * math.sqrt(2), 2, alpha=0.05))
    # the synthetic and the slab-cut data sets are never in it
    assert set(p["weights"]) == {"mop", "starmap"}
    spearman = _entry(tissues, "distance_spearman")["pooled"]
    assert spearman["k"] == 0 and {x["dataset"] for x in spearman["left_out"]} == {"mop", "starmap"}
    ari = _entry(tissues, "neighborhood_ari")["pooled"]  # only STARmap has cell types: its own record
    assert ari["k"] == 1 and ari["tissues"] == ["starmap"] and "one real tissue (starmap)" in ari["note"]
    assert ari["left_out"] == [{"dataset": "mop", "reason": V.NO_CELL_TYPES}]


def stats_mde(sd: float, n: int, alpha: float) -> float:
    from alphastomics.analysis.stats import min_detectable_effect

    return min_detectable_effect(sd, n, alpha=alpha)


def test_a_single_real_tissue_is_its_own_estimate(tmp_path: Path) -> None:
    runs = (_tissue(tmp_path, "starmap", 0.05, 0.01, 3)
            + _tissue(tmp_path, "bdtnp", 0.1, 0.004, 1, types=False))
    v = V.build([load_run(p) for p in runs], TISSUE_FAMILY, manifests=MANIFESTS)
    e = _entry(v, "knn_preservation")
    row = next(r for r in e["rows"] if r["dataset"] == "starmap")
    p = e["pooled"]
    assert p["k"] == 1 and p["tissues"] == ["starmap"]
    for key in ("relative_change", "relative_ci_low", "relative_ci_high", "mde_relative", "decision"):
        assert p[key] == row[key]
    assert "nothing pooled" in p["note"] and "tau2" not in p


def test_other_campaigns_join_and_a_missing_one_is_a_row(tmp_path: Path, tissues) -> None:
    other = tmp_path / "results" / "verdict.json"
    V.write(tissues, other)  # a campaign that ran bdtnp, synthetic, mop and starmap
    runs = _tissue(tmp_path / "tissues", "mop", 0.2, 0.01, 9, types=False)
    missing = (tmp_path / "results" / "tissues" / "verdict.json").as_posix()
    others = V.read_others([other, missing])
    assert others[1] == (missing, None)
    v = V.build([load_run(p) for p in runs], TISSUE_FAMILY, manifests=MANIFESTS, others=others)
    at = v["across_tissues"]
    assert at["not_run"] == [{"from": missing, "message": f"not run here: {missing} does not exist; "
                              "run `make tissues`"}]
    assert V.not_run_message("out/verdict.json") == (
        "not run here: out/verdict.json does not exist; run the campaign whose report_dir is out")
    assert V.not_run_message("results/verdict.json") == (
        "not run here: results/verdict.json does not exist; run `make run`")
    assert V.not_run_message("results/tissues/verdict.json").endswith("run `make tissues`")
    rows = {r["dataset"]: r for r in _entry(v, "knn_preservation")["rows"]}
    assert list(rows) == ["bdtnp", "synthetic", "mop", "starmap"]
    assert rows["mop"]["from"] == "this campaign" and rows["starmap"]["from"] == other.as_posix()
    # this campaign's mop (+20 %), not the other's (+2 %)
    assert rows["mop"]["relative_change"] == pytest.approx(0.2, abs=0.05)
    assert at["notes"] == [f"mop is also in {other.as_posix()}: this campaign's runs are shown"]
    assert _entry(v, "knn_preservation")["pooled"]["tissues"] == ["mop", "starmap"]


# ---------------------------------------------------------------------------------------------------------
# One JSON reader and one JSON cleaner (alphastomics/artifacts.py) behind every file the stages hand on


def test_every_json_reader_is_one_line_naming_the_file_the_line_and_the_fix(tmp_path: Path) -> None:
    from alphastomics.analysis.runs import RunError
    from alphastomics.artifacts import DataError, read_manifest
    from alphastomics.evaluation.evaluate import EvaluationError, read_train_summary

    bad = '{"a": 1,\n oops}\n'  # broken on line 2
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "manifest.json").write_text(bad)
    (proc / "cells.parquet").write_bytes(b"")
    run = tmp_path / "results" / "toy" / "linear" / "seed0"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "metrics.json").write_text(bad)
    (tmp_path / "train_summary.json").write_text(bad)
    (tmp_path / "verdict.json").write_text(bad)
    for call, error, path, fix in (
        (lambda: read_manifest(proc), DataError, proc / "manifest.json", "rerun preprocess"),
        (lambda: read_train_summary(tmp_path / "train_summary.json"), EvaluationError,
         tmp_path / "train_summary.json", "rerun train or drop --train-summary"),
        (lambda: load_run(run), RunError, run / "eval" / "metrics.json", "rerun the stage that wrote it"),
        (lambda: V.read(tmp_path / "verdict.json"), V.VerdictError, tmp_path / "verdict.json",
         "rerun the report stage"),
    ):
        with pytest.raises(error) as err:
            call()
        assert str(err.value) == f"{path}: not valid JSON (line 2); {fix}"


def test_verdict_file_is_strict_json_written_atomically(tmp_path: Path) -> None:
    from alphastomics.artifacts import json_safe

    value = {"a": np.float32(1.5), "b": float("nan"), "c": (np.int64(2), -np.inf), "d": np.bool_(True),
             "e": np.array(3.0)}
    assert json_safe(value) == {"a": 1.5, "b": None, "c": [2, None], "d": True, "e": 3.0}
    out = V.write(json_safe(value), tmp_path / "sub" / "verdict.json")
    assert json.loads(out.read_text()) == json_safe(value) and out.read_text().endswith("\n")
    assert [p.name for p in out.parent.iterdir()] == ["verdict.json"]  # no temporary file left
    with pytest.raises(ValueError):  # NaN is not JSON: refused, and the old file stays whole
        V.write({"x": math.nan}, out)
    assert json.loads(out.read_text()) == json_safe(value) and [p.name for p in out.parent.iterdir()] == [
        "verdict.json"]
