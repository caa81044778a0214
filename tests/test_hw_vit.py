"""hwmodel on Vision Transformer ops: the attention matmuls (both operands activations) and the
integer nonlinearities (softmax, GELU, LayerNorm) on the vector unit, unit by unit and end to
end on a small lowered ViT (one block, embed 32, two heads) through the command line."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from hwmodel import load_accelerator, simulate_graph
from hwmodel.mapping import map_linear, map_matmul, map_node
from hwmodel.simulate import ROW_COLUMNS, batch1_shapes, matmul_toggles
from hwmodel.vector_ops import KINDS, e_op, op_counts, stages_energy, vector_stages
from integer_ref.ir import QParams
from quantsim.run import stages as pipeline
from quantsim.quant.config import QuantConfig

WS = load_accelerator("scalesim-32x32-ws")
PRESETS = ["scalesim-32x32-ws", "scalesim-32x32-os", "edge-16x16-ws", "hbm-64x64-os"]
COUNT_KEYS = ["n_mac", "folds", "cycles", "sram_rd_ifmap", "sram_rd_filter", "sram_rd_ofmap", "sram_wr_ofmap",
              "sram_rd_ifmap_bytes", "sram_rd_filter_bytes", "sram_rd_ofmap_bytes", "sram_wr_ofmap_bytes",
              "dram_rd_ifmap", "dram_rd_filter", "dram_rd_ofmap", "dram_wr_ofmap", "dram_rd_ifmap_bytes",
              "dram_rd_filter_bytes", "dram_rd_ofmap_bytes", "dram_wr_ofmap_bytes"]


def _tiny_vit(embed=32, depth=1, heads=2):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=embed, depth=depth, num_heads=heads,
                             num_classes=10).eval()


@pytest.fixture(scope="module")
def vit():
    """A one-block ViT lowered at W8A8 and W4A4 (integer nonlinearities), taps on 2 images."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    prep = pipeline.prepare(_tiny_vit(), (3, 32, 32), [torch.randn(4, 3, 32, 32)], progress=False)
    x = torch.randn(2, 3, 32, 32)
    out = {}
    for b in (8, 4):
        g = pipeline.quantize(prep, QuantConfig(w_bits=b, a_bits=b))
        out[b] = (g, pipeline.integer_taps(g, x))
    torch.set_num_threads(n)
    return out


# --- attention matmuls ------------------------------------------------------------------------

@pytest.mark.parametrize("heads,m,k,n", [(1, 17, 16, 17), (3, 65, 64, 65), (3, 197, 64, 197), (2, 40, 300, 70)])
def test_matmul_macs_are_mkn_per_head_times_heads(heads, m, k, n):
    qk = map_matmul((1, heads, m, k), (1, heads, n, k), WS, transpose_b=True)
    av = map_matmul((1, heads, m, k), (1, heads, k, n), WS)
    for r in (qk, av):
        assert r["n_mac"] == heads * m * k * n
        assert (r["gemm_m"], r["gemm_k"], r["gemm_n"], r["groups"]) == (m, k, n, heads)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("dram_model", ["reuse", "scalesim"])
@pytest.mark.parametrize("heads,m,k,n,bits", [(1, 17, 16, 17, (8, 8, 16)), (3, 65, 64, 65, (8, 8, 16)),
                                              (3, 197, 197, 64, (8, 8, 8)), (2, 197, 64, 197, (4, 6, 8))])
def test_matmul_traffic_is_that_of_linear_layers_holding_the_second_operand(preset, dram_model, heads, m, k, n, bits):
    """Each head maps exactly like a linear layer whose weight (N, K) is that head's second
    operand, held at the operand's activation width; heads add up."""
    accel = load_accelerator(preset)
    a_bits, b_bits, out_bits = bits
    mm = map_matmul((1, heads, m, k), (1, heads, n, k), accel, transpose_b=True, a_bits=a_bits,
                    b_bits=b_bits, out_bits=out_bits, dram_model=dram_model)
    one = map_linear((m, k), (n, k), accel, x_bits=a_bits, w_bits=b_bits, out_bits=out_bits, dram_model=dram_model)
    for key in COUNT_KEYS:
        if key.endswith("_bytes"):  # bytes pack per tensor: at most one partial byte per head apart
            assert heads * one[key] - heads < mm[key] <= heads * one[key], key
        else:
            assert mm[key] == heads * one[key], key
    if heads == 1:
        assert {c: mm[c] for c in one} == one
    # transpose_b changes the layout of b in memory, not the GEMM: same counts
    mm_nt = map_matmul((1, heads, m, k), (1, heads, k, n), accel, a_bits=a_bits, b_bits=b_bits,
                       out_bits=out_bits, dram_model=dram_model)
    assert {c: mm_nt[c] for c in COUNT_KEYS} == {c: mm[c] for c in COUNT_KEYS}


