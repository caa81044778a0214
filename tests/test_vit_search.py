"""Similarity / ranking scale search (quantsim.quant.scale_search) wired into lowering, bias correction,
and the attention Kendall τ: on a tiny ViT (dim 32, 2 blocks, 17 tokens) and a tiny CNN."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from integer_ref.arith import qrange
from quantsim.quant import ranking as R
from quantsim.quant import quantizer as Q
from quantsim.quant import scale_search as S
from quantsim.quant.calibrate import TensorStats, clip_value, collect_stats
from quantsim.graph.capture import capture, run_float
from quantsim.quant.config import CALIB_METHODS, QuantConfig
from quantsim.quant.lower import _root, lower
from quantsim.run.stages import check_bitexact, prepare, quantize

STEPS = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny_vit(seed: int = 0):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2,
                              num_classes=10).eval()
    with torch.no_grad():  # non-trivial class token, position embedding and biases
        for name, p in model.named_parameters():
            if name in ("cls_token", "pos_embed") or name.endswith("bias"):
                p.copy_(0.3 * torch.randn(p.shape))
    return model


@pytest.fixture(scope="module")
def vit():
    model = _tiny_vit()
    x = torch.randn(12, 3, 32, 32)
    prep = prepare(model, (3, 32, 32), [x[:8]], progress=False)
    return model, prep, x[8:]


def _search(prep, cfg):
    g, split = S.split_qkv(prep.fgraph)
    stats = S._part_stats(g, prep.stats, prep.calib, [p for v in split.values() for p in v])
    return g, stats, S.search(g, stats, torch.cat(prep.calib), cfg)


def test_split_qkv_computes_the_same_and_gives_q_k_v_their_own_scales(vit):
    _, prep, x = vit
    g, split = S.split_qkv(prep.fgraph)
    assert split == {f"blocks.{b}.attn.qkv": [f"blocks.{b}.attn.qkv.{p}" for p in "qkv"] for b in range(2)}
    assert torch.equal(run_float(g, x), run_float(prep.fgraph, x))
    assert "blocks.0.attn.qkv" in prep.fgraph.index  # the prepared graph is left as it was
    ir = quantize(prep, QuantConfig(w_bits=6, a_bits=6, calib_method="similarity", search_steps=STEPS))
    mm = ir["blocks.0.attn.matmul"]
    q_name, k_name = (_root(g, i) for i in mm.inputs)
    assert (q_name, k_name) == ("blocks.0.attn.qkv.q", "blocks.0.attn.qkv.k")
    scales = {float(ir[f"blocks.0.attn.qkv.{p}"].out.scale) for p in "qkv"}
    assert len(scales) == 3


@pytest.mark.parametrize("gran", ["per-tensor", "per-channel"])
def test_searched_scales_lie_in_the_interval_and_reach_the_program(vit, gran):
    _, prep, _ = vit
    cfg = QuantConfig(w_bits=4, a_bits=4, granularity=gran, calib_method="similarity", search_steps=STEPS)
    g, stats, res = _search(prep, cfg)
    ir = lower(res.graph, res.stats, cfg)
    alphas = list(res.weight_alpha.values()) + list(res.act_alpha.values())
    assert all(R.SEARCH_LO <= a <= R.SEARCH_HI for a in alphas)
    assert any(a != 1.0 for a in alphas)  # at 4 bits the search moves away from min-max
    for name, a in res.weight_alpha.items():  # weights: exactly alpha x max / qmax
        w = g[name].weight.reshape(g[name].weight.shape[0], -1).abs()
        amax = w.amax(1) if gran == "per-channel" else w.max()
        want = (amax * a).double().numpy() / 7
        assert np.array_equal(np.asarray(ir[name].weight_q.scale), np.maximum(want, 1e-12))
    for name, a in res.act_alpha.items():  # operands: alpha x (min-max clip) / qmax
        qp = ir[name].out
        top = clip_value(stats[name], "minmax", *qrange(qp.bits, qp.signed))
        assert float(qp.scale) == max(a * top, 1e-8) / qp.qmax
        assert res.stats[name].clip_override == pytest.approx(a * top)
    assert "blocks.0.attn.softmax" not in res.act_alpha  # fixed 2^-b, not searched


def test_similarity_at_searched_scales_not_below_minmax(vit):
    _, prep, _ = vit
    cfg = QuantConfig(w_bits=4, a_bits=4, granularity="per-tensor", calib_method="similarity", search_steps=STEPS)
    g, stats, res = _search(prep, cfg)
    assert res.rounds <= R.MAX_ROUNDS and res.history == sorted(res.history)
    gs = S.GraphSearch(g, stats, torch.cat(prep.calib), cfg)  # all factors 1: the min-max scales
    start = {n.name: gs.layer_score(n) for n in gs.layers}
    assert sum(start.values()) == pytest.approx(res.start)
    gs.w_alpha.update(res.weight_alpha)
    for name, a in res.act_alpha.items():
        gs.tensors[name].alpha = a
    end = {n.name: gs.layer_score(n) for n in gs.layers}
    assert sum(end.values()) == pytest.approx(res.history[-1])
    assert sum(end.values()) > sum(start.values())


def test_single_linear_layer_similarity_beats_minmax_with_an_outlier():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 8)).eval().requires_grad_(False)
    x = torch.randn(64, 3, 4, 4)
    x[0, 0, 0, 0] = 15.0  # one outlier: min-max wastes the 4-bit grid on it
    g = capture(model, (3, 4, 4))
    stats = collect_stats(g, [x], progress=False)
    cfg = QuantConfig(w_bits=4, a_bits=4, granularity="per-tensor", calib_method="similarity", search_steps=15)
    res = S.search(g, stats, x, cfg)
    with torch.no_grad():
        ref = model(x)
    qmin, qmax = qrange(4, True)

    def corr(a_x, a_w):
        sx = a_x * clip_value(stats["input"], "minmax", qmin, qmax) / qmax
        w = model[1].weight
        sw = a_w * float(w.detach().abs().max()) / qmax
        out = nn.functional.linear(Q.fake_quant(torch.flatten(x, 1), sx, qmin, qmax), Q.fake_quant(w, sw, qmin, qmax), model[1].bias)
        return float(R.pearson(ref, out))

    assert res.act_alpha["input"] < 1.0  # the outlier is clipped
    assert corr(res.act_alpha["input"], res.weight_alpha["1"]) > corr(1.0, 1.0)


def test_ranking_adds_the_hinge_on_attention_scores_and_gamma_zero_is_similarity(vit, monkeypatch):
    _, prep, _ = vit
    cfg_r = QuantConfig(w_bits=4, a_bits=4, calib_method="ranking", search_steps=STEPS)
    cfg_s = QuantConfig(w_bits=4, a_bits=4, calib_method="similarity", search_steps=STEPS)
    g, split = S.split_qkv(prep.fgraph)
    stats = S._part_stats(g, prep.stats, prep.calib, [p for v in split.values() for p in v])
    x = torch.cat(prep.calib)
    gr, gs = S.GraphSearch(g, stats, x, cfg_r), S.GraphSearch(g, stats, x, cfg_s)
    scores = [n for n in gr.layers if n.op == "matmul" and n.attrs["transpose_b"]]
    assert len(scores) == 2 and set(gr.rank_rows) == {n.name for n in scores} and not gs.rank_rows
    n = scores[0]
    xs = [gr.operand(i) for i in n.inputs]
    out = gr._out(n, xs, None)
    pick, ref_rows = gr.rank_rows[n.name]
    hinge = float(R.ranking_loss(ref_rows, out.reshape(-1, out.shape[-1])[pick]))
    assert hinge > 0
    assert gr.score(n, xs) == pytest.approx(gs.score(n, xs) - R.GAMMA * hinge, rel=1e-9, abs=1e-12)
    other = next(m for m in gr.layers if m.is_mac)  # the hinge is only on the attention scores
    assert gr.layer_score(other) == gs.layer_score(other)
    monkeypatch.setattr(R, "GAMMA", 0.0)
    a, b = S.search(g, stats, x, cfg_r), S.search(g, stats, x, cfg_s)
    assert (a.weight_alpha, a.act_alpha, a.history) == (b.weight_alpha, b.act_alpha, b.history)


@pytest.mark.parametrize("cfg", [
    QuantConfig(w_bits=6, a_bits=6, granularity="per-tensor", calib_method="similarity", search_steps=STEPS),
    QuantConfig(w_bits=4, a_bits=8, granularity="per-channel", calib_method="ranking", search_steps=STEPS,
                bias_correction=True),
], ids=["similarity-W6A6-pt", "ranking-W4A8-pc-bc"])
def test_searched_program_is_bit_exact(vit, cfg):
    _, prep, x = vit
    graph = quantize(prep, cfg)
    assert any(n.name.endswith("attn.qkv.k") for n in graph.nodes)
    be = check_bitexact(graph, x)
    assert len(be.mismatches) == len(graph.nodes)
    assert be.total_mismatches == 0, {k: v for k, v in be.mismatches.items() if v}


def test_search_is_shared_between_nonlinear_modes(vit):
    _, prep, _ = vit
    cfg = QuantConfig(w_bits=6, a_bits=6, calib_method="similarity", search_steps=STEPS)
    a = quantize(prep, cfg)
    b = quantize(prep, QuantConfig(**{**cfg.to_json(), "nonlinear": "float"}))
    assert a.meta["config"]["nonlinear"] == "integer" and b.meta["config"]["nonlinear"] == "float"
    assert float(a["blocks.1.attn.qkv.v"].out.scale) == float(b["blocks.1.attn.qkv.v"].out.scale)


def test_bias_correction_removes_the_mean_output_error_on_a_cnn():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4)).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].running_var.uniform_(0.5, 2.0)
    x = torch.rand(16, 3, 8, 8)  # non-negative input: rounding shifts the mean
    prep = prepare(model, (3, 8, 8), [x], progress=False)
    cfg = QuantConfig(w_bits=3, a_bits=4, granularity="per-tensor", calib_method="similarity", search_steps=STEPS,
                      bias_correction=True)
    g, stats, cfg2 = S.searched(prep.fgraph, prep.stats, prep.calib, cfg)
    plain, _, _ = S.searched(prep.fgraph, prep.stats, prep.calib, QuantConfig(**{**cfg.to_json(),
                                                                               "bias_correction": False}))
    gs = S.GraphSearch(plain, stats, x, cfg2)  # float inputs and quantized operands, as corrected:
    gs.w_alpha = {m.name: m.attrs["weight_clip_alpha"] for m in plain.nodes if m.is_mac}
    for r, t in gs.tensors.items():  # the searched scales exactly as the lowering takes them
        t.fixed = max(stats[r].clip_override, 1e-8) / t.qmax
    # the convs: mean output error per channel, with quantized operands; a CNN's correction is taken
    # on the fake-quantized network's inputs (the second conv reads the first's corrected output)
    for name in ("0", "3"):
        n = plain[name]
        if name == "0":
            xq = gs.operand(n.inputs[0])
            wq0 = gs.weight(n)
            seq = S.run_node(g["0"], [xq], weight=wq0)  # the corrected first conv, quantized operands
        else:
            t = gs.tensors[gs.root[n.inputs[0]]]
            xq = t.quant(seq)
        wq = gs.weight(n)
        ref = S._mac(n, gs.values[n.inputs[0]], n.weight)
        before = (S._mac(n, xq, wq) - ref).mean(dim=(0, 2, 3)).abs().max()
        after = (S._mac(g[name], xq, wq) - ref).mean(dim=(0, 2, 3)).abs().max()
        assert after < 1e-5 < before
        assert not torch.equal(g[name].bias, n.bias)
    graph = quantize(prep, cfg)
    assert check_bitexact(graph, x[:4]).total_mismatches == 0


def test_kendall_tau_is_one_for_the_same_model_and_drops_at_2_bits(vit):
    _, prep, x = vit
    same = S.attention_kendall(prep.fgraph, None, x)
    assert same["tau"] == 1.0 and same["rows"] == 4 * 2 * 17 * 2 and len(same["per_block"]) == 2
    hi = S.attention_kendall(prep.fgraph, quantize(prep, QuantConfig(w_bits=16, a_bits=16)), x)["tau"]
    lo = S.attention_kendall(prep.fgraph, quantize(prep, QuantConfig(w_bits=2, a_bits=2)), x)["tau"]
    assert hi > 0.99 and lo < hi - 0.1
    # softmax outputs at 8 bits tie many small probabilities: fewer rows keep their order
    probs = S.attention_kendall(prep.fgraph, quantize(prep, QuantConfig(w_bits=8, a_bits=8)), x, on="probs")
    assert 0.5 < probs["tau"] < hi


def test_config_and_command_lines_take_the_search_methods():
    from quantsim.cli import pareto, simulate

    assert {"similarity", "ranking"} <= set(CALIB_METHODS)
    for parser in (simulate.build_parser(), pareto.build_parser()):
        assert parser.parse_args(["--calib-method", "ranking"]).calib_method == "ranking"
    args = simulate.build_parser().parse_args(["--calib-method", "similarity", "--bias-correction",
                                               "--search-steps", "20"])
    assert args.bias_correction and args.search_steps == 20
    from quantsim.errors import QuantsimError
    with pytest.raises(QuantsimError):
        QuantConfig(search_steps=1)
    # statistics without a searched clip keep the min-max one for the search methods
    st = TensorStats(-2.0, 3.0)
    assert clip_value(st, "ranking", -127, 127) == 3.0
    st.clip_override = 1.5
    assert clip_value(st, "minmax", -127, 127) == 1.5
