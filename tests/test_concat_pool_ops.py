"""Concatenation, channel slices and the pool variants torchvision classifiers use: the concat and
slice kernels in both executors against plain Python-list oracles, ceil_mode max pooling against a
Python oracle of torch's rule, their capture (adaptive / functional pools, a BatchNorm after no
conv, shared concat quantization) and lowering, hwmodel rows, and SqueezeNet, ShuffleNet-v2,
GoogLeNet and DenseNet bit-exact at W8A8 and W4A8 on real images."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from hwmodel.arch import load_accelerator
from hwmodel.simulate import batch1_shapes, simulate_graph
from integer_ref import executor as R
from integer_ref import kernels as K
from integer_ref.ir import Graph, Node, QParams
from quantsim.emulate import executor as E, kernels as EK
from quantsim.errors import QuantsimError
from quantsim.graph.capture import capture, run_float
from quantsim.quant.calibrate import collect_stats
from quantsim.quant.config import QuantConfig
from quantsim.quant.lower import lower
from quantsim.run.stages import check_bitexact
from small_models import assert_bitexact

SETTINGS = settings(max_examples=40, deadline=None)


# --- oracles: nested Python lists -----------------------------------------------------------------

def concat_oracle(xs: list[np.ndarray], axis: int) -> list:
    """Concatenation written out on nested lists: recurse to `axis`, then join the lists there."""
    def join(parts, depth):
        if depth == axis:
            out = []
            for p in parts:
                out.extend(p)
            return out
        return [join([p[i] for p in parts], depth + 1) for i in range(len(parts[0]))]
    return join([x.tolist() for x in xs], 0)


def slice_oracle(x: np.ndarray, axis: int, start: int, stop: int) -> list:
    def cut(v, depth):
        if depth == axis:
            return [v[i] for i in range(start, stop)]
        return [cut(e, depth + 1) for e in v]
    return cut(x.tolist(), 0)


def ceil_pool_size(size: int, k: int, s: int, p: int) -> int:
    """torch's pooling output size with ceil_mode=True (the last window starts inside input+left pad)."""
    out = -(-(size + 2 * p - k) // s) + 1
    return out - 1 if (out - 1) * s >= size + p else out


def maxpool_ceil_oracle(x: np.ndarray, k: tuple, s: tuple, p: tuple) -> list:
    """Max over each window's in-bounds positions, windows as torch's ceil_mode lays them out."""
    n, c, h, w = x.shape
    oh, ow = ceil_pool_size(h, k[0], s[0], p[0]), ceil_pool_size(w, k[1], s[1], p[1])
    v = x.tolist()
    out = []
    for b in range(n):
        chans = []
        for ch in range(c):
            rows = []
            for i in range(oh):
                row = []
                for j in range(ow):
                    vals = [v[b][ch][y][z] for y in range(i * s[0] - p[0], i * s[0] - p[0] + k[0])
                            for z in range(j * s[1] - p[1], j * s[1] - p[1] + k[1]) if 0 <= y < h and 0 <= z < w]
                    row.append(max(vals))
                rows.append(row)
            chans.append(rows)
        out.append(chans)
    return out


def _q(bits=8, signed=True, scale=0.1, zp=0):
    return QParams(bits, signed, np.float64(scale), zp)


# --- kernels ----------------------------------------------------------------------------------

@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(2, 4), st.integers(1, 3))
def test_concat_kernel_both_executors_match_list_oracle(seed, n_inputs, axis):
    rng = np.random.default_rng(seed)
    base = [int(v) for v in rng.integers(1, 5, 4)]
    xs = []
    for _ in range(n_inputs):
        shape = list(base)
        shape[axis] = int(rng.integers(1, 5))
        xs.append(rng.integers(-128, 128, shape).astype(np.int64))
    want = concat_oracle(xs, axis)
    assert K.concat(xs, axis).tolist() == want
    assert EK.concat([torch.as_tensor(x) for x in xs], axis).tolist() == want


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(1, 3), st.data())
def test_slice_kernel_both_executors_match_list_oracle(seed, axis, data):
    rng = np.random.default_rng(seed)
    shape = [int(v) for v in rng.integers(1, 6, 4)]
    shape[axis] = max(shape[axis], 2)
    start = data.draw(st.integers(0, shape[axis] - 1))
    stop = data.draw(st.integers(start + 1, shape[axis]))
    x = rng.integers(-(2**15), 2**15, shape).astype(np.int64)
    want = slice_oracle(x, axis, start, stop)
    assert K.slice_axis(x, axis, start, stop).tolist() == want
    assert EK.slice_axis(torch.as_tensor(x), axis, start, stop).tolist() == want


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(1, 3), st.integers(0, 2), st.integers(3, 12),
       st.integers(3, 12))
