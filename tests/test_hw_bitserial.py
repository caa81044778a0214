"""Precision-scalable arrays: bit-serial (Stripes-style), cycles scale with the activation width;
bit-fusion (Bit Fusion-style), narrow widths fuse into more products per PE per cycle along K;
traffic is that of the bit-parallel array in both."""
from __future__ import annotations

import pytest
import torch

import quantsim
from hwmodel.arch import PRESET_DIR, load_accelerator
from hwmodel.dataflow import dataflow
from quantsim.quant.config import QuantConfig
from quantsim.zoo.models import load_model

MAC_OPS = ("conv2d", "linear")


@pytest.fixture(scope="module")
def programs(resnet20_checkpoint):
    model = load_model(str(resnet20_checkpoint), arch="cifar_resnet20").model
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return {b: quantsim.quantize(model, QuantConfig(w_bits=b, a_bits=b), x) for b in (4, 8)}


def _layers(prog, accel):
    return prog.simulate(accel).layers.set_index("layer")


def test_w4a4_takes_half_the_cycles_of_w8a8_on_the_bit_serial_array(programs):
    serial = {b: _layers(p, "bitserial-32x32-os") for b, p in programs.items()}
    parallel = {b: _layers(p, "scalesim-32x32-os") for b, p in programs.items()}
    mac = serial[8]["op"].isin(MAC_OPS)
    assert mac.sum() == 20  # ResNet-20: 19 convs (option-A shortcuts have none) and the linear
    # compute cycles (DRAM stalls aside: hwmodel.bandwidth, tests/test_hw_bandwidth.py)
    s4, s8 = serial[4].loc[mac, "compute_cycles"], serial[8].loc[mac, "compute_cycles"]
    assert (s4 * 2 == s8).all()
    # bit-serial at b_a bits = b_a x the bit-parallel array's cycles; the parallel array ignores width
    assert (serial[8].loc[mac, "compute_cycles"] == 8 * parallel[8].loc[mac, "compute_cycles"]).all()
    assert (parallel[4].loc[mac, "compute_cycles"] == parallel[8].loc[mac, "compute_cycles"]).all()
    # the vector unit's ops and every traffic column are those of the bit-parallel array
    vec = ~mac
    assert (serial[8].loc[vec, "compute_cycles"] == parallel[8].loc[vec, "compute_cycles"]).all()
    for col in ("dram_rd_ifmap_bytes", "dram_rd_filter_bytes", "dram_wr_ofmap_bytes", "sram_rd_ifmap"):
        assert (serial[4][col] == parallel[4][col]).all(), col


def _refused(tmp_path, preset: str, old: str, new: str, match: str) -> None:
    """The preset with `old` replaced by `new` is refused with a ValueError matching `match`."""
    doc = (PRESET_DIR / f"{preset}.toml").read_text()
    assert old in doc
    bad = tmp_path / "bad.toml"
    bad.write_text(doc.replace(old, new))
    with pytest.raises(ValueError, match=match):
        load_accelerator(bad)


def test_precision_keys_are_checked(tmp_path):
    _refused(tmp_path, "bitserial-32x32-os", 'precision = "bit-serial"', 'precision = "bit-analog"',
             "array.precision must be one of")
    _refused(tmp_path, "bitserial-32x32-os", 'precision = "bit-serial"', 'precision = "bit-parallel"',
             "serial_bits needs")
    a = load_accelerator("bitserial-32x32-os")
    assert (a.precision, a.serial_bits, a.cycle_steps(8), a.cycle_steps(3)) == ("bit-serial", 1, 8, 3)
    assert load_accelerator("scalesim-32x32-os").cycle_steps(8) == 1


def test_bit_fusion_fuses_narrow_widths_into_products_along_k(programs):
    """At W8A8 the fusion array is its bit-parallel twin in every row; at W4A4 each PE takes 4 terms
    of K per cycle, so a MAC layer's compute cycles are those of the GEMM with K/4 (derived from the
    row's shapes through the dataflow's fold counts), and every traffic column is unchanged."""
    fused = {b: _layers(p, "bitfusion-32x32-os") for b, p in programs.items()}
    parallel = {b: _layers(p, "scalesim-32x32-os") for b, p in programs.items()}
    cols = [c for c in parallel[8].columns if c != "dram_model"]
    assert fused[8][cols].equals(parallel[8][cols])
    accel = load_accelerator("bitfusion-32x32-os")
    df, R, C = dataflow(accel.dataflow), accel.rows, accel.cols
    mac = fused[4]["op"].isin(MAC_OPS)
    for name, r in fused[4][mac].iterrows():
        rf, cf, per_fold = df.fold_counts(int(r["gemm_m"]), -(-int(r["gemm_k"]) // 4), int(r["gemm_n"]), R, C)
        assert r["compute_cycles"] == r["groups"] * rf * cf * per_fold, name
        assert r["utilization"] == pytest.approx(r["n_mac"] / (r["compute_cycles"] * R * C * 4))
    total4, total8 = fused[4].loc[mac, "compute_cycles"].sum(), fused[8].loc[mac, "compute_cycles"].sum()
    assert total4 < total8 / 2  # the fill and drain of each fold do not shrink: not a full 4x on ResNet-20
    vec = ~mac
    assert (fused[4].loc[vec, "compute_cycles"] == parallel[4].loc[vec, "compute_cycles"]).all()
    for col in ("dram_rd_ifmap_bytes", "dram_rd_filter_bytes", "dram_wr_ofmap_bytes", "sram_rd_ifmap",
                "sram_rd_filter", "e_dram_pj"):
        assert (fused[4][col] == parallel[4][col]).all(), col


def test_bit_fusion_lanes_and_keys(tmp_path):
    a = load_accelerator("bitfusion-32x32-os")
    # (w, a) -> products per PE per cycle; widths round up to 2, 4, 8; wider than 8: temporal steps
    lanes = {(w, x): (a.fusion_lanes(x, w), a.cycle_steps(x, w))
             for w, x in ((8, 8), (4, 8), (8, 4), (4, 4), (2, 2), (2, 8), (3, 5), (1, 1), (16, 8), (16, 16))}
    assert lanes == {(8, 8): (1, 1), (4, 8): (2, 1), (8, 4): (2, 1), (4, 4): (4, 1), (2, 2): (16, 1),
                     (2, 8): (4, 1), (3, 5): (2, 1), (1, 1): (16, 1), (16, 8): (1, 2), (16, 16): (1, 4)}
    parallel = load_accelerator("scalesim-32x32-os")
    assert (parallel.fusion_lanes(4, 4), parallel.cycle_steps(4, 4)) == (1, 1)
    _refused(tmp_path, "bitfusion-32x32-os", 'precision = "bit-fusion"', 'precision = "bit-parallel"',
             "fusion_bits needs")
    _refused(tmp_path, "bitfusion-32x32-os", "brick_bits = 2 ", "brick_bits = 3 ", "powers of two")
