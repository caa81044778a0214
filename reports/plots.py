"""Report plots, each written as PNG and SVG through ``reports.io.save_figure_atomic``.

The functions take tables computed elsewhere and draw them; the only thing computed here
is the Pareto mask (``pareto_front``), which is what the frontier line shows.

Figures are built with ``matplotlib.figure.Figure`` directly, never through pyplot, so no
GUI backend is touched and no global figure state is kept: saving goes through the Agg
renderer (PNG) and the SVG backend, whatever the user's default backend is.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from reports.io import save_figure_atomic

__all__ = ["pareto_front", "energy_breakdown", "pareto", "width_map"]

_PARTS = (("e_mac_pj", "MAC"), ("e_sram_pj", "SRAM"), ("e_dram_pj", "DRAM"))
_MARKERS = "osD^vP*Xhp<>"

# the cost axes a Pareto plot can have: column -> (what it is, its units largest first, the base unit)
COSTS = {
    "e_total_pj": ("energy", ((1e9, "mJ"), (1e6, "µJ"), (1e3, "nJ")), "pJ"),
    "latency_us": ("latency", ((1e6, "s"), (1e3, "ms")), "µs"),
}


def _cost_unit(cost: str, largest: float) -> tuple[float, str]:
    """The unit an axis of `cost` values up to `largest` reads best in: (values per unit, name)."""
    _, units, base = COSTS[cost]
    for scale, unit in units:
        if largest >= scale:
            return scale, unit
    return 1.0, base


def _require(df: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KeyError(f"{what} needs columns {missing} (has {list(df.columns)})")


def pareto_front(points, acc: str = "top1", energy: str = "e_total_pj") -> np.ndarray:
    """Boolean mask of the non-dominated points: a point is dominated when another has
    energy <= and accuracy >=, at least one of them strictly. Equal points are all kept.
    Points with a NaN accuracy or energy are neither on the front nor dominate others."""
    a = np.asarray(points[acc], dtype=float)
    e = np.asarray(points[energy], dtype=float)
    ok = np.isfinite(a) & np.isfinite(e)
    # dom[j, i]: point j dominates point i
    dom = ((e[:, None] <= e[None, :]) & (a[:, None] >= a[None, :])
           & ((e[:, None] < e[None, :]) | (a[:, None] > a[None, :])))
    dom &= ok[:, None]
    return ok & ~dom.any(axis=0)


def energy_breakdown(rows: pd.DataFrame, path_stem: str | os.PathLike,
                     title: str | None = None) -> tuple[Path, Path]:
    """Stacked bars per layer: MAC, SRAM and DRAM energy (in pJ, drawn in the unit that reads best),
    in the rows' order."""
    _require(rows, ["layer"] + [c for c, _ in _PARTS], "energy_breakdown")
    n = len(rows)
    from matplotlib.figure import Figure  # deferred: importing matplotlib costs what only a plot needs

    fig = Figure(figsize=(max(6.0, 0.28 * n + 2.0), 4.5))
    ax = fig.add_subplot()
    x = np.arange(n)
    bottom = np.zeros(n)
    total = sum(rows[c].to_numpy(dtype=float) for c, _ in _PARTS)
    scale, unit = _cost_unit("e_total_pj", float(np.max(total)) if n else 0.0)
    for col, name in _PARTS:
        v = rows[col].to_numpy(dtype=float) / scale
        ax.bar(x, v, bottom=bottom, label=name, width=0.8)
        bottom += v
    ax.set_xticks(x)
    ax.set_xticklabels([str(l) for l in rows["layer"]], rotation=90, fontsize=7)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylabel(f"energy per image ({unit})")
    ax.set_title(title or "Energy per layer")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return save_figure_atomic(fig, path_stem)