def test_matmul_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="do not match"):
        map_matmul((1, 2, 5, 4), (1, 2, 3, 5), WS)
    with pytest.raises(ValueError, match="do not match"):
        map_matmul((1, 2, 5, 4), (1, 3, 4, 5), WS)


def test_matmul_toggles_hand_count():
    """Two heads, M=3, K=1, N=1 on a weight-stationary array. Head 0: a = [1, 0, 1] streams past
    the PE holding b = 3; head 1: a = [-1, -1, 2] (8-bit two's complement: 0xFF, 0xFF, 0x02)
    past b = -2 (0xFE). Activation toggles, each stream from 0: head 0: 1 + 1 + 1 = 3;
    head 1: 8 + 0 + popcount(0xFF ^ 0x02) = 8 + 0 + 7 = 15. Weight loads from 0: popcount(3) = 2,
    popcount(0xFE) = 7. Total 3 + 15 + 2 + 7 = 27."""
    a = np.array([[[1], [0], [1]], [[-1], [-1], [2]]])      # (heads, M, K)
    b_t = np.array([[[3]], [[-2]]])                           # (heads, N, K): transpose_b
    q8 = QParams(8, True, 1.0)
    t = matmul_toggles(a, b_t, q8, q8, True, WS)
    assert t["n_mac"] == 6
    assert t["mult_toggles"] == 27
    # sign-magnitude: -1 = 0x81, 2 = 0x02, -2 = 0x82: head 1 stream 2 + 0 + popcount(0x83) = 5,
    # weight popcount(0x82) = 2: 3 + 5 + 2 + 2 = 12
    assert t["mult_toggles_signmag"] == 12
    # without transpose_b the same values give the same count
    assert matmul_toggles(a, np.swapaxes(b_t, -1, -2), q8, q8, False, WS)["mult_toggles"] == 27
    # an unsigned first operand (softmax output) keeps plain binary: 4-bit 0b1010 = 10 streams once
    u4 = QParams(4, False, 1.0)
    t = matmul_toggles(np.array([[[10]]]), np.array([[[0]]]), u4, q8, True, WS)
    assert t["mult_toggles"] == 2


def test_matmul_rows_in_a_lowered_vit(vit):
    g, taps = vit[8]
    res = simulate_graph(g, taps, WS)
    rows = {r["layer"]: r for r in res.rows}
    mms = [n for n in g.nodes if n.op == "matmul"]
    assert len(mms) == 2
    for n in mms:
        r = rows[n.name]
        a, b = (np.shape(taps[i])[1:] for i in n.inputs)  # (heads, M, K), (heads, N|K, K|N)
        n_out = b[-2] if n.attrs.get("transpose_b") else b[-1]
        assert r["n_mac"] == a[0] * a[1] * a[2] * n_out
        assert r["x_bits"] == g[n.inputs[0]].out.bits and r["w_bits"] == g[n.inputs[1]].out.bits
        assert r["mult_toggles"] > 0 and r["e_mac_pj"] > 0 and r["e_vec_pj"] == 0
        # toggles come from the real operands: the first image's count, recomputed here
        t = matmul_toggles(taps[n.inputs[0]][0], taps[n.inputs[1]][0], g[n.inputs[0]].out,
                           g[n.inputs[1]].out, bool(n.attrs.get("transpose_b")), WS)
        assert r["mult_toggles"] == t["mult_toggles"]
    # the softmax output (unsigned) feeds attn @ v as its streamed operand
    av = rows[mms[1].name]
    assert g[mms[1].inputs[0]].op == "softmax" and not g[mms[1].inputs[0]].out.signed
    assert av["dram_rd_filter"] == int(np.prod(np.shape(taps[mms[1].inputs[1]])[1:]))


