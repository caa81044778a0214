"""simulate_graph on real lowered programs: a tiny residual CNN and CIFAR ResNet-20 (random
weights), through quantsim.run.stages (capture, calibrate, lower) and integer_ref's taps."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from hwmodel import load_accelerator, simulate_graph
from hwmodel.mapping import packed_bytes
from hwmodel.simulate import ROW_COLUMNS
from quantsim.run import hardware, stages as pipeline
from quantsim.quant.config import QuantConfig

WS = load_accelerator("scalesim-32x32-ws")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        z = torch.relu(self.conv2(y) + y)
        z = torch.relu(self.dw(z))
        return self.fc(torch.flatten(self.pool(z), 1))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = Tiny().eval()
    calib = [torch.randn(8, 3, 16, 16)]
    prep = pipeline.prepare(model, (3, 16, 16), calib, progress=False)
    x = torch.randn(2, 3, 16, 16)
    out = {}
    for b in (8, 6, 4):
        g = pipeline.quantize(prep, QuantConfig(w_bits=b, a_bits=b))
        out[b] = (g, pipeline.integer_taps(g, x))
    return out


def test_rows_columns_and_totals(tiny):
    g, taps = tiny[8]
    res = simulate_graph(g, taps, WS)
    assert [r["layer"] for r in res.rows] == [n.name for n in g.nodes]
    for r in res.rows:
        for c in ROW_COLUMNS:
            assert c in r, c
        assert r["e_total_pj"] == pytest.approx(r["e_mac_pj"] + r["e_sram_pj"] + r["e_dram_pj"])
        if r["op"] in ("conv2d", "linear"):
            assert r["n_mac"] > 0 and r["mult_toggles"] > 0
        else:
            assert r["n_mac"] == 0 and r["mult_toggles"] == 0
    t = res.totals
    for k in ("e_total_pj", "e_seed_pj", "e_mac_pj", "e_sram_pj", "e_dram_pj", "cycles"):
        assert t[k] == pytest.approx(sum(r[k] for r in res.rows))
    assert t["dram_model"] == "reuse" and t["accelerator"] == WS.name
    dw = next(r for r in res.rows if r["groups"] == 16)  # depthwise: 16 GEMMs with N = 1
    assert dw["gemm_n"] == 1 and dw["utilization"] < 1 / 32 + 1e-9


def test_seed_dram_is_packed_bytes_of_each_tensor_once(tiny):
    for b in (8, 6, 4):
        g, taps = tiny[b]
        t = simulate_graph(g, taps, WS).totals
        mem = 0
        for n in g.nodes:
            if n.op in ("quantize", "reshape"):
                continue
            for i in n.inputs:
                mem += packed_bytes(np.prod(np.shape(taps[i])[1:]), g[i].out.bits)
            if "weight" in n.params:
                mem += packed_bytes(n.params["weight"].size, n.weight_q.bits)
            mem += packed_bytes(np.prod(np.shape(taps[n.name])[1:]), n.out.bits)
        assert t["seed_dram_bytes"] == mem
        assert t["e_seed_dram_pj"] == pytest.approx(8 * mem * WS.energy.e_dram_bit_pj)


@pytest.mark.parametrize("preset", ["scalesim-32x32-ws", "scalesim-32x32-os", "edge-16x16-ws"])
def test_bit_width_ratios(tiny, preset):
    accel = load_accelerator(preset)
    r8 = simulate_graph(*tiny[8], accel).totals
    r4 = simulate_graph(*tiny[4], accel).totals
    r6 = simulate_graph(*tiny[6], accel).totals
    # seed model: MAC energy x (b/8)^2 exactly; DRAM halves except the 16-bit logits
    assert r4["e_seed_mac_pj"] == pytest.approx(r8["e_seed_mac_pj"] / 4)
    assert r6["e_seed_mac_pj"] == pytest.approx(r8["e_seed_mac_pj"] * 36 / 64)
    assert 0.5 <= r4["e_seed_dram_pj"] / r8["e_seed_dram_pj"] < 0.52
    # detailed model, reuse DRAM: everything fits, so DRAM bytes follow the bits too
    assert 0.5 <= r4["e_dram_pj"] / r8["e_dram_pj"] < 0.56
    assert r4["e_total_pj"] < r6["e_total_pj"] < r8["e_total_pj"] < r8["e_fp32_pj"]
    # the FP32 reference depends on shapes only
    assert r4["e_fp32_pj"] == r8["e_fp32_pj"] and r4["e_fp32_seed_pj"] == r8["e_fp32_seed_pj"]


def test_dram_model_override_and_scalesim_pessimism(tiny):
    g, taps = tiny[8]
    reuse = simulate_graph(g, taps, WS)
    ss = simulate_graph(g, taps, WS, dram_model="scalesim")
    assert ss.totals["dram_model"] == "scalesim"
    assert ss.totals["dram_bytes"] >= reuse.totals["dram_bytes"]
    # same compute, same toggles, same seed model
    for k in ("n_mac", "mult_toggles", "e_seed_pj", "e_mac_pj"):
        assert ss.totals[k] == reuse.totals[k], k


def test_toggle_images_average(tiny):
    g, taps = tiny[8]
    one = simulate_graph(g, {k: v[:1] for k, v in taps.items()}, WS).rows
    two = simulate_graph(g, taps, WS, toggle_images=2).rows
    second = simulate_graph(g, {k: v[1:2] for k, v in taps.items()}, WS).rows
    for a, b, c in zip(one, two, second):
        assert b["mult_toggles"] == pytest.approx((a["mult_toggles"] + c["mult_toggles"]) / 2)


def test_energy_summary_ratios(tiny):
    h8 = simulate_graph(*tiny[8], WS)
    h4 = simulate_graph(*tiny[4], WS)
    s8 = hardware.energy_summary(h8, h8)
    assert s8["energy_ratio_w8a8"] == s8["seed_ratio_w8a8"] == 1.0
    s4 = hardware.energy_summary(h4, h8)
    assert s4["energy_ratio_w8a8"] == pytest.approx(h4.totals["e_total_pj"] / h8.totals["e_total_pj"])
    assert s4["seed_ratio_w8a8"] == pytest.approx(h4.totals["e_seed_pj"] / h8.totals["e_seed_pj"])
    assert 0 < s4["energy_ratio_fp32"] < s4["energy_ratio_w8a8"] < 1
    assert 0 < s4["seed_ratio_fp32"] < s4["seed_ratio_w8a8"] < 1
    f = hardware.energy_summary(h8, h8, fp32=True)
    assert f["energy_ratio_fp32"] == f["seed_ratio_fp32"] == 1.0
    assert f["energy_ratio_w8a8"] == pytest.approx(1 / s8["energy_ratio_fp32"])
    assert f["seed_ratio_w8a8"] == pytest.approx(h8.totals["e_fp32_seed_pj"] / h8.totals["e_seed_pj"])
    other = simulate_graph(*tiny[8], WS, dram_model="scalesim")
    with pytest.raises(ValueError, match="dram_model"):
        hardware.energy_summary(h4, other)


def test_resnet20_program_random_weights():
    from quantsim.zoo.cifar_resnet import cifar_resnet20

    torch.manual_seed(0)
    model = cifar_resnet20().eval()
    prep = pipeline.prepare(model, (3, 32, 32), [torch.randn(8, 3, 32, 32)], progress=False)
    g = pipeline.quantize(prep, QuantConfig(w_bits=8, a_bits=8))
    taps = pipeline.integer_taps(g, torch.randn(1, 3, 32, 32))
    res = simulate_graph(g, taps, WS)
    convs = [r for r in res.rows if r["op"] == "conv2d"]
    assert len(convs) == 19
    assert res.totals["n_mac"] == sum(r["n_mac"] for r in res.rows) > 40_000_000
    # reuse: ResNet-20 fits the 64 KiB buffers, so DRAM is each tensor once (+ burst rounding)
    assert not any(r["psum_spill"] for r in convs)
    for r in convs:
        assert r["dram_rd_filter"] == r["gemm_k"] * r["gemm_n"] * r["groups"]
