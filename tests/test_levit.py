"""timm's LeViT through capture: its linear + BatchNorm1d pairs (LinearNorm; the heads' NormLinear)
folded into one linear each, q·k * scale folded into the matmul, the subsample x[:, ::2, ::2] of the
token grid as option A's strided copy, the mean over the tokens as a global pool, and the mean of the
two heads, (x + x_dist) / 2, folded into both heads' linears. Checked against timm's forward in float,
then integer_ref against the torch twin on every node at W8A8 and W4A8 on real images. The integer
ops are existing ones (their oracle tests: test_vit.py, test_cnn_ops.py, test_kernels.py)."""
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

timm = pytest.importorskip("timm")

SIZE = 64  # token grids 4x4, 2x2, 1x1 (levit_128s's own size is 224: the benchmark)


def _levit(trained_like: bool) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("levit_128s", pretrained=False, img_size=SIZE).eval()
    if trained_like:  # BatchNorm statistics and attention biases away from timm's init (1, 0 and zeros)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                nn.init.normal_(m.weight, 1.0, 0.2)
                nn.init.normal_(m.bias, 0.0, 0.2)
            if hasattr(m, "attention_biases"):
                nn.init.normal_(m.attention_biases, 0.0, 1.0)
    return model


@pytest.mark.parametrize("trained_like", [True, False], ids=["trained-like", "timm-init"])
def test_levit_bitexact(imagenet_calib_dir, trained_like):
    model = _levit(trained_like)
    x = imagenet_images(imagenet_calib_dir, SIZE, 73)
    g = capture(model, (3, SIZE, SIZE))
    caches = [m.attention_bias_cache for m in model.modules() if hasattr(m, "attention_bias_cache")]
    assert len(caches) == 11 and not any(caches)  # the trace left no proxies in timm's bias caches
    with torch.no_grad():
        want = model(x)
    assert torch.allclose(run_float(g, x), want, atol=1e-5, rtol=1e-4), "capture is not timm's forward"
    ops = [n.op for n in g.nodes]
    assert "bn" not in ops and "scale" not in ops  # every BatchNorm1d and constant factor folded
    assert ops.count("shortcut_a") == 2 and ops.count("gap") == 1  # two subsamples; the head's token mean
    assert ops.count("add_const") == 11  # the attention biases of 11 attention layers
    stats = collect_stats(g, [x], progress=False)
    # timm's init: its all-zero attention biases lower at all (the width does not matter there)
    for w_bits in (8, 4) if trained_like else (8,):
        assert_bitexact(lower(g, stats, QuantConfig(w_bits=w_bits, a_bits=8)), x, f"levit W{w_bits}A8")


class _DivideBy(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.c = c

    def forward(self, x):
        return self.fc(x.flatten(1)) / self.c


def test_division_by_a_negative_constant_refused_by_name():
    with pytest.raises(QuantsimError, match=r"cannot lower truediv .*division other than by a positive constant"):
        capture(_DivideBy(-2.0).eval(), (4, 1, 1))


def test_division_folded_into_the_linear():
    model = _DivideBy(4.0).eval()
    g = capture(model, (4, 1, 1))
    x = torch.randn(2, 4, 1, 1)
    assert [n.op for n in g.nodes] == ["input", "flatten", "linear"]
    with torch.no_grad():
        assert torch.allclose(run_float(g, x), model(x), atol=1e-6)