def test_ceil_mode_maxpool_matches_oracle_in_both_executors(seed, k, s, p, h, w):
    p = min(p, k // 2)  # torch: padding at most half the kernel
    if h + 2 * p < k or w + 2 * p < k:
        return
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (2, 3, h, w)).astype(np.int64)
    g = capture(nn.Sequential(nn.MaxPool2d(k, s, p, ceil_mode=True)).eval(), (3, h, w))
    (pool,) = [n for n in g.nodes if n.op == "maxpool"]
    want = maxpool_ceil_oracle(x, (k, k), (s, s), (p, p))
    kw = dict(kernel=pool.attrs["kernel"], stride=pool.attrs["stride"], padding=pool.attrs["padding"])
    assert K.maxpool(x, **kw).tolist() == want
    assert EK.maxpool(torch.as_tensor(x), **kw).tolist() == want
    # and the float graph gives torch's own ceil_mode output, shape and values
    xf = torch.as_tensor(x, dtype=torch.float32)
    assert torch.equal(run_float(g, xf), F.max_pool2d(xf, k, s, p, ceil_mode=True))


def test_concat_program_refuses_inputs_of_another_quantization():
    a, b = _q(scale=0.1), _q(scale=0.2)
    nodes = [Node("a", "quantize", ["x"], a), Node("b", "quantize", ["x"], b),
             Node("cat", "concat", ["a", "b"], a, {"axis": 1})]
    with pytest.raises(ValueError, match="a concat's inputs must share its quantization"):
        R.run(Graph(nodes, "x", (2, 3, 3), ["cat"]), np.zeros((1, 2, 3, 3), np.float32))
    ok = Graph([nodes[0], Node("b", "quantize", ["x"], a), Node("cat", "concat", ["a", "b"], a, {"axis": 1})],
               "x", (2, 3, 3), ["cat"])
    x = np.random.default_rng(0).normal(size=(2, 2, 3, 3)).astype(np.float32)
    ref, emu = R.run(ok, x).tensors["cat"], E.run(ok, torch.as_tensor(x), keep="all").tensors["cat"]
    assert ref.shape == (2, 4, 3, 3) and np.array_equal(ref, emu.numpy())


# --- capture and lowering -----------------------------------------------------------------------

