"""nn.MultiheadAttention (torchvision's ViT) written out as the ViT path's ops: a small torchvision
VisionTransformer matches in float and runs bit-exactly at W8A8 and W4A8; masks and sequence-first
layouts are refused."""
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


def _small_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    m = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                          num_classes=10).eval()
    with torch.no_grad():  # away from the zero-initialised head and biases, so every term shows
        for p in m.parameters():
            p.normal_(0, 0.2)
    return m


@pytest.fixture(scope="module")
def calib_32(imagenet_calib_dir):
    return imagenet_images(imagenet_calib_dir, 32, 36)


def test_torchvision_vit_attention_bit_exact_real_images(calib_32):
    m = _small_vit()
    g = capture(m, (3, 32, 32))
    with torch.no_grad():
        ref = m(calib_32)
        assert torch.allclose(run_float(g, calib_32), ref, atol=1e-5 * float(ref.abs().max()))
    ops = [n.op for n in g.nodes]
    assert ops.count("matmul") == 4 and ops.count("softmax") == 2 and ops.count("take") == 2 * 3 + 1
    scores = g["encoder.layers.encoder_layer_0.self_attention.scores"]
    assert scores.attrs["transpose_b"] and scores.attrs["alpha"] == pytest.approx(8 ** -0.5)
    stats = collect_stats(g, [calib_32], progress=False)
    for w_bits in (8, 4):
        graph = lower(g, stats, QuantConfig(w_bits=w_bits, a_bits=8))
        be = assert_bitexact(graph, calib_32, f"W{w_bits}A8")
        assert be.ref_tensors[graph.outputs[0]].std() > 0


class _Attn(nn.Module):
    def __init__(self, batch_first=True, masked=False):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first)
        self.masked = masked

    def forward(self, x):
        t = x.flatten(2).transpose(1, 2)  # (N, 16, 8)
        mask = torch.zeros(16, 16, dtype=torch.bool) if self.masked else None
        return self.attn(t, t, t, attn_mask=mask, need_weights=False)[0]


def test_masked_or_sequence_first_attention_is_refused():
    with pytest.raises(QuantsimError, match="without batch_first"):
        capture(_Attn(batch_first=False).eval(), (8, 4, 4))
    with pytest.raises(QuantsimError, match="unmasked self-attention"):
        capture(_Attn(masked=True).eval(), (8, 4, 4))