# --- nonlinear ops on the vector unit ---------------------------------------------------------

def _vector_nodes(g):
    return {op: next(n for n in g.nodes if n.op == op) for op in ("softmax", "gelu", "layernorm")}


@pytest.mark.parametrize("op", ["softmax", "gelu", "layernorm"])
def test_vector_op_counts_scale_exactly_with_elements(vit, op):
    g, taps = vit[8]
    node = _vector_nodes(g)[op]
    shape = np.shape(taps[node.inputs[0]])[1:]
    in_bits = g[node.inputs[0]].out.bits
    one = vector_stages(op, shape, in_bits, node.attrs)
    for mult in (2, 5):
        more = vector_stages(op, (mult * shape[0], *shape[1:]), in_bits, node.attrs)
        assert [(s.kind, s.bits, s.steps, s.what) for s in more] == [(s.kind, s.bits, s.steps, s.what) for s in one]
        assert [s.count for s in more] == [mult * s.count for s in one]
        c1, cm = op_counts(one), op_counts(more)
        assert all(cm[k] == mult * c1[k] for k in c1)
        assert stages_energy(WS, more) == pytest.approx(mult * stages_energy(WS, one))
    counts = op_counts(one)
    n = int(np.prod(shape))
    assert counts["n_vec_ops"] >= 10 * n  # a dozen-odd integer operations per element
    if op == "layernorm":  # one square root and two divisions (mean, reciprocal) per row
        rows = n // shape[-1]
        assert counts["ops_sqrt"] == rows and counts["ops_div"] == 2 * rows
    if op == "softmax":  # one reciprocal per row, one range-reduction division per element
        assert counts["ops_div"] == n + n // shape[-1]
    if op == "gelu":
        assert counts["ops_div"] == counts["ops_sqrt"] == 0


def test_vector_op_energy_goes_up_with_width(vit):
    g, taps = vit[8]
    for kind in KINDS:
        assert e_op(WS, kind, 8) < e_op(WS, kind, 16) < e_op(WS, kind, 32)
    # Horowitz anchors the presets cite: 32-bit add = e_add32, 8x8 multiply = e_mac8
    assert e_op(WS, "add", 32) == WS.energy.e_add32_pj and e_op(WS, "mul", 8) == WS.energy.e_mac8_pj
    for op, node in _vector_nodes(g).items():
        shape = np.shape(taps[node.inputs[0]])[1:]
        e = [stages_energy(WS, vector_stages(op, shape, b, node.attrs)) for b in (8, 12, 16)]
        assert e[0] < e[1] < e[2], op
        wider_out = dict(node.attrs, out_bits=16)
        assert stages_energy(WS, vector_stages(op, shape, 16, wider_out)) > e[2], op


