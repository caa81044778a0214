"""ConvNeXt (torchvision): LayerNorm2d as permute -> layernorm -> permute, the per-channel layer scale
folded into the linear before it, GELU on the ViT path's integer kernel; a small ConvNeXt built from
torchvision's own blocks bit-exact at W8A8 and W4A8 on real images."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from quantsim.errors import QuantsimError
from quantsim.graph.capture import capture, run_float
from quantsim.quant.calibrate import collect_stats
from quantsim.quant.config import QuantConfig
from quantsim.quant.lower import lower
from small_models import assert_bitexact, imagenet_images


def _small_convnext() -> nn.Module:
    """torchvision's ConvNeXt class with two small stages: the same CNBlock, LayerNorm2d, stem and head."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt
    torch.manual_seed(0)
    m = ConvNeXt([CNBlockConfig(24, 48, 2), CNBlockConfig(48, None, 1)], stochastic_depth_prob=0.1,
                 num_classes=10).eval()
    with torch.no_grad():  # layer scales far from their 1e-6 init, so a wrong fold would show
        for mod in m.modules():
            if hasattr(mod, "layer_scale"):
                mod.layer_scale.uniform_(0.5, 1.5)
            if isinstance(mod, nn.LayerNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    return m


def test_layernorm2d_and_layer_scale_capture():
    m = _small_convnext()
    g = capture(m, (3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = m(x)
        assert torch.allclose(run_float(g, x), ref, atol=1e-4 * float(ref.abs().max()))
    ops = [n.op for n in g.nodes]
    assert "layerscale" not in ops  # folded into each block's second linear
    # stem, downsample and head LayerNorm2d, one LayerNorm per block: each between two permutes
    assert ops.count("layernorm") == 3 + 3 and ops.count("gelu") == 3
    ln = g["features.0.1.ln"]
    assert g[ln.inputs[0]].attrs["perm"] == [0, 2, 3, 1] and g.consumers(ln.name)[0].attrs["perm"] == [0, 3, 1, 2]


def test_layer_scale_after_no_linear_is_refused():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.rand(3, 1, 1) + 0.5)

        def forward(self, x):
            return self.scale * x.permute(0, 1, 3, 2)
    with pytest.raises(QuantsimError, match="per-channel scale that does not follow a linear or conv"):
        capture(M().eval(), (3, 4, 4))


@pytest.fixture(scope="module")
def calib_48(imagenet_calib_dir):
    return imagenet_images(imagenet_calib_dir, 48, 55)


def test_small_convnext_bit_exact_real_images(calib_48):
    m = _small_convnext()
    g = capture(m, (3, 48, 48))
    stats = collect_stats(g, [calib_48], progress=False)
    for w_bits in (8, 4):
        graph = lower(g, stats, QuantConfig(w_bits=w_bits, a_bits=8))
        assert {"layernorm", "gelu", "permute"} <= {n.op for n in graph.nodes}
        be = assert_bitexact(graph, calib_48, f"W{w_bits}A8")
        assert be.ref_tensors[graph.outputs[0]].std() > 0