def pareto(points: pd.DataFrame, path_stem: str | os.PathLike,
           fp32_top1: float | None = None, w8a8_cost: float | None = None,
           title: str | None = None, logx: bool | None = None, cost: str = "e_total_pj",
           reference: pd.DataFrame | None = None, reference_label: str = "reference") -> tuple[Path, Path]:
    """Accuracy against a cost per image, ``cost``: "e_total_pj" (energy, the default) or
    "latency_us": every point labelled, grouped by ``policy`` when that column is there, the
    Pareto frontier as a step line (the best accuracy reachable at or below each cost), FP32
    accuracy and the W8A8 point's cost (``w8a8_cost``, in the cost's own unit) as reference
    lines. ``logx=None`` picks a log cost axis when the costs span more than a factor of 20.
    ``reference``: another sweep's points (columns top1 and the cost), drawn faintly and
    unlabelled, with their frontier as a dashed step line "reference: <reference_label>"."""
    if cost not in COSTS:
        raise ValueError(f"pareto: cost {cost!r} is not one of {', '.join(COSTS)}")
    what = COSTS[cost][0]
    _require(points, ["label", "top1", cost], "pareto")
    pts = points.reset_index(drop=True)
    mask = pareto_front(pts, energy=cost)
    c_raw = pd.to_numeric(pts[cost], errors="coerce").to_numpy(dtype=float)
    if reference is not None:
        _require(reference, ["top1", cost], "pareto's reference")
        ref = reference.reset_index(drop=True)
        ref_mask = pareto_front(ref, energy=cost)
        ref_c = pd.to_numeric(ref[cost], errors="coerce").to_numpy(dtype=float)
        ref_a = pd.to_numeric(ref["top1"], errors="coerce").to_numpy(dtype=float)
    else:
        ref_c = np.array([], dtype=float)
    both = np.concatenate([c_raw, ref_c])  # one unit and one axis scale for both sweeps
    scale, unit = _cost_unit(cost, float(np.nanmax(both)) if np.isfinite(both).any() else 0.0)
    e = c_raw / scale  # drawn in the unit that reads best
    a = pts["top1"].to_numpy(dtype=float)

    from matplotlib.figure import Figure  # deferred: importing matplotlib costs what only a plot needs

    fig = Figure(figsize=(8.0, 5.5))
    ax = fig.add_subplot()
    if "policy" in pts.columns:
        groups = list(dict.fromkeys(pts["policy"].astype(str)))
        for i, g in enumerate(groups):
            sel = (pts["policy"].astype(str) == g).to_numpy()
            ax.scatter(e[sel], a[sel], marker=_MARKERS[i % len(_MARKERS)], s=36,
                       label=g, zorder=3)
    else:
        ax.scatter(e, a, s=36, zorder=3, label="points")
    for x, y, lab in zip(e, a, pts["label"].astype(str)):
        if np.isfinite(x) and np.isfinite(y):
            ax.annotate(lab, (x, y), xytext=(4, 3), textcoords="offset points", fontsize=7)
    if mask.any():
        order = np.argsort(e[mask], kind="stable")
        fe, fa = e[mask][order], a[mask][order]
        ax.step(fe, fa, where="post", color="black", lw=1.2, alpha=0.8,
                label="Pareto frontier", zorder=2)
        ax.scatter(fe, fa, s=90, facecolors="none", edgecolors="black", zorder=4)
    if reference is not None:
        ref_e = ref_c / scale
        # one colour of its own, long dashes: apart from the gray dashed FP32 line
        ax.scatter(ref_e, ref_a, s=28, color="tab:purple", alpha=0.3, zorder=1)
        if ref_mask.any():
            order = np.argsort(ref_e[ref_mask], kind="stable")
            ax.step(ref_e[ref_mask][order], ref_a[ref_mask][order], where="post", color="tab:purple",
                    ls=(0, (6, 3)), lw=1.3, alpha=0.8, label=f"reference: {reference_label}", zorder=1)
    if fp32_top1 is not None:
        ax.axhline(fp32_top1, color="tab:gray", ls="--", lw=1,
                   label=f"FP32 top-1 ({fp32_top1:.4g})")
    if w8a8_cost is not None:
        ax.axvline(w8a8_cost / scale, color="tab:red", ls=":", lw=1,
                   label=f"W8A8 {what} ({w8a8_cost / scale:.4g} {unit})")
    finite = both[np.isfinite(both) & (both > 0)] / scale
    if logx is None:
        logx = finite.size > 1 and finite.max() / finite.min() > 20
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(f"{what} per image ({unit})")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(title or f"Accuracy against {what}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save_figure_atomic(fig, path_stem)


def width_map(layers: pd.DataFrame, path_stem: str | os.PathLike,
              title: str | None = None) -> tuple[Path, Path]:
    """Per layer, top to bottom: weight and activation bits (left) beside the layer's share
    of the network's energy (right, column ``energy_share``, a fraction of 1)."""
    _require(layers, ["layer", "w_bits", "a_bits", "energy_share"], "width_map")
    n = len(layers)
    y = np.arange(n)
    names = [str(l) for l in layers["layer"]]
    from matplotlib.figure import Figure  # deferred: importing matplotlib costs what only a plot needs

    fig = Figure(figsize=(9.0, max(3.0, 0.22 * n + 1.5)))
    ax_b, ax_e = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [1, 1.3]})
    h = 0.4
    ax_b.barh(y - h / 2, layers["w_bits"].to_numpy(dtype=float), height=h, label="weights")
    ax_b.barh(y + h / 2, layers["a_bits"].to_numpy(dtype=float), height=h, label="activations")
    ax_b.set_yticks(y)
    ax_b.set_yticklabels(names, fontsize=7)
    ax_b.invert_yaxis()
    bits = np.concatenate([layers["w_bits"].to_numpy(dtype=float),
                           layers["a_bits"].to_numpy(dtype=float)])
    top = int(np.nanmax(bits)) if bits.size else 8
    ax_b.set_xticks(sorted(set(int(b) for b in bits if np.isfinite(b))) or [top])
    ax_b.set_xlim(0, top + 1)
    ax_b.set_xlabel("bits")
    ax_b.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2,
                frameon=False)
    ax_b.grid(axis="x", alpha=0.3)
    share = layers["energy_share"].to_numpy(dtype=float) * 100.0
    ax_e.barh(y, share, height=0.7, color="tab:green")
    ax_e.set_xlabel("share of energy (%)")
    ax_e.grid(axis="x", alpha=0.3)
    fig.suptitle(title or "Widths per layer and their share of energy")
    return save_figure_atomic(fig, path_stem)
