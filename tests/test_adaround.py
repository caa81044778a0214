"""AdaRound (quantsim.quant.adaround): below round-to-nearest on the layer reconstruction error on
real data, codes in range at the lowering's scale, bit-exact programs, the cache, reproducibility."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from integer_ref.arith import qrange

from quantsim.errors import QuantsimError
from quantsim.graph.capture import FloatGraph, FNode, run_node
from quantsim.quant import adaround, gptq
from quantsim.quant.config import QuantConfig
from quantsim.quant.lower import lower, mac_input_quantizer
from quantsim.run import stages
from small_models import SmallConvNet, resnet20_prepared


def test_rectified_sigmoid_starts_at_the_fraction_and_beta_anneals():
    frac = torch.tensor([0.0, 0.1, 0.5, 0.93, 0.999])
    assert torch.allclose(adaround.rectified_sigmoid(adaround.initial_v(frac)), frac, atol=1e-6)
    assert adaround.beta_at(0, 100) is None and adaround.beta_at(19, 100) is None  # 20 % warm-up
    assert adaround.beta_at(20, 100) == 20.0
    assert adaround.beta_at(99, 100) == pytest.approx(2.0 + 18.0 / 80)
    betas = [adaround.beta_at(i, 100) for i in range(20, 100)]
    assert all(a > b for a, b in zip(betas, betas[1:]))
    # the regulariser is 0 at h in {0, 1} and largest at 0.5
    h = torch.tensor([0.0, 1.0])
    assert float(adaround.regulariser(h, 2.0)) == 0.0
    assert float(adaround.regulariser(torch.tensor([0.5]), 2.0)) == 1.0


def test_config_and_graph_errors():
    with pytest.raises(QuantsimError, match="bias correction"):
        QuantConfig(rounding="adaround", bias_correction=True)
    with pytest.raises(QuantsimError, match="recon-iters"):
        QuantConfig(rounding="adaround", recon_iters=0)
    with pytest.raises(QuantsimError, match="rounds conv and linear weights only"):
        adaround.check_layer(FNode("ln", "layernorm", ["x"], {"eps": 1e-6}, torch.ones(4)))
    vit = FloatGraph([FNode("x", "input", [], {}), FNode("fc", "linear", ["x"], {}, torch.randn(4, 4)),
                      FNode("sm", "softmax", ["fc"], {})], "sm", (4,))
    with pytest.raises(QuantsimError, match="AdaRound handles CNNs.*gptq"):
        adaround.adaround_codes(vit, {}, [torch.randn(2, 4)], QuantConfig(rounding="adaround"))


# --- a small network: the pipeline, the cache, the seed ----------------------------------------------


@pytest.fixture(scope="module")
def small_prep():
    torch.manual_seed(0)
    model = SmallConvNet().eval()
    calib = list(torch.randn(64, 3, 12, 12).split(32))
    return stages.prepare(model, (3, 12, 12), calib, progress=False)


SMALL = QuantConfig(w_bits=3, a_bits=8, rounding="adaround", recon_iters=150)


def test_cache_is_reused_not_recomputed(small_prep, monkeypatch):
    calls = []
    real = adaround.adaround_layer

    def counting(*a, **k):
        calls.append(a[0].name)
        return real(*a, **k)

    monkeypatch.setattr(adaround, "adaround_layer", counting)
    prep = replace(small_prep, searched={})
    first = stages.quantize(prep, SMALL)
    n_layers = len(prep.fgraph.mac_nodes())
    assert len(calls) == n_layers
    second = stages.quantize(prep, SMALL)
    assert len(calls) == n_layers  # the cached codes, no layer optimised again
    for a, b in zip(first.nodes, second.nodes):
        if "weight" in a.params:
            assert np.array_equal(a.params["weight"], b.params["weight"])
    stages.quantize(prep, replace(SMALL, recon_seed=1))  # another config: recomputed
    assert len(calls) == 2 * n_layers


def test_fixed_seed_gives_identical_codes(small_prep):
    a = adaround.adaround_codes(small_prep.fgraph, small_prep.stats, small_prep.calib, SMALL)
    b = adaround.adaround_codes(small_prep.fgraph, small_prep.stats, small_prep.calib, SMALL)
    c = adaround.adaround_codes(small_prep.fgraph, small_prep.stats, small_prep.calib, replace(SMALL, recon_seed=7))
    assert a.keys() == b.keys() == {n.name for n in small_prep.fgraph.mac_nodes()}
    for k in a:
        assert a[k].codes.dtype == np.int64
        assert np.array_equal(a[k].codes, b[k].codes)
        assert np.array_equal(a[k].scale, b[k].scale)
    # another seed draws other batches: some weight rounds the other way (the comparison bites)
    assert any(not np.array_equal(a[k].codes, c[k].codes) for k in a)


def test_small_program_is_bit_exact_and_carries_the_codes(small_prep):
    prep = replace(small_prep, searched={})
    graph = stages.quantize(prep, SMALL)
    near = stages.quantize(prep, replace(SMALL, rounding="nearest"))
    codes = adaround.codes_of(adaround.rounded(prep.fgraph, prep.stats, prep.calib, SMALL, prep.searched))
    differ = 0
    for node, ref in zip(graph.nodes, near.nodes):
        if node.name in codes:
            assert np.array_equal(node.params["weight"], codes[node.name])
            assert np.array_equal(node.weight_q.scale, ref.weight_q.scale)
            assert np.abs(node.params["weight"]).max() <= 3
            differ += int((node.params["weight"] != ref.params["weight"]).sum())
    assert differ > 0
    assert stages.check_bitexact(graph, torch.randn(4, 3, 12, 12)).total_mismatches == 0


# --- CIFAR-10 ResNet-20, real calibration images ------------------------------------------------

@pytest.fixture(scope="module")
def r20_real(resnet20_checkpoint: Path, cifar10_dir: Path):
    return resnet20_prepared(resnet20_checkpoint, cifar10_dir, 64, 32)


def _inputs(prep, cfg, x: torch.Tensor, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(the layer's input in the fake-quantized float network, its float output) on images x."""
    fq = mac_input_quantizer(prep.fgraph, prep.stats, cfg)
    vals: dict[str, torch.Tensor] = {}
    for n in prep.fgraph.nodes:
        vals[n.name] = x if n.op == "input" else run_node(n, [vals[i] for i in n.inputs])
        if n.name == layer:
            return fq(n, vals[n.inputs[0]]), vals[n.name]
    raise KeyError(layer)


