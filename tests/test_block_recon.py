"""Block reconstruction with QDrop (quantsim.quant.reconstruct): the units, a lower block output
error than per-layer AdaRound and round-to-nearest on real data, the learned activation scales in
the program, bit-exactness, reproducibility, the cache and the command line's errors."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from quantsim.errors import QuantsimError
from quantsim.quant import adaround, gptq, reconstruct
from quantsim.quant.config import QuantConfig
from quantsim.quant.lower import activation_qparams, lower, weight_scale_floors
from quantsim.run import stages
from small_models import SmallConvNet, assert_bitexact, program_error, resnet20_prepared

W4A4_BLOCK = QuantConfig(w_bits=4, a_bits=4, rounding="adaround", reconstruct="block", recon_iters=80)


def test_config_errors():
    with pytest.raises(QuantsimError, match="use it with --rounding adaround"):
        QuantConfig(reconstruct="block")
    with pytest.raises(QuantsimError, match="use it with --rounding adaround \\(not gptq\\)"):
        QuantConfig(reconstruct="layer", rounding="gptq")
    with pytest.raises(QuantsimError, match="--qdrop 1.0"):
        QuantConfig(reconstruct="block", rounding="adaround", qdrop=1.0)
    with pytest.raises(QuantsimError, match="--reconstruct 'blocks'"):
        QuantConfig(reconstruct="blocks", rounding="adaround")
    with pytest.raises(QuantsimError, match="calib-method similarity"):
        QuantConfig(reconstruct="block", rounding="adaround", calib_method="similarity")


def test_command_line_reaches_the_config_and_refuses_bad_combinations(tmp_path, capsys):
    from quantsim.cli.simulate import build_parser, main
    from quantsim.run.options import RunOptions
    from quantsim.run.single import base_config

    ns = build_parser().parse_args(["cifar_resnet20", "--rounding", "adaround", "--reconstruct", "block",
                                    "--qdrop", "0.25", "--recon-iters", "64", "--seed", "3"])
    cfg = base_config(RunOptions.from_namespace(ns), 4, 4)
    assert (cfg.reconstruct, cfg.qdrop, cfg.recon_iters, cfg.recon_seed) == ("block", 0.25, 64, 3)
    assert main(["cifar_resnet20", "--reconstruct", "block", "--out", str(tmp_path / "r")]) == 2
    assert "error: --reconstruct block learns AdaRound's rounding" in capsys.readouterr().err
    assert main(["cifar_resnet20", "--rounding", "adaround", "--reconstruct", "layer", "--qdrop", "-0.1",
                 "--out", str(tmp_path / "s")]) == 2
    assert "error: --qdrop -0.1" in capsys.readouterr().err


# --- a small network: layer units, the cache, the seed -------------------------------------------

@pytest.fixture(scope="module")
def small_prep():
    torch.manual_seed(0)
    model = SmallConvNet().eval()
    return stages.prepare(model, (3, 12, 12), list(torch.randn(64, 3, 12, 12).split(32)), progress=False)


SMALL = QuantConfig(w_bits=3, a_bits=4, rounding="adaround", reconstruct="layer", recon_iters=40)


def test_layer_units_hold_one_mac_each(small_prep):
    g = small_prep.fgraph
    parts = reconstruct.units(g, "layer")
    assert [n.name for n in g.nodes] == [name for part in parts for name in part]
    assert [sum(g[m].is_mac for m in part) for part in parts] == [1] * len(g.mac_nodes())


def test_cache_reused_and_seed_reproducible(small_prep, monkeypatch):
    calls = []
    real = reconstruct.reconstruct_unit

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(reconstruct, "reconstruct_unit", counting)
    prep = replace(small_prep, searched={})
    first = stages.quantize(prep, SMALL)
    n_units = len(calls)
    assert n_units == len(prep.fgraph.mac_nodes())
    second = stages.quantize(prep, SMALL)
    assert len(calls) == n_units  # cached: nothing learned again
    other = stages.quantize(replace(small_prep, searched={}), SMALL)  # recomputed, same seed
    assert len(calls) == 2 * n_units
    seed7 = stages.quantize(replace(small_prep, searched={}), replace(SMALL, recon_seed=7))
    differs = False
    for a, b, c, d in zip(first.nodes, second.nodes, other.nodes, seed7.nodes):
        for k in a.params:
            assert np.array_equal(a.params[k], b.params[k]) and np.array_equal(a.params[k], c.params[k])
        assert a.out.scale == b.out.scale == c.out.scale
        differs |= a.out.scale != d.out.scale or any(not np.array_equal(a.params[k], d.params[k]) for k in a.params)
    assert differs  # another seed draws other batches and drop masks


# --- CIFAR-10 ResNet-20, real calibration images --------------------------------------------------

@pytest.fixture(scope="module")
def r20_real(resnet20_checkpoint: Path, cifar10_dir: Path):
    return resnet20_prepared(resnet20_checkpoint, cifar10_dir, 64, 32)


def test_resnet20_block_units(r20_real):
    prep, _ = r20_real
    parts = reconstruct.units(prep.fgraph, "block")
    assert len(parts) == 11  # stem, 9 BasicBlocks, pool + classifier
    assert parts[0] == ["input", "conv1"]
    assert parts[1] == ["layer1.0.conv1", "layer1.0.conv2", "layer1.0.add"]
    assert "layer2.0.shortcut" in parts[4] and parts[4][-1] == "layer2.0.add"
    assert parts[-1][-1] == "linear"


@pytest.fixture(scope="module")
def r20_block(r20_real):
    """The first two units (stem, layer1.0) reconstructed, the rest at nearest and calibration scales."""
    prep, _ = r20_real
    src = weight_scale_floors(prep.fgraph, prep.stats, W4A4_BLOCK)
    rec = reconstruct.reconstruct(src, prep.stats, prep.calib, W4A4_BLOCK, n_units=2)
    graph = lower(gptq.with_codes(src, rec.codes), reconstruct.with_clips(prep.stats, rec.clips), W4A4_BLOCK)
    return rec, graph


def test_block_output_error_below_adaround_and_nearest_resnet20(r20_real, r20_block):
    """layer1.0's output in the W4A4 integer program on 16 held-out test images: block
    reconstruction of the stem and layer1.0 against per-layer AdaRound of their three convs and
    round-to-nearest (same calibration scales elsewhere)."""
    prep, x_eval = r20_real
    _, block = r20_block
    names = ["conv1", "layer1.0.conv1", "layer1.0.conv2"]
    ada_cfg = replace(W4A4_BLOCK, reconstruct="none")
    src = weight_scale_floors(prep.fgraph, prep.stats, ada_cfg)
    codes = adaround.adaround_codes(src, prep.stats, prep.calib, ada_cfg, layers=names)
    per_layer = lower(gptq.with_codes(src, codes), prep.stats, ada_cfg)
    nearest = lower(prep.fgraph, prep.stats, replace(ada_cfg, rounding="nearest"))
    err = {k: program_error(g, prep.fgraph, x_eval, "layer1.0.add")
           for k, g in (("nearest", nearest), ("adaround", per_layer), ("block", block))}
    assert err["block"] < 0.8 * err["adaround"] and err["block"] < 0.8 * err["nearest"], err


def test_learned_scales_reach_the_program_bit_exact(r20_real, r20_block):
    prep, x_eval = r20_real
    rec, graph = r20_block
    calib_q = activation_qparams(prep.fgraph, prep.stats, W4A4_BLOCK)
    learned = ["input", "conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.0.add"]
    assert sorted(rec.scales) == sorted(learned)  # the tensors of the two units, nothing else
    lowered = {n.name: n for n in graph.nodes}
    for name in learned:
        assert float(lowered[name].out.scale) == rec.scales[name]
    assert sum(rec.scales[k] != float(calib_q[k].scale) for k in learned) >= 4  # they did move
    for name in ("conv1", "layer1.0.conv1", "layer1.0.conv2"):
        assert np.array_equal(lowered[name].params["weight"], rec.codes[name].codes)
        assert np.abs(rec.codes[name].codes).max() <= 7
    assert_bitexact(graph, x_eval[:4], "W4A4 block reconstruction")


def test_same_seed_identical_integers_resnet20(r20_real):
    prep, _ = r20_real
    cfg = replace(W4A4_BLOCK, recon_iters=20)
    src = weight_scale_floors(prep.fgraph, prep.stats, cfg)
    a = reconstruct.reconstruct(src, prep.stats, prep.calib, cfg, n_units=2)
    b = reconstruct.reconstruct(src, prep.stats, prep.calib, cfg, n_units=2)
    assert a.clips == b.clips and a.scales == b.scales
    for k in a.codes:
        assert np.array_equal(a.codes[k].codes, b.codes[k].codes)


@pytest.mark.parametrize("qmin,qmax", [(-7, 7), (0, 15), (-127, 127)])
def test_lsq_step_gradients_equal_autograds_chain(qmin, qmax):
    """The fused LSQ quantizer gives the value and the gradients autograd gives the op chain it
    replaces (straight-through round, torch's clamp: no gradient at the bounds)."""
    gen = torch.Generator().manual_seed(qmax)
    x = torch.randn(4, 6, 9, 9, generator=gen) * 3
    x[0, 0, 0, :4] = torch.tensor([qmin, qmax, qmin - 0.3, qmax + 0.2]) * 0.25  # on and past the bounds
    upstream = torch.randn(x.shape, generator=gen)
    log_s = torch.tensor(math.log(0.25))
    grads = []
    for fused in (True, False):
        xi, ls = x.clone().requires_grad_(True), log_s.clone().requires_grad_(True)
        s = torch.exp(ls)
        if fused:
            y = reconstruct.LsqFakeQuant.apply(xi, s, qmin, qmax)
        else:
            z = xi / s
            y = torch.clamp(z + (torch.round(z) - z).detach(), qmin, qmax) * s
        (y * upstream).sum().backward()
        grads.append((y.detach(), xi.grad, ls.grad))
    (y1, gx1, gs1), (y2, gx2, gs2) = grads
    assert torch.equal(y1, y2)
    assert torch.allclose(gx1, gx2, atol=1e-6) and (gx1 == 0).any() and (gx1 == upstream).any()
    assert torch.allclose(gs1, gs2, rtol=1e-4)


def test_drop_masks_keep_the_channels_last_layout():
    x = torch.zeros(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    m = reconstruct.rand_like_layout(x, torch.Generator().manual_seed(0))
    assert m.shape == x.shape and m.is_contiguous(memory_format=torch.channels_last)
    assert torch.where(m < 0.5, x, x + 1).is_contiguous(memory_format=torch.channels_last)
    flat = reconstruct.rand_like_layout(torch.zeros(2, 3, 4), torch.Generator().manual_seed(0))
    assert torch.equal(flat, torch.rand((2, 3, 4), generator=torch.Generator().manual_seed(0)))


# --- windows of wide units (--recon-crop) -----------------------------------------------------------

class WideStem(torch.nn.Module):
    """An ImageNet-like stem at 40x40: conv stride 2, an inverted-residual block with its skip (1x1,
    depthwise 5x5, 1x1, ReLU6), a depthwise 3x3 stride 2 whose padding is TF-style asymmetric, then
    GAP + linear (a unit no window may cut)."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.pw1 = torch.nn.Conv2d(8, 16, 1)
        self.dw = torch.nn.Conv2d(16, 16, 5, padding=2, groups=16)
        self.pw2 = torch.nn.Conv2d(16, 8, 1)
        self.down = torch.nn.Conv2d(8, 8, 3, stride=2, groups=8)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        x = torch.nn.functional.relu6(self.stem(x))
        x = x + self.pw2(torch.nn.functional.relu6(self.dw(torch.nn.functional.relu6(self.pw1(x)))))
        x = torch.nn.functional.relu6(self.down(torch.nn.functional.pad(x, (0, 1, 0, 1))))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def wide_prep():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 40, 40, generator=torch.Generator().manual_seed(3))
    return stages.prepare(WideStem().eval(), (3, 40, 40), list(x.split(32)), progress=False)


def _unit_values(g, x):
    from quantsim.graph.capture import run_float
    values = {"__image__": x}
    run_float(g, x, observe=lambda n, y: values.__setitem__(n.name, y))
    out = []
    for names in reconstruct.units(g, "block"):
        ext = sorted({i for name in names for i in g[name].inputs if i not in names})
        if g[names[0]].op == "input":
            ext = ["__image__"] + ext
        out.append((names, {k: values[k] for k in ext}, {names[-1]: values[names[-1]]}))
    return out


def test_window_outputs_equal_the_whole_images_where_compared(wide_prep):
    """Every compared output of every window (corners, edges, middle) equals the whole image's output
    there; the edge bands left out are where they differ; a unit with a global pool gets no plan."""
    g = wide_prep.fgraph
    cfg = replace(W4A4_BLOCK, recon_crop=16)
    x = torch.cat(wide_prep.calib)
    planned = 0
    for names, ext, out in _unit_values(g, x):
        plan = reconstruct._crop_plan(g, names, ext, out, list(out), cfg)
        if any(g[n].op in ("gap", "linear") for n in names):
            assert plan is None, names
            continue
        if plan is None:  # narrower than the window
            assert min(next(iter(ext.values())).shape[2:]) <= 16, names
            continue
        planned += 1
        assert plan.side == 16 and any(plan.margin), (names, plan)
        (h, w), s = plan.size, plan.stride
        offsets = {(0, 0), (h - plan.side, w - plan.side), (0, w - plan.side), (s * 3, s * 2)}
        for y0, x0 in offsets:
            got = reconstruct._run_unit(g, names, {k: plan.window(v[:8], y0, x0) for k, v in ext.items()}, {}, {}, cfg)
            rows, cols = plan.compared(y0, x0)
            for k, ref in out.items():
                a = got[k][:, :, rows, cols]
                b = plan.out_window(ref[:8], y0, x0)[:, :, rows, cols]
                assert a.numel() and torch.allclose(a, b, atol=1e-5, rtol=1e-5), (names, y0, x0)
        # the margin is needed: without it an edge row inside the image differs
        y0, x0 = s, s
        got = reconstruct._run_unit(g, names, {k: plan.window(v[:8], y0, x0) for k, v in ext.items()}, {}, {}, cfg)
        k, ref = next(iter(out.items()))
        assert not torch.allclose(got[k], plan.out_window(ref[:8], y0, x0), atol=1e-5, rtol=1e-5)
    assert planned >= 2  # the stem (40x40 image) and the inverted-residual block (20x20)


def test_windowed_reconstruction_beats_nearest_and_is_bit_exact(wide_prep):
    cfg = replace(W4A4_BLOCK, recon_crop=16, recon_iters=60)
    src = weight_scale_floors(wide_prep.fgraph, wide_prep.stats, cfg)
    rec = reconstruct.reconstruct(src, wide_prep.stats, wide_prep.calib, cfg)
    crops = [v["crop"] for k, v in rec.info.items() if isinstance(v, dict)]
    assert sum(c is not None for c in crops) >= 2
    graph = lower(gptq.with_codes(src, rec.codes), reconstruct.with_clips(wide_prep.stats, rec.clips), cfg)
    near = lower(wide_prep.fgraph, wide_prep.stats, replace(cfg, rounding="nearest", reconstruct="none",
                                                           recon_crop=0))
    x = torch.randn(16, 3, 40, 40, generator=torch.Generator().manual_seed(9))
    out = wide_prep.fgraph.output
    assert program_error(graph, wide_prep.fgraph, x, out) < program_error(near, wide_prep.fgraph, x, out)
    assert_bitexact(graph, x[:2], "windowed block reconstruction")
    again = reconstruct.reconstruct(src, wide_prep.stats, wide_prep.calib, cfg)
    assert all(np.array_equal(rec.codes[k].codes, again.codes[k].codes) for k in rec.codes)
    assert rec.clips == again.clips


def test_recon_crop_errors():
    with pytest.raises(QuantsimError, match="--recon-crop -1"):
        replace(W4A4_BLOCK, recon_crop=-1)
    with pytest.raises(QuantsimError, match="--recon-crop applies to --reconstruct"):
        QuantConfig(rounding="adaround", recon_crop=32)
