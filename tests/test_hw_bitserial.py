"""A bit-serial (Stripes-style) array: cycles scale with the activation width, traffic does not."""
from __future__ import annotations

import pytest
import torch

import quantsim
from hwmodel.arch import PRESET_DIR, load_accelerator
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


def test_precision_keys_are_checked(tmp_path):
    doc = (PRESET_DIR / "bitserial-32x32-os.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(doc.replace('precision = "bit-serial"', 'precision = "bit-fusion"'))
    with pytest.raises(ValueError, match="array.precision must be one of"):
        load_accelerator(bad)
    bad.write_text(doc.replace('precision = "bit-serial"', 'precision = "bit-parallel"'))
    with pytest.raises(ValueError, match="serial_bits needs"):
        load_accelerator(bad)
    a = load_accelerator("bitserial-32x32-os")
    assert (a.precision, a.serial_bits, a.cycle_steps(8), a.cycle_steps(3)) == ("bit-serial", 1, 8, 3)
    assert load_accelerator("scalesim-32x32-os").cycle_steps(8) == 1
