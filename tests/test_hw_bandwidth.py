"""DRAM bandwidth stalls (hwmodel.bandwidth): a layer takes max(compute, DRAM bus cycles).

With dram.stalls off every per-layer cycle of ResNet-20 and EfficientNet-Lite0 is the one
hwmodel gave before stalls were modelled (tests/fixtures/bandwidth, made by make_fixtures.py
there from main's simulate_graph, every preset; ResNet-20 at W8A8 and W4A4 checked, Lite0 at
W8A8 on two presets of the seven kept),
and nothing but the cycles changes when they are on. With them on, a residual add, whose
traffic the bus cannot move in its vector-unit cycles, waits exactly the cycles its shapes
give; latency and energy-delay product follow the cycles."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

import quantsim
from hwmodel.arch import PRESET_DIR, list_presets, load_accelerator
from quantsim.quant.config import QuantConfig
from quantsim.run import hardware, stages
from quantsim.zoo.datasets import build_dataset
from quantsim.zoo.models import load_model

FIX = Path(__file__).parent / "fixtures" / "bandwidth"
BEFORE = json.loads((FIX / "resnet20_cycles_before_stalls.json").read_text())
LITE0_BEFORE = json.loads((FIX / "lite0_cycles_before_stalls.json").read_text())
STALL_COLUMNS = ("cycles", "stall_cycles")


@pytest.fixture(scope="module")
def programs(resnet20_checkpoint):
    model = load_model(str(resnet20_checkpoint), arch="cifar_resnet20").model
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = {}
    for b in (8, 4):
        g = quantsim.quantize(model, QuantConfig(w_bits=b, a_bits=b), x).graph
        out[f"W{b}A{b}"] = (g, stages.integer_taps(g, x[:1]))
    return out


@pytest.fixture(scope="module")
def simulated(programs):
    """hardware.simulate of a program on an Accelerator, each pair computed once per module."""
    cache = {}

    def get(bits, accel):
        if (bits, accel) not in cache:
            g, taps = programs[bits]
            cache[bits, accel] = hardware.simulate(g, taps, accel)
        return cache[bits, accel]
    return get


# widths change cycles on the bit-serial array only: W4A4 there and on its bit-parallel twin
CASES = [(p, "W8A8") for p in sorted(BEFORE["cycles"])] + [("bitserial-32x32-os", "W4A4"), ("scalesim-32x32-os", "W4A4")]


@pytest.mark.parametrize("preset,bits", CASES)
def test_stalls_off_gives_the_cycles_before_stalls(simulated, preset, bits):
    on = load_accelerator(preset)
    assert on.dram_stalls and on.dram_bytes_per_cycle() > 0  # every shipped preset names its DRAM rate
    hw = simulated(bits, on.with_stalls(False))
    assert {r["layer"]: r["cycles"] for r in hw.rows} == BEFORE["cycles"][preset][bits]
    assert all(r["stall_cycles"] == 0 and r["cycles"] == r["compute_cycles"] for r in hw.rows)
    assert hw.totals["latency_us"] == pytest.approx(BEFORE["latency_us"][preset][bits], rel=1e-12)


def test_every_preset_is_in_the_fixture():
    assert sorted(BEFORE["cycles"]) == sorted(LITE0_BEFORE["cycles"]) == list_presets()  # a new preset needs its row


@pytest.fixture(scope="module")
def lite0(imagenet_calib_dir):
    lm = load_model("tf_efficientnet_lite0")
    ds = build_dataset(f"imagenet:{imagenet_calib_dir}", lm.preprocess, role="calib")
    x = torch.stack([ds[i][0] for i in range(4)])
    g = quantsim.quantize(lm.model, QuantConfig(w_bits=8, a_bits=8), x).graph
    return g, stages.integer_taps(g, x[:1])


@pytest.mark.parametrize("preset", ["edge-16x16-ws", "bitserial-32x32-os"])  # ws; os with serial steps
def test_lite0_stalls_off_gives_the_cycles_before_stalls(lite0, preset):
    g, taps = lite0
    hw = hardware.simulate(g, taps, load_accelerator(preset).with_stalls(False))
    assert {r["layer"]: r["cycles"] for r in hw.rows} == LITE0_BEFORE["cycles"][preset]["W8A8"]
    assert hw.totals["latency_us"] == pytest.approx(LITE0_BEFORE["latency_us"][preset]["W8A8"], rel=1e-12)


@pytest.mark.parametrize("preset", ["scalesim-32x32-ws", "bitserial-32x32-os"])
def test_stalls_on_change_only_the_cycles(simulated, preset):
    on = load_accelerator(preset)
    hw_off, hw_on = simulated("W8A8", on.with_stalls(False)), simulated("W8A8", on)
    assert hw_on.totals["stall_cycles"] > 0
    for a, b in zip(hw_off.rows, hw_on.rows):  # stalls move no data and cost no energy
        assert {k: v for k, v in a.items() if k not in STALL_COLUMNS} == \
               {k: v for k, v in b.items() if k not in STALL_COLUMNS}, a["layer"]
        assert b["cycles"] == max(b["compute_cycles"], b["dram_cycles"]) == b["compute_cycles"] + b["stall_cycles"]
    t = hw_on.totals
    assert t["cycles"] == sum(r["cycles"] for r in hw_on.rows) == t["compute_cycles"] + t["stall_cycles"]
    assert t["latency_us"] == t["cycles"] / on.clock_mhz
    assert t["edp_pj_us"] == pytest.approx(t["e_total_pj"] * t["cycles"] / on.clock_mhz, rel=1e-12)
    assert {k: hw_off.totals[k] for k in ("e_total_pj", "e_seed_pj", "dram_bytes")} == \
           {k: t[k] for k in ("e_total_pj", "e_seed_pj", "dram_bytes")}


def _bus_cycles(nbytes: int, accel) -> int:
    """ceil(nbytes / (bus_bits/8 * MT/s / MHz)), in integers: the preset's figures, not its method."""
    num, den = nbytes * 8 * Fraction(accel.clock_mhz), accel.dram_bus_bits * Fraction(accel.dram_transfer_mts)
    return math.ceil(num / den)