@pytest.mark.parametrize("layer", ["layer2.0.conv1", "linear"])
def test_adaround_beats_nearest_on_the_layer_output_resnet20(r20_real, layer):
    """f(W x) vs f(W̃ x̂) on 16 held-out test images, AdaRound vs nearest at the same 4-bit scale."""
    prep, x_eval = r20_real
    cfg = QuantConfig(w_bits=4, a_bits=8, rounding="adaround", recon_iters=300)
    lc = adaround.adaround_codes(prep.fgraph, prep.stats, prep.calib, cfg, layers=[layer])[layer]
    n = prep.fgraph[layer]
    near, scale = gptq.weight_scale(n, 4, cfg)
    assert np.array_equal(lc.scale, scale)
    assert np.abs(lc.codes).max() <= qrange(4, True)[1]
    assert int((lc.codes != near).sum()) > 0
    xq, y = _inputs(prep, cfg, x_eval, layer)
    err = {}
    for name, q in (("nearest", near), ("adaround", lc.codes)):
        w = gptq.dequantized(n, gptq.LayerCodes(q, scale, 4, 0.0))
        err[name] = float(adaround.reconstruction(run_node(n, [xq], weight=w), y))
    assert err["adaround"] < 0.9 * err["nearest"], err


def test_resnet20_adaround_program_bit_exact(r20_real):
    """The first three MAC layers AdaRound-ed (the rest at nearest), lowered, W4A4: codes in range
    at the lowering's scales and integer_ref equals the emulation on 4 real images."""
    prep, x_eval = r20_real
    cfg = QuantConfig(w_bits=4, a_bits=4, rounding="adaround", recon_iters=40)
    names = [n.name for n in prep.fgraph.mac_nodes()][:3]
    codes = adaround.adaround_codes(prep.fgraph, prep.stats, prep.calib, cfg, layers=names)
    graph = lower(gptq.with_codes(prep.fgraph, codes), prep.stats, cfg)
    near = lower(prep.fgraph, prep.stats, replace(cfg, rounding="nearest"))
    for node, ref in zip(graph.nodes, near.nodes):
        if node.name in codes:
            assert np.array_equal(node.params["weight"], codes[node.name].codes)
            assert np.array_equal(node.weight_q.scale, ref.weight_q.scale)
            assert np.abs(node.params["weight"]).max() <= 7
    assert stages.check_bitexact(graph, x_eval[:4]).total_mismatches == 0


def test_command_line_reaches_the_config(tmp_path, capsys):
    from quantsim.cli.simulate import build_parser, main
    from quantsim.run.options import RunOptions
    from quantsim.run.single import base_config

    ns = build_parser().parse_args(["cifar_resnet20", "--rounding", "adaround", "--recon-iters", "64", "--seed", "5"])
    cfg = base_config(RunOptions.from_namespace(ns), 4, 4)
    assert (cfg.rounding, cfg.recon_iters, cfg.recon_seed) == ("adaround", 64, 5)
    assert base_config(RunOptions()).recon_iters == QuantConfig().recon_iters
    assert main(["cifar_resnet20", "--rounding", "adaround", "--bias-correction", "--out", str(tmp_path / "r")]) == 2
    assert "error: bias correction" in capsys.readouterr().err
    assert main(["cifar_resnet20", "--rounding", "adaround", "--recon-iters", "0", "--out", str(tmp_path / "s")]) == 2
    assert "error: --recon-iters 0" in capsys.readouterr().err