def test_vector_op_rows_memory_and_energy(vit):
    g, taps = vit[8]
    shapes = batch1_shapes(g, taps)
    res = {r["layer"]: r for r in simulate_graph(g, taps, WS).rows}
    for op, node in _vector_nodes(g).items():
        r = res[node.name]
        n_in = int(np.prod(shapes[node.inputs[0]]))
        n_out = int(np.prod(shapes[node.name]))
        assert r["n_elem"] == n_out == n_in and r["n_mac"] == 0 and r["mult_toggles"] == 0
        # read the input, write the output, once each, at their declared widths
        in_bits = g[node.inputs[0]].out.bits
        assert r["dram_rd_ifmap"] == n_in and r["dram_rd_ifmap_bytes"] == -(-n_in * in_bits // 8)
        assert r["dram_wr_ofmap"] == n_out and r["dram_wr_ofmap_bytes"] == -(-n_out * node.out.bits // 8)
        stages = vector_stages(op, shapes[node.inputs[0]], in_bits, node.attrs)
        assert r["n_vec_ops"] == op_counts(stages)["n_vec_ops"] > 0
        assert r["e_vec_pj"] == pytest.approx(stages_energy(WS, stages)) and r["e_vec_pj"] > 0
        assert r["e_mac_pj"] == pytest.approx(r["e_vec_pj"])
        assert r["cycles"] >= -(-r["n_vec_steps"] // WS.cols)
        if op == "layernorm":  # gamma (16-bit) and beta come in through the filter buffer
            assert r["dram_rd_filter"] == 2 * node.params["gamma"].size
        else:
            assert r["dram_rd_filter"] == 0
    # float-mode nonlinearities: traffic only, no integer stages
    node = _vector_nodes(g)["softmax"]
    fl = dataclasses.replace(node, attrs={**node.attrs, "mode": "float"})
    assert map_node(g, fl, shapes, WS)["n_vec_ops"] == 0


def test_take_reads_only_the_slice_it_keeps(vit):
    g, taps = vit[8]
    shapes = batch1_shapes(g, taps)
    for node in (n for n in g.nodes if n.op == "take"):
        r = map_node(g, node, shapes, WS)
        assert r["dram_rd_ifmap"] == int(np.prod(shapes[node.name])) < int(np.prod(shapes[node.inputs[0]]))


# --- whole program ----------------------------------------------------------------------------

def test_every_node_has_a_row_and_totals_add_up(vit):
    g, taps = vit[8]
    res = simulate_graph(g, taps, WS)
    assert [r["layer"] for r in res.rows] == [n.name for n in g.nodes]
    for r in res.rows:
        for c in ROW_COLUMNS:
            assert c in r, c
        assert "vec_stages" not in r
        assert r["e_total_pj"] == pytest.approx(r["e_mac_pj"] + r["e_sram_pj"] + r["e_dram_pj"])
        if r["op"] in ("conv2d", "linear", "matmul"):
            assert r["n_mac"] > 0 and r["mult_toggles"] > 0
        if r["op"] not in ("reshape", "quantize"):
            assert r["e_total_pj"] > 0 and r["e_fp32_pj"] > r["e_total_pj"], r["layer"]
    t = res.totals
    for k in ("e_total_pj", "e_mac_pj", "e_vec_pj", "e_sram_pj", "e_dram_pj", "n_mac"):
        assert t[k] == pytest.approx(sum(r[k] for r in res.rows))


def test_w4a4_vit_costs_less_than_w8a8(vit):
    r8 = {r["layer"]: r for r in simulate_graph(*vit[8], WS).rows}
    r4 = {r["layer"]: r for r in simulate_graph(*vit[4], WS).rows}
    for name, r in r8.items():
        if r["op"] == "matmul":
            assert r4[name]["e_seed_mac_pj"] == pytest.approx(r["e_seed_mac_pj"] / 4)
            assert r4[name]["e_total_pj"] < r["e_total_pj"]


def test_cli_vit_report_has_every_node(tmp_path, tiny_data):
    """python -m quantsim.simulate on a small ViT checkpoint: layers.csv has one row per IR node,
    MACs on the attention matmuls, op counts and vector energy on the nonlinearities."""
    from quantsim.zoo.models import save_checkpoint
    from quantsim.cli.simulate import main
    from quantsim.zoo.vit import vit_tiny_patch4_32

    kw = dict(embed_dim=32, depth=1, num_heads=2, patch_size=8)
    torch.manual_seed(0)
    ckpt = tmp_path / "vit.pt"
    save_checkpoint(ckpt, vit_tiny_patch4_32(**kw), "vit_tiny_patch4_32", kw)
    out = tmp_path / "run"
    assert main([str(ckpt), "--data", f"cifar10:{tiny_data}", "--calib", "4", "--eval", "4",
                 "--bitexact-images", "2", "--out", str(out), "--no-progress", "--save-ir"]) == 0
    from integer_ref.ir import Graph

    graph = Graph.load(out / "ir")
    df = pd.read_csv(out / "layers.csv")
    assert list(df["layer"]) == [n.name for n in graph.nodes]
    ops = df.set_index("layer")["op"]
    mm = df[df["op"] == "matmul"]
    assert len(mm) == 2 and (mm["n_mac"] == 2 * 17 * 16 * 17).all() and (mm["mult_toggles"] > 0).all()
    for op in ("softmax", "gelu", "layernorm"):
        sub = df[ops.values == op]
        assert len(sub) and (sub["n_vec_ops"] > 0).all() and (sub["e_vec_pj"] > 0).all() and (sub["n_elem"] > 0).all()
    summary = pd.read_json(out / "summary.json", typ="series")
    assert summary["e_total_pj"] == pytest.approx(df["e_total_pj"].sum())
    assert summary["n_mac"] == df["n_mac"].sum()
