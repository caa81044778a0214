"""ViTs at low bits: RepQ-ViT post-LayerNorm reparameterization (quantsim.quant.reparam_ln) and
the log2 softmax quantizer with attention·V as shifts and adds (integer_ref.kernels_vit).

The trained CIFAR ViT (data/zoo/vit_tiny_patch8_32_cifar10, in the repository) on real cifar10
images: the reparameterized float network computes what the original does, its post-LayerNorm
channel ranges are narrower on held-out images, and the integer programs are bit-exact.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from integer_ref import kernels_vit as KV
from integer_ref import nonlinear as NL
from quantsim.emulate import kernels_vit as emulate_vit
from quantsim.emulate import nonlinear as NT
from quantsim.errors import QuantsimError
from quantsim.graph.capture import capture, run_float
from quantsim.quant.config import QuantConfig
from quantsim.quant.reparam_ln import channel_ranges, channel_spread, reparameterize
from quantsim.run import stages
from small_models import assert_bitexact, program_error

VIT_CKPT = Path(__file__).resolve().parents[1] / "data" / "zoo" / "vit_tiny_patch8_32_cifar10" / "model.pt"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
def plain_prep(trained_vit):
    model, x_cal, _ = trained_vit
    return stages.prepare(model, (3, 32, 32), list(x_cal.split(16)), progress=False)


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


# --- log2 softmax: codes, attention·V as shifts and adds ------------------------------------------

def _oracle_log2_matmul(codes: np.ndarray, v: np.ndarray, max_exp: int, v_zero_point: int = 0) -> np.ndarray:
    """A plain int64 loop: acc[h, i, n] = Σ_j (v[h, j, n] - zv) << (K - k[h, i, j]) for k <= K."""
    heads, m, j_len = codes.shape
    acc = np.zeros((heads, m, v.shape[-1]), np.int64)
    for h in range(heads):
        for i in range(m):
            for j in range(j_len):
                k = int(codes[h, i, j])
                if k <= max_exp:
                    acc[h, i] += (v[h, j].astype(np.int64) - v_zero_point) << (max_exp - k)
    return acc


@settings(max_examples=60, deadline=None)
@given(st.data(), st.integers(1, 3), st.integers(1, 6), st.integers(1, 9), st.integers(1, 5),
       st.integers(2, 8), st.integers(2, 16))
def test_log2_attention_v_equals_int64_oracle(data, heads, m, j_len, n, code_bits, v_bits):
    zero_code = 2**code_bits - 1
    max_exp = data.draw(st.integers(0, min(zero_code - 1, 62 - v_bits - 1)))
    codes = np.array(data.draw(st.lists(st.integers(0, zero_code), min_size=heads * m * j_len,
                                        max_size=heads * m * j_len)), np.int64).reshape(heads, m, j_len)
    hi = 2 ** (v_bits - 1) - 1
    v = np.array(data.draw(st.lists(st.integers(-hi, hi), min_size=heads * j_len * n, max_size=heads * j_len * n)),
                 np.int64).reshape(heads, j_len, n)
    zv = data.draw(st.sampled_from([0, 3]))
    want = _oracle_log2_matmul(codes, v, max_exp, zv)
    got = KV.log2_matmul_acc(codes, v, max_exp=max_exp, b_zero_point=zv)
    assert got.dtype == np.int64 and np.array_equal(got, want)
    got_t = emulate_vit.log2_matmul_acc(torch.as_tensor(codes), torch.as_tensor(v), max_exp=max_exp, b_zero_point=zv)
    assert np.array_equal(got_t.numpy(), want)
    # transpose_b reads V as (..., N, J)
    got_tb = KV.log2_matmul_acc(codes, np.swapaxes(v, -1, -2), max_exp=max_exp, b_zero_point=zv, transpose_b=True)
    assert np.array_equal(got_tb, want)


@settings(max_examples=40, deadline=None)
@given(st.data(), st.integers(1, 40), st.integers(2, 8), st.floats(1e-3, 0.5))
def test_log2_softmax_codes_round_in_the_log_domain(data, row, bits, scale):
    x = np.array(data.draw(st.lists(st.integers(-2000, 2000), min_size=2 * row, max_size=2 * row)),
                 np.int64).reshape(2, row)
    max_exp = data.draw(st.integers(0, min(2**bits - 2, NL.SOFTMAX_RECIP_BITS)))
    p = NL.softmax_params(scale, bits, "log2", max_exp)
    v = NL.softmax_fixed(x, p)
    codes = NL.softmax_int(x, p)
    assert np.array_equal(codes, NT.softmax_int(torch.as_tensor(x), p).numpy())  # the twins agree
    zero = 2**bits - 1
    assert ((codes >= 0) & ((codes <= max_exp) | (codes == zero))).all()
    # against float64: the nearest power of two by ratio (a tie band of 1e-9 left to either side)
    prob = v.astype(np.float64) / 2.0**p.recip_bits
    with np.errstate(divide="ignore"):
        t = -np.log2(np.where(prob > 0, prob, 1.0))
    nearest = np.floor(t + 0.5)
    clear = (np.abs(t - np.floor(t) - 0.5) > 1e-9) | (prob == 0)
    expect = np.where((prob == 0) | (nearest > max_exp), zero, nearest)
    assert np.array_equal(codes[clear], expect[clear].astype(np.int64))
    # a row's non-zero codes sum to at most √2 in value: attention·V stays inside log2_bound
    val = np.where(codes == zero, 0.0, 2.0 ** -codes.astype(np.float64))
    assert (val.sum(-1) <= math.sqrt(2) * (1 + 1e-9)).all()


@pytest.mark.parametrize("bits", [(4, 4), (8, 8)], ids=["W4A4", "W8A8"])
def test_log2_softmax_program_is_bit_exact_on_real_images(trained_vit, plain_prep, bits):
    x, prep = trained_vit[2], plain_prep
    graph = stages.quantize(prep, QuantConfig(w_bits=bits[0], a_bits=bits[1], softmax_quant="log2"))
    soft = [n for n in graph.nodes if n.op == "softmax"]
    attn_v = [n for n in graph.nodes if n.op == "matmul" and n.inputs[0] in {s.name for s in soft}]
    assert len(soft) == len(attn_v) == 12
    want_k = min(2 ** bits[1] - 2, 32 - 2 - (2 ** (bits[1] - 1) - 1).bit_length())  # 14 at A4, 23 at A8
    assert all(n.attrs["quant"] == "log2" and n.attrs["log2_max_exp"] == want_k for n in soft)
    assert all(n.attrs["a_log2"] and n.attrs["log2_max_exp"] == want_k for n in attn_v)
    be = assert_bitexact(graph, x[:4], f"{bits} log2 softmax")
    codes = be.ref_tensors[soft[0].name]
    assert codes.min() <= 1 and len(np.unique(codes)) > 3  # confident rows and a spread of exponents
    assert be.total_mismatches == 0 and not any(be.acc_overflows.values())


def test_hwmodel_counts_no_multiplications_for_log2_attention(trained_vit, plain_prep):
    from hwmodel.arch import load_accelerator
    from hwmodel.simulate import simulate_graph

    x, prep = trained_vit[2], plain_prep
    accel = load_accelerator("scalesim-32x32-os")
    rows = {}
    for sq in ("uniform", "log2"):
        graph = stages.quantize(prep, QuantConfig(w_bits=4, a_bits=4, softmax_quant=sq))
        taps = stages.integer_taps(graph, x[:1])
        rows[sq] = {r["layer"]: r for r in simulate_graph(graph, taps, accel).rows}
        rows[sq + "_graph"] = graph
    log2_graph = rows["log2_graph"]
    attn_v = [n.name for n in log2_graph.nodes if n.op == "matmul" and n.attrs["a_log2"]]
    assert len(attn_v) == 12
    for name in attn_v:
        lg, un = rows["log2"][name], rows["uniform"][name]
        terms = 3 * 17 * 17 * 64  # heads x queries x keys x head width, one image
        assert un["n_mac"] == terms and un["ops_shift_add"] == 0 and un["mult_toggles"] > 0
        assert lg["n_mac"] == 0 and lg["ops_mul"] == 0 and lg["mult_toggles"] == 0
        assert lg["ops_shift_add"] == terms
        assert lg["cycles"] == un["cycles"] and lg["dram_bursts"] == un["dram_bursts"]  # same mapping
        b_acc = 4 + 14 + 1  # V's 4 bits shifted by up to K = 14, plus the carry of the row sum
        assert lg["e_vec_pj"] == pytest.approx(terms * 2 * accel.energy.e_add32_pj * b_acc / 32)
        assert lg["e_fp32_pj"] == un["e_fp32_pj"]  # the float model multiplies either way
    # the log2 softmax ends in a bit length and a mantissa compare, not a rounding shift and clamp
    from hwmodel.vector_ops import vector_stages
    soft = next(n for n in log2_graph.nodes if n.op == "softmax")
    whats = [st.what for st in vector_stages("softmax", (1, 3, 17, 17), 16, soft.attrs)]
    assert "log2: bit length (6-step shift search)" in whats and ">> (P-out)" not in whats
    others = [k for k in rows["log2"] if k not in attn_v]
    assert sum(rows["log2"][k]["n_mac"] for k in others) == sum(rows["uniform"][k]["n_mac"] for k in others)


def test_log2_softmax_refused_where_it_cannot_apply():
    from quantsim.zoo.cifar_resnet import cifar_resnet20

    with pytest.raises(QuantsimError, match="the model has no softmax"):
        stages.prepare(cifar_resnet20().eval(), (3, 32, 32), [torch.randn(2, 3, 32, 32)], progress=False,
                       softmax_quant="log2")
    with pytest.raises(QuantsimError, match="needs the integer softmax"):
        QuantConfig(softmax_quant="log2", nonlinear="float")
    with pytest.raises(QuantsimError, match="softmax quantizer"):
        QuantConfig(softmax_quant="log4")


# --- configuration and command line ---------------------------------------------------------------

def test_command_line_options_reach_config_and_refuse_models_without_layernorm(tmp_path, tiny_ckpt, tiny_data, capsys):
    from quantsim.cli.simulate import build_parser, main
    from quantsim.run.options import RunOptions
    from quantsim.run.single import base_config

    ns = build_parser().parse_args(["vit_tiny_patch8_32", "--reparam-ln", "--softmax-quant", "log2"])
    cfg = base_config(RunOptions.from_namespace(ns))
    assert (cfg.reparam_ln, cfg.softmax_quant) == (True, "log2")
    assert (base_config(RunOptions()).reparam_ln, base_config(RunOptions()).softmax_quant) == (False, "uniform")
    assert QuantConfig.from_json(cfg.to_json()) == cfg
    common = ["--data", f"cifar10:{tiny_data}", "--calib", "4", "--eval", "4", "--no-progress"]
    for flags, why in ((["--reparam-ln"], "--reparam-ln needs a LayerNorm"),
                       (["--softmax-quant", "log2"], "the model has no softmax")):
        assert main([str(tiny_ckpt), *flags, *common, "--out", str(tmp_path / flags[0][2:])]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and why in err[0], err


# --- block reconstruction (quantsim.quant.reconstruct) on the ViT --------------------------------

VIT_BLOCK = QuantConfig(w_bits=4, a_bits=4, rounding="adaround", reconstruct="block", recon_iters=60)


def _first_units(prep, cfg: QuantConfig, n_units: int):
    """The first n_units reconstructed (the rest at nearest and calibration scales) and lowered."""
    from quantsim.quant import gptq, reconstruct
    from quantsim.quant.lower import lower, weight_scale_floors

    src = weight_scale_floors(prep.fgraph, prep.stats, cfg)
    rec = reconstruct.reconstruct(src, prep.stats, prep.calib, cfg, n_units=n_units)
    return rec, lower(gptq.with_codes(src, rec.codes), reconstruct.with_clips(prep.stats, rec.clips), cfg)


def test_vit_block_units_are_the_transformer_halves(plain_prep):
    from quantsim.quant import reconstruct

    parts = reconstruct.units(plain_prep.fgraph, "block")
    assert len(parts) == 2 + 2 * 12  # the patch conv, 12 x (attention half, MLP half), norm + head
    assert parts[1][0] == "patch_embed.flatten" and "blocks.0.norm1" in parts[1] and parts[1][-1] == "blocks.0.add"
    assert parts[2][0] == "blocks.0.norm2" and parts[2][-1] == "blocks.0.add#1"
    ops = {plain_prep.fgraph[m].op for m in parts[1]}
    assert {"layernorm", "matmul", "softmax", "add"} <= ops
    assert parts[-1][-1] == "head"


def test_vit_block_reconstruction_beats_nearest_bit_exact(trained_vit, plain_prep):
    """The patch conv, blocks.0's attention half and MLP half reconstructed at W4A4 on the 32 real
    calibration images: blocks.0's output in the integer program on 16 held-out test images has a
    smaller error than round-to-nearest's; the learned steps are the program's; bit-exact."""
    from quantsim.quant.lower import activation_qparams, lower

    x = trained_vit[2]
    rec, graph = _first_units(plain_prep, VIT_BLOCK, 3)
    nearest = lower(plain_prep.fgraph, plain_prep.stats, QuantConfig(w_bits=4, a_bits=4))
    err = {k: program_error(g, plain_prep.fgraph, x, "blocks.0.add#1") for k, g in (("nearest", nearest),
                                                                                    ("block", graph))}
    assert err["block"] < 0.7 * err["nearest"], err
    calib_q = activation_qparams(plain_prep.fgraph, plain_prep.stats, VIT_BLOCK)
    lowered = {n.name: n for n in graph.nodes}
    # learned: the 4-bit tensors of the three units (LayerNorm, qkv, attention·V, GELU outputs, ...);
    # fixed: softmax (2^-b) and the 16-bit residual stream / nonlinearity inputs
    assert {"blocks.0.norm1", "blocks.0.attn.qkv", "blocks.0.norm2", "blocks.0.mlp.act"} <= set(rec.scales)
    assert all(calib_q[k].bits < 16 and lowered[k].op != "softmax" for k in rec.scales)
    assert all(float(lowered[k].out.scale) == s for k, s in rec.scales.items())
    assert sum(rec.scales[k] != float(calib_q[k].scale) for k in rec.scales) >= 4  # they moved
    assert np.array_equal(lowered["blocks.0.mlp.fc1"].params["weight"], rec.codes["blocks.0.mlp.fc1"].codes)
    assert_bitexact(graph, x[:4], "W4A4 ViT block reconstruction")


def test_vit_block_reconstruction_with_reparam_ln_and_log2_softmax(trained_vit):
    """--reparam-ln and --softmax-quant log2 together: the attention half's reconstruction (its
    softmax on the log2 grid through the integer kernel) still lowers to a bit-exact program and
    beats nearest rounding on held-out images."""
    from quantsim.quant.lower import lower

    model, x_cal, x = trained_vit
    prep = stages.prepare(model, (3, 32, 32), list(x_cal.split(16)), progress=False, reparam_ln=True)
    cfg = QuantConfig(w_bits=4, a_bits=4, rounding="adaround", reconstruct="block", recon_iters=40,
                      reparam_ln=True, softmax_quant="log2")
    rec, graph = _first_units(prep, cfg, 2)
    nearest = lower(prep.fgraph, prep.stats, QuantConfig(w_bits=4, a_bits=4, reparam_ln=True, softmax_quant="log2"))
    err = {k: program_error(g, prep.fgraph, x, "blocks.0.add") for k, g in (("nearest", nearest), ("block", graph))}
    assert err["block"] < err["nearest"], err
    soft = next(n for n in graph.nodes if n.op == "softmax")
    assert soft.attrs["quant"] == "log2" and soft.name not in rec.scales
    assert_bitexact(graph, x[:4], "W4A4 ViT block reconstruction, reparam-ln + log2")


def test_vit_cached_reconstruction_is_reused(plain_prep, monkeypatch):
    from dataclasses import replace

    from quantsim.quant import reconstruct

    calls = []
    real = reconstruct.reconstruct_unit
    monkeypatch.setattr(reconstruct, "reconstruct_unit", lambda *a, **k: calls.append(1) or real(*a, **k))
    prep = replace(plain_prep, searched={})
    cfg = replace(VIT_BLOCK, recon_iters=2)
    first = stages.quantize(prep, cfg)
    assert len(calls) == 26
    second = stages.quantize(prep, cfg)
    assert len(calls) == 26  # cached: nothing learned again
    for a, b in zip(first.nodes, second.nodes):
        assert a.out.scale == b.out.scale and all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
