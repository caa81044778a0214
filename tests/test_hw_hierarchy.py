"""The memory hierarchy as data (hwmodel.hierarchy): every shipped preset written as [[memory]]
levels is the same accelerator and gives the same numbers; level lists the model cannot
represent are refused with one line naming the file."""
from __future__ import annotations

import copy
import tomllib
from dataclasses import replace

import pytest
import torch

import quantsim
from hwmodel.arch import PRESET_DIR, list_presets, load_accelerator, parse_accelerator
from hwmodel.hierarchy import flat_to_levels
from quantsim.quant.config import QuantConfig
from quantsim.run import hardware, stages
from quantsim.zoo.models import load_model

FIX = PRESET_DIR.parent.parent / "tests" / "fixtures" / "hierarchy"


def _doc(name):
    return tomllib.loads((PRESET_DIR / f"{name}.toml").read_text())


def _same(a, b):
    """Every field equal, the energy sources too (EnergyTable leaves them out of ==)."""
    assert replace(a, path="") == replace(b, path="")
    assert a.energy.sources == b.energy.sources
    assert (a.e_gb_bit_source, a.dram_transfer_source) == (b.e_gb_bit_source, b.dram_transfer_source)


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_as_levels_is_the_same_accelerator(name):
    levels = flat_to_levels(_doc(name))
    assert "sram" not in levels and "dram" not in levels and "e_dram_bit_pj" not in levels["energy"]
    assert [lv["kind"] for lv in levels["memory"]][:4] == ["registers", "sram", "sram", "sram"]
    _same(parse_accelerator(levels, "levels"), load_accelerator(name))


def test_hand_written_levels_give_the_presets_numbers(resnet20_checkpoint):
    """A level-form file written by hand (not by flat_to_levels): the same rows, layer for layer."""
    flat, levels = load_accelerator("edge-16x16-gb256k-ws"), load_accelerator(FIX / "edge-16x16-gb256k-ws.toml")
    _same(levels, flat)
    model = load_model(str(resnet20_checkpoint), arch="cifar_resnet20").model
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    g = quantsim.quantize(model, QuantConfig(w_bits=4, a_bits=8), x).graph
    taps = stages.integer_taps(g, x[:1])
    a, b = hardware.simulate(g, taps, flat), hardware.simulate(g, taps, levels)
    assert a.rows == b.rows and a.totals == b.totals
    assert a.totals["resident_tensors"] > 0  # the global level's residency was read


def _levels(name="edge-16x16-gb256k-ws"):
    return flat_to_levels(_doc(name))


def _kind(doc, kind, operand=None):
    return next(lv for lv in doc["memory"] if lv["kind"] == kind and lv.get("operand", operand) == operand)


@pytest.mark.parametrize("break_it,pattern", [
    (lambda d: d.update(sram={"ifmap_bytes": 1}), r"\[sram\] and \[\[memory\]\] both given"),
    (lambda d: d["energy"].update(e_dram_bit_pj=1.0), "energy.e_dram_bit_pj and \\[\\[memory\\]\\] both given"),
    (lambda d: d["memory"].reverse(), "innermost first"),
    (lambda d: d["memory"].pop(1), "one sram level per operand"),
    (lambda d: _kind(d, "sram", "filter").update(e_bit_pj=0.5), "share one e_bit_pj"),
    (lambda d: _kind(d, "sram", "ifmap").update(transfer_mts=800), "only the dram level has a bandwidth"),
    (lambda d: d["memory"].pop(), "needs a dram level"),
    (lambda d: _kind(d, "global").pop("size_bytes"), r"memory\[4\] \(global\) is missing size_bytes"),
    (lambda d: _kind(d, "dram").update(kind="hbm"), "kind must be one of"),
])
def test_levels_outside_the_model_are_refused(break_it, pattern):
    doc = copy.deepcopy(_levels())
    break_it(doc)
    with pytest.raises(ValueError, match="accelerator file bad.toml: .*" + pattern):
        parse_accelerator(doc, "bad.toml")


def test_a_level_changes_what_it_describes():
    """The levels are read, not decoration: a smaller global buffer, a slower DRAM."""
    doc = _levels()
    _kind(doc, "global").update(size_bytes=65536)
    _kind(doc, "dram").update(transfer_mts=1600, e_bit_pj=13.5)
    a = parse_accelerator(doc, "levels")
    assert (a.sram_global_bytes, a.dram_transfer_mts, a.energy.e_dram_bit_pj) == (65536, 1600.0, 13.5)
    assert a.dram_bytes_per_cycle() == pytest.approx(12.8)
