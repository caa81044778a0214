"""Signed vs unsigned multiplier inputs on real CIFAR-10 images through the real ResNet-20.

For every conv whose input is a fused-ReLU tensor (quantsim.run.hardware.relu_toggle_study):
the layer's activation stream held unsigned post-ReLU (integer_ref's real operands) against
the same layer's pre-ReLU tensor quantized signed at the same width (executor rules: narrow
range, minmax scale over calibration, round half to even), on the weight- and
output-stationary streams of a 32x32 array.

What must hold physically, asserted exactly:
- A non-negative code has the same bits unsigned and in two's complement: the ReLU'd signed
  codes toggle identically held either way (the literal reading of "unsigned toggles less
  than two's complement" is therefore void; the question is about the streams).
- Offset binary is two's complement with the top bit inverted: XOR of consecutive values is
  unchanged, so offset-binary toggles equal two's-complement toggles (bubbles hold the
  encoding of 0 in each encoding). "Unsigned by offset" buys nothing for a signed stream.
- An unsigned operand has one encoding: own = sign-magnitude = offset.
- No stream toggles more than bits x values.

What the physics predicts and real images show, asserted with the margins measured here
(ResNet-20, 8 and 4 bits, both dataflows):
- The ReLU alone (signed codes clamped at 0, same scale) toggles less than the pre-ReLU
  stream on every such layer: negatives near zero flip all the high bits in two's
  complement, and ReLU turns them into runs of zeros.
- The whole network's unsigned post-ReLU stream toggles less than its signed pre-ReLU
  stream (measured 0.5-0.6x). Per layer this does NOT always hold at 4 bits: where the
  pre-ReLU tensor is mostly positive (a residual sum, 3-10% negative), the unsigned code's
  extra magnitude bit (scale max/15 instead of max|x|/7) outweighs the few sign changes.
- Sign-magnitude toggles less than two's complement on the signed pre-ReLU stream
  (measured 0.6-0.9x per layer), in line with the gate-level studies in REFERENCES.md.
"""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
MODEL_DIR = SHARED / "models" / "cifar10-resnet"
DATA = SHARED / "data" / "cifar10"

pytestmark = pytest.mark.skipif(
    not (MODEL_DIR.exists() and DATA.exists() and list(MODEL_DIR.glob("resnet20-*.th"))),
    reason=f"real model/data absent ({MODEL_DIR}, {DATA}): the real-image toggle test needs ../shared")


@pytest.fixture(scope="module")
def study():
    import torch

    from hwmodel.arch import load_accelerator
    from quantsim.zoo import datasets, models
    from quantsim.run import hardware, stages as pipeline
    from quantsim.quant.config import QuantConfig

    m = models.load_model(str(next(MODEL_DIR.glob("resnet20-*.th"))), arch="cifar_resnet20")
    spec = f"cifar10:{DATA}"
    cal = datasets.deterministic_subset(datasets.build_dataset(spec, m.preprocess, role="calib"), 32, 0)
    ev = datasets.deterministic_subset(datasets.build_dataset(spec, m.preprocess, role="eval"), 1, 1)
    xc = [torch.stack([cal[i][0] for i in range(len(cal))])]
    x = torch.stack([ev[0][0]])
    prep = pipeline.prepare(m.model, m.preprocess.input_size, xc, progress=False)
    accel = load_accelerator("scalesim-32x32-ws")
    out = {}
    for b in (8, 4):
        g = pipeline.quantize(prep, QuantConfig(w_bits=b, a_bits=b))
        out[b] = hardware.relu_toggle_study(prep, g, xc, x, accel, dataflows=("ws", "os"))
    return out


@pytest.mark.parametrize("bits", [8, 4])
def test_encoding_identities_on_real_streams(study, bits):
    rows = study[bits]
    assert len(rows) == 2 * 18  # ResNet-20: 18 convs read a ReLU output, x2 dataflows
    for r in rows:
        assert r["bits"] == bits
        assert r["relu_unsigned"] == r["relu_twos"], r["layer"]
        assert r["signed_offset"] == r["signed_twos"], r["layer"]
        assert r["unsigned"] == r["unsigned_signmag"] == r["unsigned_offset"], r["layer"]
        assert 0 < r["unsigned"] <= bits * r["n_mac"]
        assert 0 < r["signed_twos"] <= bits * r["n_mac"]


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("df", ["ws", "os"])
def test_post_relu_unsigned_toggles_less_than_pre_relu_signed(study, bits, df):
    rows = [r for r in study[bits] if r["dataflow"] == df]
    for r in rows:
        # the ReLU alone, same scale: fewer toggles on every layer
        assert r["relu_twos"] < 0.85 * r["signed_twos"], r["layer"]
        # sign-magnitude beats two's complement on the zero-centred signed stream
        assert r["signed_signmag"] < r["signed_twos"], r["layer"]
    uns = sum(r["unsigned"] for r in rows)
    sig = sum(r["signed_twos"] for r in rows)
    sm = sum(r["signed_signmag"] for r in rows)
    assert uns < 0.75 * sig, (uns, sig)
    assert sm < 0.9 * sig, (sm, sig)
