"""ViTs at low bits: RepQ-ViT post-LayerNorm reparameterization (quantsim.quant.reparam_ln) and
the log2 softmax quantizer with attention·V as shifts and adds (integer_ref.kernels_vit).

The trained CIFAR ViT (data/zoo/vit_tiny_patch8_32_cifar10, in the repository) on real cifar10
images: the reparameterized float network computes what the original does, its post-LayerNorm
channel ranges are narrower on held-out images, and the integer programs are bit-exact.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from quantsim.errors import QuantsimError
from quantsim.graph.capture import capture, run_float
from quantsim.quant.config import QuantConfig
from quantsim.quant.reparam_ln import channel_ranges, channel_spread, reparameterize
from quantsim.run import stages
from small_models import assert_bitexact

VIT_CKPT = Path(__file__).resolve().parents[1] / "data" / "zoo" / "vit_tiny_patch8_32_cifar10" / "model.pt"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Many small int64 ops: one torch thread is faster than two on the busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def trained_vit(cifar10_dir):
    """The trained CIFAR ViT, 32 real cifar10 train images (calibration) and 16 test images."""
    from quantsim.zoo import datasets
    from quantsim.zoo.models import load_cifar_vit
    from quantsim.zoo.vit import CIFAR10_VIT_PRE

    def imgs(role, n, seed):
        ds = datasets.deterministic_subset(datasets.build_dataset(f"cifar10:{cifar10_dir}", CIFAR10_VIT_PRE,
                                                                  role=role), n, seed)
        return torch.stack([ds[i][0] for i in range(len(ds))])

    model = load_cifar_vit("vit_tiny_patch8_32", str(VIT_CKPT))
    return model, imgs("calib", 32, 0), imgs("eval", 16, 1)


@pytest.fixture(scope="module")
def vit_graph(trained_vit):
    model, x_cal, _ = trained_vit
    return capture(model, (3, 32, 32))


# --- RepQ-ViT reparameterization ----------------------------------------------------------------

def test_reparameterized_network_equals_original_and_narrows_channels(trained_vit, vit_graph):
    _, x_cal, x = trained_vit
    g = vit_graph
    rp = reparameterize(g, list(x_cal.split(16)))
    norms = [n.name for n in g.nodes if n.op == "layernorm"]
    assert rp.norms == norms and len(norms) == 25 and not rp.skipped
    assert rp.readers["norm"] == ["head"]  # through the class-token take
    assert sorted(rp.readers["blocks.0.norm1"]) == ["blocks.0.attn.qkv"]
    # the original graph is untouched (a copy was rewritten)
    assert torch.equal(g["blocks.0.norm1"].weight, capture(trained_vit[0], (3, 32, 32))["blocks.0.norm1"].weight)
    ref, got = run_float(g, x), run_float(rp.graph, x)
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert (got.argmax(1) == ref.argmax(1)).all()
    # every post-LayerNorm tensor, observed node by node, matches too once the factors are undone
    a, b = {}, {}
    run_float(g, x, observe=lambda n, y: a.__setitem__(n.name, y) if n.op == "layernorm" else None)
    run_float(rp.graph, x, observe=lambda n, y: b.__setitem__(n.name, y) if n.op == "layernorm" else None)
    for name in norms:
        undone = b[name].double() * rp.factors[name] + rp.centres[name]
        assert torch.allclose(undone, a[name].double(), atol=1e-4 * float(a[name].abs().max())), name
    # on the calibration images every channel now spans [-mean h, mean h]: centred, one half range
    for name, (lo, hi) in channel_ranges(rp.graph, norms, list(x_cal.split(16))).items():
        half = (hi - lo) / 2
        assert torch.allclose((hi + lo) / 2, torch.zeros_like(lo), atol=1e-4 * float(half.max())), name
        assert torch.allclose(half, half.mean().expand_as(half), rtol=1e-4), name
    # on held-out images: the widest channel over the mean channel range shrinks for every LayerNorm
    before, after = channel_spread(g, [x], norms), channel_spread(rp.graph, [x], norms)
    assert all(after[k] < before[k] for k in norms), {k: (before[k], after[k]) for k in norms}
    assert sum(after.values()) < 0.6 * sum(before.values())


def test_reparameterized_program_is_bit_exact_and_prepare_is_per_setting(trained_vit):
    model, x_cal, x = trained_vit
    prep = stages.prepare(model, (3, 32, 32), list(x_cal.split(16)), progress=False, reparam_ln=True)
    assert prep.reparam is not None and len(prep.reparam.norms) == 25
    graph = stages.quantize(prep, QuantConfig(w_bits=4, a_bits=4, reparam_ln=True))
    assert_bitexact(graph, x[:4], "W4A4 reparam-ln")
    with pytest.raises(QuantsimError, match="prepared with it"):
        stages.quantize(prep, QuantConfig(w_bits=4, a_bits=4))


def test_reparam_refused_without_layernorm():
    from quantsim.zoo.cifar_resnet import cifar_resnet20

    m = cifar_resnet20().eval()
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(QuantsimError, match="--reparam-ln needs a LayerNorm"):
        stages.prepare(m, (3, 32, 32), [x], progress=False, reparam_ln=True)
