"""timm's MobileViT (quantsim.graph.mobilevit): its blocks traced batch-first at capture's static shape.

mobilevit_xxs at random init on real images: the captured graph computes timm's forward (the
unfold's token order checked against timm's own tokens), and integer_ref equals the torch twin on
every node at W8A8 and W4A8. The integer ops are existing ones (reshape / permute / take, linear,
layernorm, matmul, softmax, the SiLU table, concat); their oracle tests are in test_vit.py,
test_swin.py, test_cnn_ops.py and test_concat_pool_ops.py."""
from __future__ import annotations

import pytest
import torch

from quantsim.errors import QuantsimError
from quantsim.graph.capture import capture, run_float
from quantsim.quant.calibrate import collect_stats
from quantsim.quant.config import QuantConfig
from quantsim.quant.lower import lower
from small_models import assert_bitexact, imagenet_images

timm = pytest.importorskip("timm")

SIZE = 64  # maps of 8, 4 and 2 pixels at the three MobileViT blocks: whole 2x2 patches (the benchmark: 256)


@pytest.fixture(scope="module")
def xxs():
    torch.manual_seed(0)
    return timm.create_model("mobilevit_xxs", pretrained=False).eval()


@pytest.fixture(scope="module")
def captured(xxs, imagenet_calib_dir):
    return imagenet_images(imagenet_calib_dir, SIZE, 73), capture(xxs, (3, SIZE, SIZE))


def test_mobilevit_xxs_bitexact(xxs, captured):
    x, g = captured
    with torch.no_grad():
        want = xxs(x)
    assert torch.allclose(run_float(g, x), want, atol=1e-5, rtol=1e-4), "capture is not timm's forward"
    ops = [n.op for n in g.nodes]
    # 9 transformer layers (2 + 4 + 3): q·kᵀ and attn·v each; each block's conv branch joined by a concat
    assert ops.count("matmul") == 18 and ops.count("softmax") == 9 and ops.count("concat") == 3
    assert "scale" not in ops  # q * scale folded into the matmul
    stats = collect_stats(g, [x], progress=False)
    for w_bits in (8, 4):
        graph = lower(g, stats, QuantConfig(w_bits=w_bits, a_bits=8))
        assert_bitexact(graph, x, f"mobilevit_xxs W{w_bits}A8")


def test_unfold_is_timms_token_order(xxs, captured):
    """The first transformer layer's input: timm's (B·P, N, C) tokens are ours, (B, P, N, C) (equal up
    to float rounding: our conv_kxk has its BatchNorm folded)."""
    x, g = captured
    block = xxs.stages[2][1]
    seen = {}
    hook = block.transformer[0].norm1.register_forward_pre_hook(lambda _m, a: seen.__setitem__("timm", a[0]))
    try:
        with torch.no_grad():
            xxs(x)
    finally:
        hook.remove()
    ln = g["stages.2.1.transformer.0.norm1"]
    run_float(g, x, observe=lambda n, y: seen.__setitem__("ours", y) if n.name == ln.inputs[0] else None)
    ours = seen["ours"]
    assert ours.shape == (2, 4, (SIZE // 8 // 2) ** 2, 64)  # (B, 2x2 patch pixels, patches, C)
    theirs = seen["timm"]
    assert torch.allclose(ours.reshape(-1, *ours.shape[2:]), theirs, atol=1e-5, rtol=1e-5)
    # and not merely as a set: a wrong patch order would move the values
    assert not torch.allclose(ours.transpose(1, 2).reshape(-1, *ours.shape[2:]), theirs, atol=1e-3)


def test_capture_restores_the_forwards(xxs, captured):
    patched = [name for name, m in xxs.named_modules() if "forward" in vars(m)]
    assert patched == []


def test_not_whole_patches_refused_by_name(xxs):
    # 96 px: the last block's map is 3x3, which timm resamples to 4x4 (bilinear: no integer op)
    with pytest.raises(QuantsimError) as err:
        capture(xxs, (3, 96, 96))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("cannot lower stages.4.1 (MobileVitBlock): its 3x3 map is not a whole number of 2x2 patches")
    assert [name for name, m in xxs.named_modules() if "forward" in vars(m)] == []


def test_attention_with_qk_norms_refused_by_name():
    model = timm.create_model("mobilevit_xxs", pretrained=False).eval()
    model.stages[3][1].transformer[2].attn.q_norm = torch.nn.LayerNorm(20)
    with pytest.raises(QuantsimError, match=r"^cannot lower stages\.3\.1\.transformer\.2\.attn: attention with q/k norms"):
        capture(model, (3, 64, 64))
