"""The quantizer, torch side: scales from clips, integer codes, fake quantization.

Symmetric uniform quantization (zero point 0) with round half to even (torch.round, like
integer_ref.arith.round_half_even) and a clamp to the integer range (integer_ref.arith.qrange:
narrow signed [-(2^(b-1)-1), 2^(b-1)-1] or unsigned [0, 2^b-1]). Lowering (quantsim.quant.lower),
the scale searches (quantsim.quant.scale_search, quantsim.quant.ranking), calibration's mse
search (quantsim.quant.calibrate) and the sensitivities (quantsim.mixed.sensitivity) all call
these; the clip (the real value mapped to qmax) is always the caller's argument, so this module
imports none of them.

The callers do not all compute in one precision, and the programs and accuracies of
docs/results.md depend on each one's: the precision is therefore a parameter, never unified.
- Weight scales: float64 in lowering and scale search (the IR holds float64 scales and the
  search fake-quantizes with exactly the lowering's values), float32 in the sensitivities and
  the per-layer ranking forms (float32 fake quantization throughout); the codes are computed
  in the scale's dtype. Floor SCALE_FLOOR on the scale (an all-zero channel).
- Activation scales: clip / qmax in float64 with the clip floored at ACT_CLIP_FLOOR (an
  all-zero tensor); the float32 model's activations are fake-quantized at that scale rounded
  to float32 (fake_quant_act).
"""
from __future__ import annotations

import torch

SCALE_FLOOR = 1e-12    # weight scales: an all-zero channel still gets a valid (any) scale
ACT_CLIP_FLOOR = 1e-8  # activation clips: an all-zero tensor still gets a valid scale


def scale_from_clip(clip: torch.Tensor, qmax: int, dtype: torch.dtype = torch.float64,
                    floor: float | None = SCALE_FLOOR) -> torch.Tensor:
    """clip / qmax computed in `dtype`, at least `floor` (None: no floor): per tensor (clip of
    shape ()) or per channel (shape (C,))."""
    scale = clip.to(dtype) / qmax
    return scale if floor is None else scale.clamp(min=floor)


def act_scale(clip: float, qmax: int, floor: float = ACT_CLIP_FLOOR) -> float:
    """An activation's scale (a float64 number): max(clip, floor) / qmax."""
    return max(clip, floor) / qmax


def channel_view(scale: torch.Tensor, ndim: int, axis: int = 0) -> torch.Tensor:
    """A per-channel scale (C,) shaped to broadcast along `axis` of an ndim tensor; a per-tensor
    scale (shape ()) as it is."""
    if scale.ndim == 0:
        return scale
    shape = [1] * ndim
    shape[axis] = -1
    return scale.reshape(shape)


def quantize(x: torch.Tensor, scale, qmin: int, qmax: int) -> torch.Tensor:
    """The integer codes clamp(round(x / scale), qmin, qmax), ties to even, in x's float dtype."""
    return torch.clamp(torch.round(x / scale), qmin, qmax)


def fake_quant(x: torch.Tensor, scale, qmin: int, qmax: int) -> torch.Tensor:
    """The real values of x's codes: quantize(x, scale, qmin, qmax) * scale."""
    return quantize(x, scale, qmin, qmax) * scale


def weight_codes(w: torch.Tensor, scale: torch.Tensor, qmax: int) -> torch.Tensor:
    """int64 codes in [-qmax, qmax] of a weight (output channels on axis 0) at its scale (shape ()
    or (O,)), computed in the scale's dtype."""
    return quantize(w.to(scale.dtype), channel_view(scale, w.dim()), -qmax, qmax).to(torch.int64)


def fake_quant_weight(w: torch.Tensor, scale: torch.Tensor, qmax: int) -> torch.Tensor:
    """weight_codes(w, scale, qmax) · scale, in the scale's dtype."""
    return fake_quant(w.to(scale.dtype), channel_view(scale, w.dim()), -qmax, qmax)


def fake_quant_act(x: torch.Tensor, scale: float, qmin: int, qmax: int) -> torch.Tensor:
    """x fake-quantized at an activation scale (a float64 number) rounded to float32: the float32
    model's arithmetic on its own activations."""
    return fake_quant(x, torch.tensor(scale, dtype=torch.float64).float(), qmin, qmax)
