"""Capture's fallback for Python control flow on sizes (quantsim.graph.static_trace): a model plain
torch.fx cannot trace is traced with its sizes fixed at capture's input shape, then captured,
lowered and run bit-exactly as any other; a graph that folds the batch axis is refused by name."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from quantsim.errors import QuantsimError
from quantsim.graph.capture import capture, run_float, trace
from quantsim.quant.calibrate import collect_stats
from quantsim.quant.config import QuantConfig
from quantsim.quant.lower import lower
from small_models import assert_bitexact, imagenet_images


class _PadToWhole(nn.Module):
    """Pads to whole 4x4 tiles with Python control flow on the sizes (MobileViT's and Swin's kind)."""

    def forward(self, x):
        if x.shape[-1] % 2:
            x = F.pad(x, (0, 1))
        rows = math.ceil(x.size(2) / 4) * 4
        if rows != x.shape[2] and x.dim() == 4:
            x = F.pad(x, (0, 0, 0, rows - x.shape[2]))
        return x


class _Net(nn.Module):
    def __init__(self, block: nn.Module):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.block = block
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(F.relu(self.block(self.conv(x))).mean((2, 3)))


def _plain_fx_fails(model: nn.Module) -> bool:
    try:
        trace(model)  # no input shape: no fallback
    except QuantsimError:
        return True
    return False


_W1 = [[0, 0], [0, 0], [0, 0], [0, 1]]  # one column: the width was odd


@pytest.mark.parametrize("size, pads", [(33, []),  # conv -> 16x16: neither branch
                                        (29, [[[0, 0], [0, 0], [0, 2], [0, 0]]]),  # 14x14: two rows
                                        (31, [_W1, [[0, 0], [0, 0], [0, 1], [0, 0]]])])  # 15x15: both
def test_size_branches_capture_at_the_input_shape(imagenet_calib_dir, size, pads):
    torch.manual_seed(0)
    model = _Net(_PadToWhole()).eval()
    assert _plain_fx_fails(model)
    x = imagenet_images(imagenet_calib_dir, size, size + 4)
    g = capture(model, (3, size, size))
    with torch.no_grad():
        assert torch.allclose(run_float(g, x), model(x), atol=1e-5)
    got = [n.attrs["pads"] for n in g.nodes if n.op == "pad"]
    assert got == pads  # the branches as taken at this size
    stats = collect_stats(g, [x], progress=False)
    for w_bits in (8, 4):
        assert_bitexact(lower(g, stats, QuantConfig(w_bits=w_bits, a_bits=8)), x, f"{size}px W{w_bits}A8")


class _FoldsBatch(nn.Module):
    """timm MobileViT's unfold, unpatched: the batch folded into the first axis."""

    def forward(self, x):
        b, c, h, w = x.shape
        if h % 2:
            x = F.pad(x, (0, 0, 0, 1))
            h += 1
        x = x.reshape(b * c, h // 2, 2, w).transpose(1, 2)
        return x.reshape(b, c, h, w)


def test_batch_folding_under_static_shapes_refused_by_name():
    with pytest.raises(QuantsimError) as err:
        capture(_Net(_FoldsBatch()).eval(), (3, 17, 17))
    msg = str(err.value)
    assert "\n" not in msg and "(16, 4, 2, 8) moves the batch axis" in msg and msg.startswith("cannot lower reshape")
