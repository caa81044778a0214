"""quantsim.quant.quantizer: codes stay in range, fake quantization is the dequantized codes, per-channel
scales act per output channel, and the torch codes equal integer_ref.arith's NumPy rounding."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from integer_ref.arith import qrange, round_half_even
from quantsim.graph.capture import FNode
from quantsim.quant import quantizer as Q
from quantsim.quant import ranking as R
from quantsim.quant import scale_search as S
from quantsim.quant.calibrate import weight_clip
from quantsim.quant.config import QuantConfig
from quantsim.quant.lower import _quantize_weight


def _weight(seed: int, shape=(6, 3, 3, 3), zero_channel: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * torch.rand(shape[0], *([1] * (len(shape) - 1)), generator=g)
    if zero_channel:
        w[1] = 0.0  # an all-zero channel: the scale floor
    return w


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), bits=st.integers(2, 16), per_channel=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_weight_codes_in_range_and_fake_quant_is_the_dequantized_codes(seed, bits, per_channel, dtype):
    w = _weight(seed)
    _, qmax = qrange(bits, True)
    scale = Q.scale_from_clip(weight_clip(w, per_channel, "minmax", qmax), qmax, dtype=dtype)
    assert scale.dtype == dtype and scale.shape == ((w.shape[0],) if per_channel else ())
    assert bool((scale >= Q.SCALE_FLOOR).all())
    q = Q.weight_codes(w, scale, qmax)
    assert q.dtype == torch.int64 and int(q.abs().max()) <= qmax
    # min-max clip: every non-zero channel (per channel) or the tensor reaches ±qmax
    reach = q.reshape(q.shape[0], -1).abs().amax(1)
    if per_channel:
        assert reach.tolist() == [0 if c == 1 else qmax for c in range(w.shape[0])]
    else:
        assert int(reach.max()) == qmax
    fq = Q.fake_quant_weight(w, scale, qmax)
    assert fq.dtype == dtype
    assert torch.equal(fq, q.to(dtype) * Q.channel_view(scale, w.dim()))
    # each element is within half a step of the weight (no clipping at the min-max clip), up to the
    # rounding of w / scale in the scale's dtype (float32 at 16 bits: a quotient may round onto a tie)
    step = Q.channel_view(scale, w.dim()).to(torch.float64)
    ulps = 4 * torch.finfo(dtype).eps * w.double().abs()
    assert bool(((fq.double() - w.double()).abs() <= step / 2 + ulps).all())


def test_per_channel_scale_acts_on_its_own_channel():
    w = torch.zeros(3, 4)
    w[0] = torch.tensor([1.0, -0.5, 0.25, 0.0])
    w[2] = 100 * w[0]
    _, qmax = qrange(4, True)
    scale = Q.scale_from_clip(weight_clip(w, True, "minmax", qmax), qmax)
    assert scale.tolist() == pytest.approx([1 / 7, Q.SCALE_FLOOR, 100 / 7])
    q = Q.weight_codes(w, scale, qmax)
    assert torch.equal(q[0], q[2]) and not q[1].any()  # the same codes: scales follow each channel
    assert q[0].tolist() == [7, -4, 2, 0]  # 3.5 -> 4 and 1.75 -> 2, ties to even: -3.5 -> -4
    per_tensor = Q.weight_codes(w, Q.scale_from_clip(weight_clip(w, False, "minmax", qmax), qmax), qmax)
    assert per_tensor[0].abs().max() == 0 and per_tensor[2].tolist() == q[2].tolist()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), bits=st.integers(2, 16), signed=st.booleans(),
       scale=st.floats(1e-4, 10.0), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_codes_equal_integer_ref_rounding(seed, bits, signed, scale, dtype):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(257, generator=g, dtype=torch.float64) * scale * 2 ** (bits - 1)).to(dtype)
    x[:8] = torch.tensor([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 1e9, -1e9], dtype=dtype) * scale  # ties and clamps
    qmin, qmax = qrange(bits, signed)
    s = torch.tensor(scale, dtype=dtype)
    q = Q.quantize(x, s, qmin, qmax)
    ref = np.clip(round_half_even(x.numpy() / s.numpy()), qmin, qmax)
    assert np.array_equal(q.numpy(), ref)
    assert float(q.min()) >= qmin and float(q.max()) <= qmax
    assert torch.equal(Q.fake_quant(x, s, qmin, qmax), q * s)


def test_activation_scale_floor_and_float32_fake_quant():
    assert Q.act_scale(0.0, 127) == Q.ACT_CLIP_FLOOR / 127  # all-zero tensor: still a valid scale
    assert Q.act_scale(2.54, 127) == 2.54 / 127
    x = torch.linspace(-3, 3, 101)
    s = Q.act_scale(2.54, 127)
    fq = Q.fake_quant_act(x, s, -127, 127)
    s32 = torch.tensor(s, dtype=torch.float32)  # the float64 scale rounded to float32
    assert fq.dtype == torch.float32
    assert torch.equal(fq, torch.clamp(torch.round(x / s32), -127, 127) * s32)
    assert float(fq.max()) == pytest.approx(2.54, rel=1e-6)  # clipped at the clip


def test_channel_view_along_any_axis():
    s = torch.tensor([1.0, 2.0, 4.0])
    assert Q.channel_view(s, 4).shape == (3, 1, 1, 1)
    assert Q.channel_view(s, 3, axis=2).shape == (1, 1, 3)
    assert Q.channel_view(s, 2, axis=-1).shape == (1, 3)
    assert Q.channel_view(torch.tensor(2.0), 4).shape == ()


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("requant", ["dyadic", "float32"])
def test_lowering_search_and_ranking_share_the_quantizer(per_channel, requant):
    """The lowered codes times their scales are the scale search's fake-quantized weights (dyadic), and the
    ranking forms' float32 fake quantization is the quantizer's in float32."""
    w = _weight(3, (5, 4))
    n = FNode("fc", "linear", ["x"], {}, w, torch.zeros(5))
    cfg = QuantConfig(w_bits=4, granularity="per-channel" if per_channel else "per-tensor", requant=requant)
    q, qp, _ = _quantize_weight(n, 4, cfg)
    assert q.dtype == np.int64 and np.abs(q).max() <= 7
    deq = torch.from_numpy(q).double() * Q.channel_view(torch.from_numpy(np.asarray(qp.scale)), 2)
    if requant == "dyadic":
        assert torch.equal(deq.float(), S._weight_q(n, 4, per_channel, 1.0))
    else:  # the scales written to ONNX are float32 values
        assert np.array_equal(np.asarray(qp.scale), np.asarray(qp.scale).astype(np.float32).astype(np.float64))
    d = R.max_delta(w, 4, dim=0 if per_channel else None)
    assert torch.equal(R.fake_quant(w, d, 4, dim=0), Q.fake_quant(w, Q.channel_view(d, 2), -7, 7))
