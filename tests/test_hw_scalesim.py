"""hwmodel.mapping against SCALE-Sim 3.0.0's real reports (tests/fixtures/scalesim).

The fixtures were made by benchmarks/scalesim_compare.py (see the README there). Each
layer is mapped as SCALE-Sim sees it: the padded input extent, no padding, 8-bit words.

Agreement asserted, and the modelling differences, each explained and asserted:
- compute cycles: SCALE-Sim's "Total Cycles" is its last cycle index: ours minus one.
- SRAM ifmap and filter reads: equal.
- SRAM ofmap writes: equal for ws; for os SCALE-Sim adds R + C per fold to its count
  (systolic_compute_os.create_ofmap_demand_mat adds the fold's shape), which hwmodel keeps
  in ss_sram_wr_ofmap but not in its own sram_wr_ofmap (= M*N).
- DRAM ifmap and filter reads: within 5% (the same read-buffer model; we expect equality).
- DRAM ofmap writes: SCALE-Sim writes every fold's partial sums to DRAM (ceil(K/R) per
  output in ws) plus a few padding slots of partly filled write lines; hwmodel keeps
  partial sums in the ofmap SRAM when they fit (else spills them at acc_bits) and writes
  each output once. Asserted: SCALE-Sim = hwmodel's ss_dram_wr_ofmap within 0.1%, and
  hwmodel's dram_wr_ofmap = outputs (+ spilled partial sums).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from scalesim_compare import NETWORKS, read_report, topology_rows  # noqa: E402

from hwmodel.arch import load_accelerator  # noqa: E402
from hwmodel.mapping import map_conv  # noqa: E402

FIX = ROOT / "tests" / "fixtures" / "scalesim"
CASES = [(p, n) for p in ("scalesim-32x32-ws", "scalesim-32x32-os") for n in ("resnet18", "resnet20")]


def _load(preset, net):
    d = FIX / preset / net
    if not (d / "DETAILED_ACCESS_REPORT.csv").exists():
        pytest.skip(f"SCALE-Sim fixtures {d} absent (make them with "
                    f"benchmarks/scalesim_compare.py --write-fixtures)")
    return read_report(d / "COMPUTE_REPORT.csv"), read_report(d / "DETAILED_ACCESS_REPORT.csv")


@pytest.mark.parametrize("preset,net", CASES)
def test_layers_match_scalesim(preset, net):
    comp, acc = _load(preset, net)
    accel = load_accelerator(preset).with_dram_model("scalesim")
    topo = topology_rows(NETWORKS[net])
    assert len(comp) == len(acc) == len(topo)
    for (name, he, we, kh, kw, c, o, s), cr, ar in zip(topo, comp, acc):
        hw = map_conv((1, c, he, we), (o, c, kh, kw), accel, stride=(s, s))
        where = f"{net} {preset} {name}"
        assert cr["Total Cycles"] == hw["cycles"] - 1, where
        assert cr["Stall Cycles"] == 0, where
        assert hw["cycles"] == pytest.approx(cr["Total Cycles"], rel=0.01), where
        assert ar["SRAM IFMAP Reads"] == hw["sram_rd_ifmap"], where
        assert ar["SRAM Filter Reads"] == hw["sram_rd_filter"], where
        assert ar["SRAM OFMAP Writes"] == hw["ss_sram_wr_ofmap"], where
        outs = hw["gemm_m"] * hw["gemm_n"]
        if accel.dataflow == "os":
            assert hw["sram_wr_ofmap"] == outs
        assert hw["dram_rd_ifmap"] == pytest.approx(ar["DRAM IFMAP Reads"], rel=0.05), where
        assert hw["dram_rd_filter"] == pytest.approx(ar["DRAM Filter Reads"], rel=0.05), where
        assert ar["DRAM OFMAP Writes"] == pytest.approx(hw["ss_dram_wr_ofmap"], rel=1e-3), where
        spill = (hw["row_folds"] - 1) * outs if hw["psum_spill"] else 0
        assert hw["dram_wr_ofmap"] == outs + spill, where


@pytest.mark.parametrize("preset,net", CASES)
def test_dram_reads_exact(preset, net):
    """The read-buffer replay reproduces SCALE-Sim's DRAM read counts exactly."""
    comp, acc = _load(preset, net)
    accel = load_accelerator(preset).with_dram_model("scalesim")
    for (name, he, we, kh, kw, c, o, s), ar in zip(topology_rows(NETWORKS[net]), acc):
        hw = map_conv((1, c, he, we), (o, c, kh, kw), accel, stride=(s, s))
        assert (hw["dram_rd_ifmap"], hw["dram_rd_filter"]) == \
            (ar["DRAM IFMAP Reads"], ar["DRAM Filter Reads"]), f"{net} {preset} {name}"
