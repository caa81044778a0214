"""timm classifiers through capture's newer paths, bit-exact on real images: the functional GELU and
timm's LayerNorm2d / x.mul(gamma) layer scale (ConvNeXt), F.pad with amounts computed from the
traced shapes, timm's Swin v1 block (written out with torchvision's window attention) and its NHWC
global pool. Each capture is checked against the torch model in float, then integer_ref against
the torch twin on every node. The integer ops are the existing ones (their oracle tests are in
test_swin.py, test_convnext.py, test_vit.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from quantsim.errors import QuantsimError
from quantsim.graph.capture import capture, run_float
from quantsim.quant.calibrate import collect_stats
from quantsim.quant.config import QuantConfig
from quantsim.quant.lower import lower
from small_models import assert_bitexact, imagenet_images

timm = pytest.importorskip("timm")


def _bitexact_both_widths(model: nn.Module, x: torch.Tensor, label: str, widths=(8, 4)):
    g = capture(model, tuple(x.shape[1:]))
    with torch.no_grad():
        want = model(x)
    assert torch.allclose(run_float(g, x), want, atol=1e-4, rtol=1e-4), f"{label}: capture is not the model"
    stats = collect_stats(g, [x], progress=False)
    for w_bits in widths:
        assert_bitexact(lower(g, stats, QuantConfig(w_bits=w_bits, a_bits=8)), x, f"{label} W{w_bits}A8")
    return g


def test_timm_convnext_atto_bitexact(imagenet_calib_dir):
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", pretrained=False).eval()
    g = _bitexact_both_widths(model, imagenet_images(imagenet_calib_dir, 32, 37), "convnext_atto", widths=(8,))
    ops = [n.op for n in g.nodes]
    assert "gelu" in ops and "layernorm" in ops  # F.gelu and timm's LayerNorm2d, as the integer ops
    assert "layerscale" not in ops  # x.mul(gamma) folded into the linear before it


class _PadGelu(nn.Module):
    """F.pad by amounts computed from the input's shape (as timm Swin's patch merging and window
    padding do), then F.gelu: both reach capture as traced shape arithmetic and a functional call."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.conv(x)
        _, _, h, w = x.shape
        x = F.pad(x, (0, (4 - w % 4) % 4, 1, (4 - h % 4) % 4))
        x = F.gelu(x)
        return self.head(x.mean((2, 3)))


def test_shape_derived_pad_and_functional_gelu_bitexact(imagenet_calib_dir):
    torch.manual_seed(0)
    x = imagenet_images(imagenet_calib_dir, 29, 33)  # conv -> 14x14: pads (1, 2) rows, (0, 2) columns
    g = _bitexact_both_widths(_PadGelu().eval(), x, "pad+gelu")
    pads = [n.attrs["pads"] for n in g.nodes if n.op == "pad"]
    assert pads == [[[0, 0], [0, 0], [1, 2], [0, 2]]]
    assert [n.op for n in g.nodes].count("gelu") == 1


class _ReflectPad(nn.Module):
    def forward(self, x):
        return F.pad(x, (1, 1, 1, 1), mode="reflect")


def test_pad_other_than_zeros_refused_by_name():
    with pytest.raises(QuantsimError, match=r"cannot lower .*pad.*other than with zeros"):
        capture(_ReflectPad().eval(), (3, 8, 8))


def test_timm_swin_block_bitexact(imagenet_calib_dir):
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    # 56 px / patch 4 = 14x14: 2x2 windows of 7, the second block shifted (the mask); patch merging to
    # 7x7, where the window is the whole map (no shift); the head pools NHWC
    model = SwinTransformer(img_size=56, patch_size=4, window_size=7, embed_dim=16, depths=(2, 2),
                            num_heads=(1, 2), num_classes=10).eval()
    g = _bitexact_both_widths(model, imagenet_images(imagenet_calib_dir, 56, 64), "timm swin")
    masked = [n for n in g.nodes if n.op == "softmax" and n.weight is not None]
    assert len(masked) == 1 and tuple(masked[0].weight.shape) == (4, 1, 49, 49)
    assert sum(n.op == "roll" for n in g.nodes) == 2  # the shift and its reverse


def test_timm_swin_not_whole_windows_refused():
    from timm.models.swin_transformer import SwinTransformer

    model = SwinTransformer(img_size=40, patch_size=4, window_size=4, embed_dim=8, depths=(2,), num_heads=(1,),
                            num_classes=10).eval()
    model.layers[0].blocks[0].window_size = (3, 3)  # 10x10 tokens: not whole 3x3 windows
    with pytest.raises(QuantsimError, match="not a whole number of"):
        capture(model, (3, 40, 40))


class _BranchOnValues(nn.Module):
    def forward(self, x):
        if x.mean() > 0:  # control flow on tensor values: untraceable even with the sizes fixed
            x = F.pad(x, (0, 1))
        return x


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.block = _BranchOnValues()

    def forward(self, x):
        return self.block(self.conv(x))


def test_untraceable_control_flow_names_the_layer_and_line():
    with pytest.raises(QuantsimError) as err:
        capture(_Net().eval(), (3, 9, 9))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("cannot trace the model with torch.fx, even with its sizes fixed")
    assert "in block (_BranchOnValues) at test_timm_models.py:" in msg and "`if x.mean() > 0:" in msg


class _TrailingSlices(nn.Module):
    """GhostNet's ``out[:, :self.out_chs, :, :]``: a channel slice written with trailing full slices."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(5, 10)

    def forward(self, x):
        x = self.conv(x)[:, :5, :, :]
        return self.head(x.mean((2, 3)))


def test_channel_slice_with_trailing_full_slices_bitexact(imagenet_calib_dir):
    torch.manual_seed(0)
    g = _bitexact_both_widths(_TrailingSlices().eval(), imagenet_images(imagenet_calib_dir, 16, 18), "slice")
    assert [(n.attrs["axis"], n.attrs["start"], n.attrs["stop"]) for n in g.nodes if n.op == "slice"] == [(1, 0, 5)]


def test_timm_swin_v2_block_bitexact(imagenet_calib_dir):
    from timm.models.swin_transformer_v2 import SwinTransformerV2

    torch.manual_seed(0)
    # 64 px / patch 4 = 16x16: 2x2 windows of 8, the second block shifted; then 8x8, one window
    model = SwinTransformerV2(img_size=64, patch_size=4, window_size=8, embed_dim=16, depths=(2, 2),
                              num_heads=(1, 2), num_classes=10).eval()
    for block in model.modules():  # timm's res-post-norm init zeroes these gammas: outputs identically 0
        if hasattr(block, "attn") and hasattr(block, "norm2"):
            nn.init.normal_(block.norm1.weight, 1.0, 0.1)
            nn.init.normal_(block.norm2.weight, 1.0, 0.1)
    g = _bitexact_both_widths(model, imagenet_images(imagenet_calib_dir, 64, 73), "timm swin v2")
    assert sum(n.op == "l2norm" for n in g.nodes) == 8  # q and k of 4 blocks: cosine attention
    assert all(isinstance(n.attrs["alpha"], list) for n in g.nodes if n.op == "matmul" and n.attrs["transpose_b"])
