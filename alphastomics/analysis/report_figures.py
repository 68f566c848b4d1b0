"""Figures of the comparison report (``alphastomics.analysis.report``): matplotlib -> PNG data URIs, so the page
needs no network. ``fig_forest`` draws one data set's verdict (``verdict.json``); every other ``fig_*`` takes
one data set's runs and returns a data URI, or None when nothing was measured for it."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pandas as pd

from alphastomics.analysis.claims import SINK_THRESHOLD
from alphastomics.analysis.claims import sink_share as _sink_share
from alphastomics.analysis.runs import DatasetView, Run, _is_num, direction

NOT_MEASURED = "not measured"


def _best(view: DatasetView, metric: str, groups: dict[str, list[Run]]) -> tuple[str, float] | None:
    """The group with the best mean of ``metric``: which runs the illustrative figures show (never a test)."""
    sign = direction(metric)
    scores = {}
    for name, runs in groups.items():
        vals = [v for v in (r.value(metric) for r in runs) if np.isfinite(v)]
        if vals:
            scores[name] = float(np.mean(vals))
    if not scores or sign is None:
        return None
    name = max(scores, key=lambda k: sign * scores[k])
    return name, scores[name]


def fig_forest(ds: dict[str, Any], primary: list[str]) -> str | None:
    """One data set's verdict: rows = declared contrasts, one panel per primary metric; point = relative
    change of the mean paired difference, bar = its 95 % interval, filled when the Holm-adjusted p < alpha;
    every panel is oriented so that right = better (the x label says which way the metric goes)."""
    recs = ds["records"]
    metrics = [m for m in primary if any(r["metric"] == m for r in recs)]
    if not metrics:
        return None
    contrasts = list(dict.fromkeys((r["variant"], r["reference"]) for r in recs))
    plt = _plt()
    fig, axs = plt.subplots(
        1, len(metrics), figsize=(2.4 + 2.9 * len(metrics), 1.3 + 0.45 * len(contrasts)), sharey=True,
        squeeze=False, layout="constrained",
    )
    for ax, m in zip(axs[0], metrics):
        sign = direction(m) or 1
        better = "higher is better \u2192" if sign == 1 else "\u2190 lower is better"
        for y, c in enumerate(contrasts):
            r = next((x for x in recs if (x["variant"], x["reference"]) == c and x["metric"] == m), None)
            if r is None or r.get("relative_change") is None:
                continue
            pt = 100 * r["relative_change"]
            if r.get("relative_ci_low") is not None:
                lo, hi = 100 * r["relative_ci_low"], 100 * r["relative_ci_high"]
                ax.plot([lo, hi], [y, y], color="#3a78b8", linewidth=1.6)
            sig = r.get("decision") in ("better", "worse")
            colour = "#1e7b34" if r.get("decision") == "better" else "#b3261e" if sig else "#3a78b8"
            ax.plot(pt, y, "o", markersize=7, markeredgecolor=colour, markeredgewidth=1.5,
                    markerfacecolor=colour if sig else "white")
        ax.axvline(0, color="grey", linewidth=0.8)
        ax.set_title(m, fontsize=9)
        ax.set_xlabel(f"relative change (%)\n{better}", fontsize=8)
        ax.tick_params(labelsize=8)
    axs[0, 0].set_yticks(range(len(contrasts)), [f"{a} vs {b}" for a, b in contrasts], fontsize=8)
    axs[0, 0].set_ylim(len(contrasts) - 0.5, -0.5)
    fig.suptitle(
        f"{ds['dataset']}: filled = Holm-adjusted p < 0.05, open = no difference detected", fontsize=9
    )
    return _png(fig)

def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _curve(runs: list[Run], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Steps, mean, min, max of ``key`` over seeds, on the steps every seed logged."""
    series = []
    for r in runs:
        pts = {
            int(e["step"]): float(e[key])
            for e in r.train_log
            if _is_num(e.get(key))
            and "step" in e
            and not e.get("nonfinite")  # skipped steps are not the curve
        }
        if pts:
            series.append(pts)
    if not series:
        return None
    steps = sorted(set.intersection(*(set(s) for s in series)))
    if not steps:
        return None
    y = np.array([[s[t] for t in steps] for s in series])
    # Per-batch training losses are noisy over thousands of steps; a short moving average (1/40 of the
    # curve, per seed) shows the trend without shifting it.
    w = max(1, len(steps) // 40)
    if w > 1:
        y = np.stack([pd.Series(row).rolling(w, center=True, min_periods=1).mean().to_numpy() for row in y])
    return np.array(steps), y.mean(0), y.min(0), y.max(0)


def fig_loss(view: DatasetView) -> str | None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    drawn = False
    for ax, key, title in zip(axes, ("loss", "val_loss"), ("training loss", "validation loss")):
        for name, runs in view.variants.items():
            c = _curve(runs, key)
            if c is None:
                continue
            steps, mean, lo, hi = c
            (line,) = ax.plot(steps, mean, label=name)
            ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
            drawn = True
        ax.set(title=f"{title} (mean, band = min..max over seeds)", xlabel="step", yscale="log")
        if ax.lines:
            ax.legend(fontsize=8)
    return _png(fig) if drawn else (plt.close(fig) or None)


def _samples(run: Run) -> pd.DataFrame | None:
    """The run's samples, its first sampling draw only (one row per cell)."""
    path = run.path / "samples.parquet"
    if not path.is_file():
        return None
    f = pd.read_parquet(path)
    return f[f["draw"] == 0] if "draw" in f.columns else f


def fig_positions(view: DatasetView, primary: str) -> tuple[str | None, str]:
    """True vs predicted coordinates of one held-out section (baseline, best variant, best peer), Procrustes
    aligned to the truth; 3D data projected on the two main axes of the true section."""
    from alphastomics.evaluation.metrics import procrustes_align

    panels: list[tuple[str, Run]] = []
    base = view.variants.get(view.baseline)
    if base:
        panels.append((view.baseline, base[0]))
    best = _best(view, primary, {k: v for k, v in view.variants.items() if k != view.baseline})
    if best:
        panels.append((best[0], view.variants[best[0]][0]))
    peer = _best(view, primary, view.peers) if view.peers else None
    if peer:
        panels.append((peer[0], view.peers[peer[0]][0]))
    frames = [(n, _samples(r)) for n, r in panels]
    frames = [(n, f) for n, f in frames if f is not None and len(f)]
    if not frames:
        return None, NOT_MEASURED
    section = sorted(frames[0][1]["section"].astype(str).unique())[0]
    ref = frames[0][1][frames[0][1]["section"].astype(str) == section].sort_values("cell_id")
    true = ref[["x_true", "y_true", "z_true"]].to_numpy(float)
    true = true - true.mean(0)
    _, _, vt = np.linalg.svd(true, full_matrices=False)
    axes2 = vt[:2].T  # the two main axes of the true section (for 2D data: its own plane)
    colour, what = _colours(ref)
    plt = _plt()
    fig, axs = plt.subplots(1, len(frames) + 1, figsize=(3.6 * (len(frames) + 1), 3.6), squeeze=False)
    kw = dict(c=colour, s=6, cmap="tab20" if what == "cell type" else "viridis", linewidths=0)
    axs[0, 0].scatter(*(true @ axes2).T, **kw)
    axs[0, 0].set_title(f"true ({section})")
    for ax, (name, f) in zip(axs[0, 1:], frames):
        f = f[f["section"].astype(str) == section].set_index("cell_id").reindex(ref["cell_id"])
        pred = f[["x_pred", "y_pred", "z_pred"]].to_numpy(float)
        if np.isfinite(pred).all():
            aligned, _ = procrustes_align(pred, true)
            ax.scatter(*(aligned @ axes2).T, **kw)
        ax.set_title(f"{name} (predicted)")
    for ax in axs[0]:
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    return _png(fig), f"section {section}, coloured by {what}"


def _colours(frame: pd.DataFrame) -> tuple[np.ndarray, str]:
    if "cell_type" in frame and frame["cell_type"].notna().any():
        return pd.Categorical(frame["cell_type"].astype(str)).codes, "cell type"
    if "expression_true" in frame and frame["expression_true"].notna().all():
        expr = np.stack(frame["expression_true"].to_numpy())
        g = int(np.argmax(expr.var(0)))
        return expr[:, g], f"the most variable gene (column {g})"
    xyz = frame[["x_true", "y_true", "z_true"]].to_numpy(float)
    xyz = xyz - xyz.mean(0)
    main = np.linalg.svd(xyz, full_matrices=False)[2][0]
    return xyz @ main, "true position along the main axis (no cell types or expression in the samples)"


def fig_gates(view: DatasetView) -> str | None:
    hists = {}
    for name, runs in view.variants.items():
        layers: dict[int, np.ndarray] = {}
        bins = None
        for r in runs:
            for i, e in enumerate(((r.metrics or {}).get("diagnostics") or {}).get("gate") or []):
                if isinstance(e, dict) and e.get("counts") and e.get("bins"):
                    layer = int(e.get("layer", i))
                    layers[layer] = layers.get(layer, 0) + np.asarray(e["counts"], float)
                    bins = np.asarray(e["bins"], float)
        if layers:
            hists[name] = (bins, layers)
    if not hists:
        return None
    plt = _plt()
    fig, axs = plt.subplots(1, len(hists), figsize=(3.8 * len(hists), 3.2), squeeze=False)
    for ax, (name, (bins, layers)) in zip(axs[0], hists.items()):
        centres = (bins[:-1] + bins[1:]) / 2
        for layer, counts in sorted(layers.items()):
            ax.plot(centres, counts / max(counts.sum(), 1), marker=".", label=f"layer {layer}")
        ax.set(title=name, xlabel="gate score", ylabel="fraction", xlim=(0, 1))
        ax.legend(fontsize=7)
    return _png(fig)


def fig_sinks(view: DatasetView) -> str | None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for name, runs in view.variants.items():
        shares = [s for s in (_sink_share(r) for r in runs) if s]
        if shares:
            n = min(len(s) for s in shares)
            ax.plot(range(n), np.nanmean([s[:n] for s in shares], axis=0), marker="o", label=name)
    if not ax.lines:
        plt.close(fig)
        return None
    ax.axhline(SINK_THRESHOLD, color="grey", linestyle="--", linewidth=1, label="sink threshold")
    ax.set(xlabel="layer", ylabel="share to most-attended cell", yscale="log")
    ax.xaxis.get_major_locator().set_params(integer=True)  # layers are whole numbers
    ax.legend(fontsize=8)
    return _png(fig)


def _attention_map(run: Run) -> tuple[np.ndarray, str] | None:
    """One head of one layer on one section from evaluate's ``attention_map.npz`` (docs/architecture.md), cells
    ordered along the main axis of their positions so that local attention shows as a band on the diagonal."""
    for npz in sorted((run.path / "eval").glob("*.npz")):
        try:
            with np.load(npz, allow_pickle=False) as data:
                keys = sorted(data.files, key=lambda k: "att" not in k.lower())  # "attn" first
                a = next(
                    (data[k] for k in keys if data[k].ndim >= 2 and data[k].shape[-1] == data[k].shape[-2]),
                    None,
                )
                if a is None:
                    continue
                while a.ndim > 2:
                    a = a[0]
                a = np.asarray(a, float)
                where = ", ".join(f"{k} {data[k]}" for k in ("section", "layer", "head") if k in data.files)
                pos = data["positions"] if "positions" in data.files else None
        except ValueError:  # object arrays (pickles) are never loaded
            continue
        if pos is not None and len(pos) == len(a):
            c = np.asarray(pos, float) - np.mean(pos, axis=0)
            order = np.argsort(c @ np.linalg.svd(c, full_matrices=False)[2][0])
            a = a[np.ix_(order, order)]
            where += ", cells ordered along the main axis"
        return a, where or "first array"
    return None


def fig_attention(view: DatasetView, primary: str) -> str | None:
    """Each run's strongest-sink head (the worst head on the first held-out section: evaluate's
    attention_map.npz) of a gated variant beside the ungated softmax control, the gate the only difference
    (the claims table's sink row); without the control, the baseline beside the best variant."""
    gated = [v for v in ("gated_headwise", "gated_elementwise", "gated_headwise_no_qknorm") if v in view.variants]
    if "softmax" in view.variants and gated:
        picks = ["softmax", gated[0]]
    else:
        picks = [view.baseline] if view.baseline in view.variants else []
        best = _best(view, primary, {k: v for k, v in view.variants.items() if k != view.baseline})
        if best:
            picks.append(best[0])
    maps = [(n, _attention_map(view.variants[n][0])) for n in picks]
    maps = [(n, a) for n, a in maps if a is not None]
    if not maps:
        return None
    plt = _plt()
    fig, axs = plt.subplots(1, len(maps), figsize=(4.8 * len(maps), 3.8), squeeze=False, layout="constrained")
    for ax, (name, (a, where)) in zip(axs[0], maps):
        im = ax.imshow(a, cmap="magma", interpolation="nearest")
        ax.set(xlabel="key cell", ylabel="query cell")
        ax.set_title(f"{name}\n{where}", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046)
    return _png(fig)