class _Branches(nn.Module):
    """A fire-module-like concat (ReLU branch and a signed branch), a channel split, a standalone BN,
    an adaptive pool with even windows and the functional pools."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(10)
        self.c = nn.Conv2d(5, 8, 1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(8 * 4 + 5 * 4, 7)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)

    def forward(self, x):
        y = torch.cat([F.relu(self.a(x)), self.b(x)], 1)
        y = F.relu(self.bn(y), inplace=True)
        y = F.max_pool2d(y, 3, 2, ceil_mode=True)
        u, v = y.chunk(2, dim=1)
        u = self.pool(self.c(u))
        v = F.avg_pool2d(v, 2)
        return self.fc(torch.cat([torch.flatten(u, 1), v.flatten(1)], dim=1))


def test_capture_and_lowering_of_concat_slice_bn_and_pools():
    torch.manual_seed(0)
    model = _Branches().eval()
    g = capture(model, (3, 8, 8))
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(run_float(g, x), model(x), atol=1e-5)
    ops = [n.op for n in g.nodes]
    assert ops.count("concat") == 2 and ops.count("slice") == 2
    bn = g["bn"]  # a BatchNorm after a concat: a depthwise 1x1 conv, its ReLU fused
    assert bn.op == "conv" and bn.attrs["groups"] == 10 and tuple(bn.weight.shape) == (10, 1, 1, 1) and bn.act == "relu"
    (mp,) = [n for n in g.nodes if n.op == "maxpool"]
    assert mp.attrs["padding"] == [0, 1, 0, 1]  # 8x8, k3 s2 ceil: 4x4 outputs, one extra row/column
    assert g["pool"].op == "avgpool" and g["pool"].attrs["kernel"] == [2, 2]  # 4x4 -> 2x2: even windows
    stats = collect_stats(g, [x], progress=False)
    for w_bits in (8, 4):
        graph = lower(g, stats, QuantConfig(w_bits=w_bits, a_bits=8))
        first = graph[[n.name for n in graph.nodes if n.op == "concat"][0]]
        qa, qb = (graph[i].out for i in first.inputs)
        assert qa is qb is first.out  # one shared quantization
        assert qa.signed  # the conv branch without ReLU makes the group signed
        assert graph["a"].attrs["clamp"][0] == 0  # the ReLU branch still clamps at the zero point
        assert float(qa.scale) * qa.qmax >= max(stats["a"].max, stats["b"].max, -stats["b"].min) * 0.999
        be = check_bitexact(graph, x)
        assert not any(be.mismatches.values()), be.mismatches


def test_uneven_adaptive_pool_and_avgpool_ceil_mode_are_refused_clearly():
    with pytest.raises(QuantsimError, match=r"adaptive average pool from 7x7 to 3x3 has uneven windows"):
        capture(nn.Sequential(nn.AdaptiveAvgPool2d(3)).eval(), (3, 7, 7))
    with pytest.raises(QuantsimError, match=r"average pool with ceil_mode on a 7x7 input"):
        capture(nn.Sequential(nn.AvgPool2d(2, ceil_mode=True)).eval(), (3, 7, 7))
    g = capture(nn.Sequential(nn.AvgPool2d(2, ceil_mode=True), nn.AdaptiveAvgPool2d(4)).eval(), (3, 8, 8))
    assert [n.op for n in g.nodes] == ["input", "avgpool"]  # ceil_mode adds no window; 4x4 -> 4x4: identity


def test_concat_group_of_softmax_is_refused():
    class M(nn.Module):
        def forward(self, x):
            return torch.cat([x.softmax(-1), x], dim=1)
    g = capture(M().eval(), (3, 4, 4))
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(QuantsimError, match="is concatenated"):
        lower(g, collect_stats(g, [x], progress=False), QuantConfig(w_bits=8, a_bits=8))


def test_hwmodel_rows_for_concat_and_slice():
    torch.manual_seed(0)
    model = _Branches().eval()
    g = capture(model, (3, 8, 8))
    x = torch.randn(2, 3, 8, 8)
    graph = lower(g, collect_stats(g, [x], progress=False), QuantConfig(w_bits=8, a_bits=8))
    taps = R.run(graph, x.numpy()).tensors
    shapes = batch1_shapes(graph, taps)
    rows = {r["layer"]: r for r in simulate_graph(graph, taps, load_accelerator("edge-16x16-ws")).rows}
    seen = set()
    for n in graph.nodes:
        if n.op not in ("concat", "slice"):
            continue
        seen.add(n.op)
        r, n_out = rows[n.name], int(np.prod(shapes[n.name]))
        assert r["n_mac"] == 0 and r["n_add"] == 0 and r["n_elem"] == n_out and r["cycles"] > 0
        assert r["dram_wr_ofmap"] == n_out
        if n.op == "concat":  # every input read once: together exactly the output
            assert r["dram_rd_ifmap"] == sum(int(np.prod(shapes[i])) for i in n.inputs) == n_out
        else:  # only the kept half of the input
            assert r["dram_rd_ifmap"] == n_out == int(np.prod(shapes[n.inputs[0]])) // 2
    assert seen == {"concat", "slice"}


# --- torchvision models on real images ------------------------------------------------------------

@pytest.fixture(scope="module")
def calib_images(imagenet_calib_dir):
    """2 real imagenet-calib images at size x size: the calibration and the bit-exact check both."""
    from quantsim.zoo import datasets
    from quantsim.zoo.preprocess import Preprocess

    def load(size: int) -> torch.Tensor:
        pre = Preprocess((3, size, size), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), resize=int(size / 0.875))
        ds = datasets.deterministic_subset(datasets.build_dataset(f"imagenet:{imagenet_calib_dir}", pre), 2, 0)
        return torch.stack([ds[i][0] for i in range(len(ds))])
    return load


@pytest.mark.parametrize("name, size, ops", [
    ("squeezenet1_1", 72, {"concat": 8}),           # fire modules; at 72 px a ceil_mode pool adds a row
    ("shufflenet_v2_x0_5", 64, {"slice": 26, "permute": 16, "concat": 16}),  # channel split and shuffle
    ("googlenet", 64, {"concat": 9}),               # inception modules; ceil_mode max pools
    ("densenet121", 64, {"concat": 62}),            # dense blocks; BN after each concat
])
def test_torchvision_concat_models_bit_exact_real_images(name, size, ops, calib_images):
    from quantsim.zoo.models import create_model
    calib = calib_images(size)
    torch.manual_seed(0)  # random init is enough for bit-exactness; the images are real
    model = create_model(f"torchvision:{name}")
    g = capture(model, (3, size, size))
    with torch.no_grad():
        ref = model(calib)
        assert torch.allclose(run_float(g, calib), ref, atol=1e-4 * float(ref.abs().max()) + 1e-7)
    stats = collect_stats(g, [calib], progress=False)
    for w_bits in (8, 4):
        graph = lower(g, stats, QuantConfig(w_bits=w_bits, a_bits=8))
        counts = {op: sum(n.op == op for n in graph.nodes) for op in ops}
        assert counts == ops
        if name in ("squeezenet1_1", "googlenet"):
            assert any(n.op == "maxpool" and n.attrs["padding"][1] > n.attrs["padding"][0] for n in graph.nodes)
        if name == "densenet121":  # norm1 of every dense layer and norm5 read a concat
            assert sum(n.op == "conv2d" and n.attrs["groups"] > 1 and n.attrs["kernel"] == [1, 1]
                       for n in graph.nodes) >= 58
        be = assert_bitexact(graph, calib, f"{name} W{w_bits}A8")
        assert len(be.mismatches) == len(graph.nodes)
        assert be.ref_tensors[graph.outputs[0]].std() > 0