def test_a_residual_add_waits_exactly_for_its_dram_bytes(programs, simulated):
    g, taps = programs["W8A8"]
    accel = load_accelerator("scalesim-32x32-ws")  # DDR4-3200 on a 64-bit bus at 1 GHz: 25.6 B/cycle
    assert accel.dram_bytes_per_cycle() == pytest.approx(25.6)
    rows = {r["layer"]: r for r in simulated("W8A8", accel).rows}
    add = g["layer1.0.add"]
    assert add.op == "add"
    ins = [int(np.prod(np.shape(taps[i])[1:])) for i in add.inputs]
    n_out = int(np.prod(np.shape(taps[add.name])[1:]))
    assert ins == [16 * 32 * 32] * 2 and n_out == 16 * 32 * 32
    bits = [g[i].out.bits for i in add.inputs] + [add.out.bits]
    # every tensor crosses the bus in whole bursts; the vector unit handles `cols` elements a cycle
    bus_bytes = sum(math.ceil(math.ceil(n * b / 8) / accel.burst_bytes) * accel.burst_bytes
                    for n, b in zip(ins + [n_out], bits))
    compute = math.ceil(sum(ins) / accel.cols)
    dram = _bus_cycles(bus_bytes, accel)
    assert (bus_bytes, compute, dram) == (49152, 1024, 1920)
    r = rows[add.name]
    assert (r["compute_cycles"], r["dram_cycles"], r["stall_cycles"], r["cycles"]) == (compute, dram, dram - compute, dram)
    # a 3x3 convolution of the same stage is compute-bound: no stall
    conv = rows["layer1.0.conv2"]
    assert conv["dram_cycles"] < conv["compute_cycles"] and conv["stall_cycles"] == 0
    assert conv["cycles"] == conv["compute_cycles"]


def test_residency_removes_stalls_that_dram_traffic_caused(simulated):
    """With the activations on chip a layer's DRAM traffic shrinks, so its stalls can only fall."""
    # a slower bus than the preset's (400 MT/s: 3.2 B/cycle), so that many layers stall without the buffer
    slow = replace(load_accelerator("edge-16x16-gb256k-ws"), dram_transfer_mts=400.0)
    on, off = simulated("W8A8", slow), simulated("W8A8", slow.with_residency(False))
    assert off.totals["stall_cycles"] > on.totals["stall_cycles"] > 0
    for a, b in zip(on.rows, off.rows):
        assert a["compute_cycles"] == b["compute_cycles"] and a["stall_cycles"] <= b["stall_cycles"], a["layer"]


EDGE = (PRESET_DIR / "edge-16x16-ws.toml").read_text()
NO_RATE = "\n".join(line for line in EDGE.splitlines() if not line.startswith("transfer_"))


@pytest.mark.parametrize("text,pattern", [
    (EDGE.replace("clock_mhz = 500", ""), "dram.transfer_mts needs array.clock_mhz"),
    (EDGE.replace("stalls = true", 'stalls = "yes"'), "dram.stalls must be true or false"),
    (NO_RATE, "dram.stalls needs dram.transfer_mts"),
    (EDGE.replace("transfer_source", "transfer_note"), "missing key dram.transfer_source"),
])
def test_bad_dram_rate_keys_are_refused(tmp_path, text, pattern):
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(ValueError, match=pattern):
        load_accelerator(bad)


def test_no_rate_means_no_stalls_and_stalls_can_be_turned_off(tmp_path):
    old = tmp_path / "old.toml"
    old.write_text(NO_RATE.replace("stalls = true", ""))  # a file of the older schema: no bandwidth, no stalls
    a = load_accelerator(old)
    assert not a.dram_stalls and a.dram_bytes_per_cycle() is None and a.dram_cycles(10 ** 6) == 0
    with pytest.raises(ValueError, match="names no DRAM data rate"):
        a.with_stalls(True)
    off = tmp_path / "off.toml"
    off.write_text(EDGE.replace("stalls = true", "stalls = false"))
    b = load_accelerator(off)
    assert not b.dram_stalls and b.dram_bytes_per_cycle() == pytest.approx(25.6)
    assert replace(b.with_stalls(True), path="") == replace(load_accelerator("edge-16x16-ws"), path="")
