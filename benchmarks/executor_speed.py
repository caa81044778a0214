"""Images/s of the two integer executors against PyTorch FP32 eager, same batch, same process.

A ResNet-20 (CIFAR, option-A shortcuts) integer program is built by hand with random
8-bit weights, so this runs without trained models or the lowering pass:

    python benchmarks/executor_speed.py [--batch 256] [--repeat 3] [--profile]
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from integer_ref import arith, executor
from integer_ref.ir import Graph, Node, QParams
from quantsim.emulate import executor as emulate

STAGES = ((16, 1), (32, 2), (64, 2))
BLOCKS = 3


# --- the integer program -------------------------------------------------------------------

class ProgramBuilder:
    def __init__(self, rng, bits=8):
        self.rng, self.bits, self.nodes = rng, bits, []
        self.act = QParams(bits, False, np.float64(0.05), 0)  # post-ReLU activations

    def requant(self, o, fan_in):
        # m keeps the typical accumulator (std ~ 40 * 40 * sqrt(K)) near a quarter of the range.
        m = 2.0 ** (self.bits - 2) / (40.0 * 40.0 * np.sqrt(fan_in))
        return arith.quantize_multipliers(m * self.rng.uniform(0.8, 1.25, o))

    def conv(self, name, src, cin, cout, stride, relu=True):
        w = np.clip(np.rint(self.rng.normal(0, 40, (cout, cin, 3, 3))), -127, 127).astype(np.int64)
        mult, shift = self.requant(cout, cin * 9)
        lo = 0 if relu else self.act.qmin
        self.nodes.append(Node(name, "conv2d", [src], self.act, params={
            "weight": w, "bias": self.rng.integers(-2000, 2000, cout), "multiplier": mult, "shift": shift},
            attrs={"stride": [stride, stride], "padding": [1, 1, 1, 1], "clamp": [lo, self.act.qmax]}))
        return name

    def add(self, name, a, b):
        mult = np.array([int(0.6 * 2**30), int(0.6 * 2**30)])  # m = 0.6 for both, shift 30
        self.nodes.append(Node(name, "add", [a, b], self.act, params={"multiplier": mult, "shift": np.int64(30)},
                               attrs={"clamp": [0, self.act.qmax]}))
        return name

    def node(self, name, op, inputs, **kw):
        self.nodes.append(Node(name, op, inputs, kw.pop("out", self.act), **kw))
        return name


def resnet20_program(seed=0, bits=8) -> Graph:
    b = ProgramBuilder(np.random.default_rng(seed), bits)
    x = b.node("q", "quantize", ["input"], out=QParams(bits, True, np.float64(3.0 / 127), 0))
    x = b.conv("conv1", x, 3, 16, 1)
    cin = 16
    for s, (cout, stride) in enumerate(STAGES):
        for i in range(BLOCKS):
            st = stride if i == 0 else 1
            p = f"s{s}b{i}"
            y = b.conv(p + ".conv1", x, cin, cout, st)
            y = b.conv(p + ".conv2", y, cout, cout, 1, relu=False)
            sc = x
            if st != 1 or cin != cout:  # option A: subsample, pad channels with zeros
                sc = b.node(p + ".slice", "strided_slice", [x], attrs={"step": [2, 2]})
                sc = b.node(p + ".pad", "pad_channels", [sc], attrs={"before": (cout - cin) // 2,
                                                                   "after": (cout - cin) // 2})
            x = b.add(p + ".add", y, sc)
            cin = cout
    mult, shift = arith.quantize_multipliers(np.array([1.0 / 64]))
    x = b.node("gap", "global_avgpool", [x], attrs={"count": 64}, params={"multiplier": mult, "shift": shift})
    x = b.node("flat", "reshape", [x], attrs={"shape": [-1, 64]})
    w = np.clip(np.rint(b.rng.normal(0, 40, (10, 64))), -127, 127).astype(np.int64)
    mult, shift = b.requant(10, 64)
    b.node("fc", "linear", [x], out=QParams(bits, True, np.float64(0.1), 0),
           params={"weight": w, "bias": np.zeros(10, np.int64), "multiplier": mult, "shift": shift})
    return Graph(b.nodes, "input", (3, 32, 32), ["fc"], {"acc_bits": 32})


# --- the FP32 baseline: the eager model a user would run ------------------------------------

class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.pad = (cout - cin) // 2 if stride != 1 or cin != cout else None

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        sc = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(y + sc)


class ResNet20(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in STAGES:
            for i in range(BLOCKS):
                layers.append(BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers, self.fc = nn.Sequential(*layers), nn.Linear(64, 10)

    def forward(self, x):
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# --- timing ----------------------------------------------------------------------------------

def best_times(fns: dict, repeat: int) -> dict:
    """Best of `repeat` runs each, interleaved so that a shared machine's load hits all alike."""
    for fn in fns.values():
        fn()  # warm up (Numba compilation, allocator)
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: min(ts) for name, ts in times.items()}


def profile_integer_ref(graph, x):
    """Seconds per op type for one integer_ref pass (where the time goes)."""
    qp, acc_bits = executor.tensor_qparams(graph), 32
    live, spent = {graph.input_name: x}, defaultdict(float)
    for node in graph.nodes:
        t = time.perf_counter()
        live[node.name], _ = executor.run_node(node, [live[i] for i in node.inputs], qp, acc_bits)
        spent[node.op] += time.perf_counter() - t
    for op, s in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {op:16s} {s * 1e3:8.1f} ms")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()

    graph = resnet20_program()
    x = np.random.default_rng(1).normal(0, 1, (args.batch, 3, 32, 32)).astype(np.float32)
    xt = torch.from_numpy(x)
    fp32 = ResNet20().eval()
    emu = emulate.EmulatedModel(graph)
    with torch.no_grad():
        t = best_times({"PyTorch FP32 eager": lambda: fp32(xt), "quantsim.emulate.executor": lambda: emu(xt),
                        "integer_ref": lambda: executor.run(graph, x, keep="outputs")}, args.repeat)

    ref_out = executor.run(graph, x, keep="outputs").tensors["fc"]
    emu_out = emulate.run(graph, xt).tensors["fc"].numpy()
    print(f"ResNet-20 integer program, batch {args.batch}, torch threads {torch.get_num_threads()}")
    print(f"  bit-identical outputs: {np.array_equal(ref_out, emu_out)}")
    for name, secs in t.items():
        print(f"  {name:20s} {args.batch / secs:9.1f} images/s   {secs / t['PyTorch FP32 eager']:5.2f}x the FP32 time")
    if args.profile:
        print("integer_ref time per op:")
        profile_integer_ref(graph, x)


if __name__ == "__main__":
    main()
