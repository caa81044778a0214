"""The accumulator as built: biases that fit it (the weight-scale floor of near-dead channels),
on a synthetic layer and on the real EfficientNet-Lite0, for every rounding method."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import quantsim
from quantsim.quant.config import QuantConfig
from quantsim.quant.lower import bias_limit
from quantsim.zoo.datasets import build_dataset
from quantsim.zoo.models import load_model

DEAD = 2  # the output channel whose weights BN folding drove to ~0


def _dead_channel_net() -> nn.Module:
    """conv -> ReLU -> conv -> GAP -> linear, the first conv with one near-dead output channel
    (weights ~1e-7, bias 3.0): its per-channel scale from the weight clip alone is ~1e-9, which
    would put the bias at ~1e9·(1/s_x) into the accumulator."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    with torch.no_grad():
        net[0].weight[DEAD].mul_(1e-7)
        net[0].bias[DEAD] = 3.0
    return net.eval()


@pytest.mark.parametrize("rounding", ["nearest", "gptq"])
@pytest.mark.parametrize("w_bits", [8, 4])
def test_dead_channel_bias_fits_the_accumulator(rounding, w_bits):
    net = _dead_channel_net()
    x = torch.randn(24, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    cfg = QuantConfig(w_bits=w_bits, a_bits=8, granularity="per-channel", rounding=rounding)
    prog = quantsim.quantize(net, cfg, x)
    conv = prog.graph.nodes[1]
    assert conv.op == "conv2d"
    bias = np.asarray(conv.params["bias"])
    assert np.abs(bias).max() <= bias_limit(32)
    # the floor binds on the dead channel only: the others keep the weight clip's scale
    s = np.asarray(conv.weight_q.scale)
    qmax = 2 ** (w_bits - 1) - 1
    clip_scale = net[0].weight.detach().double().abs().amax(dim=(1, 2, 3)).numpy() / qmax
    live = np.arange(8) != DEAD
    np.testing.assert_array_equal(s[live], clip_scale[live])
    assert s[DEAD] == pytest.approx(3.0 / (float(conv.in_q.scale) * bias_limit(32)), rel=1e-12)
    assert s[DEAD] > clip_scale[DEAD]
    # without the floor the same bias would not fit a 32-bit accumulator (the test could fail)
    assert 3.0 / (float(conv.in_q.scale) * clip_scale[DEAD]) > 2**31
    be = prog.check_bitexact(x[:4])
    assert be.total_mismatches == 0
    assert sum(be.acc_overflows.values()) == 0


@pytest.mark.parametrize("w_bits,a_bits", [(8, 8), (4, 8)])
def test_lite0_per_channel_has_no_accumulator_overflow(imagenet_calib_dir, w_bits, a_bits):
    """Lite0's per-channel weights put biases of 2^42 and more into the accumulator before the
    floor (1,018,024 overflows on the demo's photos at W8A8); now none, and still bit-exact."""
    lm = load_model("tf_efficientnet_lite0")
    ds = build_dataset(f"imagenet:{imagenet_calib_dir}", lm.preprocess, role="calib")
    x = torch.stack([ds[i][0] for i in range(16)])
    prog = quantsim.quantize(lm.model, QuantConfig(w_bits=w_bits, a_bits=a_bits, granularity="per-channel"), x)
    biases = [np.abs(np.asarray(n.params["bias"])).max() for n in prog.graph.nodes if "bias" in n.params]
    assert max(biases) <= bias_limit(32)
    be = prog.check_bitexact(x[:2])
    assert be.total_mismatches == 0
    assert sum(be.acc_overflows.values()) == 0
