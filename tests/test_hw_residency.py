"""Activations kept on chip in a global buffer (hwmodel.residency): with residency on, ResNet-20's
DRAM traffic is its weights, the input image and the logits; with it off, nothing changes."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import quantsim
from hwmodel.arch import load_accelerator
from hwmodel.mapping import packed_bytes
from hwmodel.residency import resident_tensors
from hwmodel.simulate import batch1_shapes
from quantsim.quant.config import QuantConfig
from quantsim.run import hardware, stages
from quantsim.zoo.datasets import build_dataset
from quantsim.zoo.models import load_model

GB = "edge-16x16-gb256k-ws"


@pytest.fixture(scope="module")
def program(resnet20_checkpoint):
    model = load_model(str(resnet20_checkpoint), arch="cifar_resnet20").model
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return quantsim.quantize(model, QuantConfig(w_bits=8, a_bits=8), x)


def test_residency_leaves_only_weights_image_and_logits_in_dram(program):
    g = program.graph
    on = program.simulate(GB).layers.set_index("layer")
    image = packed_bytes(int(np.prod(g.input_shape)), g["input"].out.bits)
    weights = sum(packed_bytes(int(np.asarray(n.params["weight"]).size), n.weight_q.bits)
                  for n in g.nodes if "weight" in n.params)
    logits = packed_bytes(int(np.prod(on.loc[g.outputs[0], "n_elem"])), g[g.outputs[0]].out.bits)
    assert on["dram_rd_ifmap_bytes"].sum() == image
    assert on.loc["conv1", "dram_rd_ifmap_bytes"] == image  # the first conv reads the image
    assert on["dram_rd_filter_bytes"].sum() == weights
    assert on["dram_rd_ofmap_bytes"].sum() == 0  # no partial-sum spills
    assert on["dram_wr_ofmap_bytes"].sum() == logits == on.loc[g.outputs[0], "dram_wr_ofmap_bytes"]
    assert on["gb_wr_bytes"].sum() > 0 and on["gb_rd_bytes"].sum() >= on["gb_wr_bytes"].sum()


def test_residency_off_reproduces_the_accelerator_without_a_global_buffer(program):
    off = program.simulate(GB, residency="off")
    base = program.simulate("edge-16x16-ws")
    a, b = off.layers.drop(columns=["gb_rd_bytes", "gb_wr_bytes"]), base.layers.drop(columns=["gb_rd_bytes", "gb_wr_bytes"])
    assert list(a.columns) == list(b.columns)
    for col in a.columns:
        assert a[col].tolist() == b[col].tolist(), col
    assert (off.layers["gb_rd_bytes"] == 0).all() and (off.layers["gb_wr_bytes"] == 0).all()
    on = program.simulate(GB)
    s_on, s_off = on.summary, off.summary
    assert s_on["e_dram_pj"] < s_off["e_dram_pj"] and s_on["e_seed_pj"] < s_off["e_seed_pj"]
    # residency moves data, not compute (fewer DRAM bytes: stalls can only fall, tests/test_hw_bandwidth.py)
    assert on.layers["compute_cycles"].tolist() == off.layers["compute_cycles"].tolist()
    assert (on.layers["stall_cycles"] <= off.layers["stall_cycles"]).all()


def test_residency_off_reproduces_the_buffer_less_accelerator_on_lite0(imagenet_calib_dir):
    lm = load_model("tf_efficientnet_lite0")
    ds = build_dataset(f"imagenet:{imagenet_calib_dir}", lm.preprocess, role="calib")
    x = torch.stack([ds[i][0] for i in range(4)])
    g = quantsim.quantize(lm.model, QuantConfig(w_bits=8, a_bits=8), x).graph
    taps = stages.integer_taps(g, x[:1])
    off = hardware.simulate(g, taps, load_accelerator(GB).with_residency(False))
    base = hardware.simulate(g, taps, load_accelerator("edge-16x16-ws"))
    assert len(off.rows) == len(base.rows) == len(g.nodes) > 50
    for a, b in zip(off.rows, base.rows):  # every count and energy, layer for layer
        assert a == b, a["layer"]
    keys = [k for k in off.totals if k not in ("accelerator", "resident_tensors")]
    assert {k: off.totals[k] for k in keys} == {k: base.totals[k] for k in keys}


def test_a_small_buffer_keeps_what_fits_at_every_step(program):
    g = program.graph
    shapes = batch1_shapes(g, program.check_bitexact(program.prepared.calib[0][:1]).ref_tensors)
    accel = replace(load_accelerator(GB), sram_global_bytes=20_000)
    kept = resident_tensors(g, shapes, accel)
    assert kept and len(kept) < len([n for n in g.nodes if n.op not in ("quantize", "reshape")]) - 1
    index = {n.name: i for i, n in enumerate(g.nodes)}
    last = {}
    for n in g.nodes:
        for i in n.inputs:
            last[i] = index[n.name]
    size = {k: packed_bytes(int(np.prod(shapes[k])), g[k].out.bits) for k in kept}
    for i, n in enumerate(g.nodes):  # tensors held while node i runs: kept, written before, read at or after i
        live = sum(size[k] for k in kept if index[k] <= i <= last[k])
        assert live <= accel.sram_global_bytes, n.name
    assert g.outputs[0] not in kept and "input" not in kept


def test_residency_needs_a_global_buffer():
    with pytest.raises(ValueError, match="no global buffer"):
        load_accelerator("edge-16x16-ws").with_residency(True)
