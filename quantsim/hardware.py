"""Glue between a quantization run and hwmodel: simulate, summarise, merge, plot."""
from __future__ import annotations

import pandas as pd

from hwmodel.simulate import HwResult, simulate_graph


def simulate(graph, taps, accel, toggle_images: int = 1, mac_form: str = "max", images=None) -> HwResult:
    """Hardware rows for the program; `taps` are integer_ref's outputs (or run them on `images`)."""
    if taps is None:
        from .pipeline import integer_taps

        taps = integer_taps(graph, images)
    return simulate_graph(graph, taps, accel, toggle_images=toggle_images, mac_form=mac_form)


def energy_summary(hw: HwResult, w8: HwResult, fp32: bool = False) -> dict:
    """Energy totals for summary.json: seed and detailed models, breakdown, ratios."""
    t, r = hw.totals, w8.totals
    out = {
        "accelerator": t["accelerator"], "dataflow": t["dataflow"], "array": f"{t['rows']}x{t['cols']}",
        "mac_form": t["mac_form"], "toggle_images": t["toggle_images"],
        "cycles": t["cycles"], "n_mac": t["n_mac"], "dram_bytes": t["dram_bytes"],
        "e_fp32_pj": t["e_fp32_pj"],
        "e_w8a8_pj": r["e_total_pj"], "e_w8a8_seed_pj": r["e_seed_pj"],
    }
    if fp32:  # the float model: only its reference energy is meaningful
        out.update(e_total_pj=t["e_fp32_pj"], e_seed_pj=t["e_fp32_pj"], energy_ratio_fp32=1.0,
                   energy_ratio_w8a8=t["e_fp32_pj"] / r["e_total_pj"])
        return out
    out.update({
        "e_total_pj": t["e_total_pj"], "e_mac_pj": t["e_mac_pj"], "e_sram_pj": t["e_sram_pj"],
        "e_dram_pj": t["e_dram_pj"],
        "e_seed_pj": t["e_seed_pj"], "e_seed_mac_pj": t["e_seed_mac_pj"], "e_seed_dram_pj": t["e_seed_dram_pj"],
        "energy_ratio_fp32": t["e_total_pj"] / t["e_fp32_pj"],
        "energy_ratio_w8a8": t["e_total_pj"] / r["e_total_pj"],
        "seed_ratio_w8a8": t["e_seed_pj"] / r["e_seed_pj"],
        "mult_toggles": t["mult_toggles"], "mult_toggles_signmag": t["mult_toggles_signmag"],
        "mult_toggles_offset": t["mult_toggles_offset"],
    })
    return out


def merge_rows(layers: pd.DataFrame, hw: HwResult) -> pd.DataFrame:
    """layers.csv: the quantization columns, then the hardware columns of the same node."""
    hw_df = pd.DataFrame(hw.rows)
    keep = [c for c in hw.columns if c in hw_df.columns and (c == "layer" or c not in layers.columns)]
    return layers.merge(hw_df[keep], on="layer", how="left")


def plot_energy(hw: HwResult, path_stem, title: str) -> None:
    from reports.plots import energy_breakdown

    df = pd.DataFrame(hw.rows)
    df = df[df["e_total_pj"] > 0]
    energy_breakdown(df, path_stem, title=title)
