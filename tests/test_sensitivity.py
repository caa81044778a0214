"""quantsim.mixed.sensitivity: S_l(b) is zero where a layer is exactly representable, shrinks with
width, and the cache returns what was measured."""
from __future__ import annotations

import torch
import torch.nn as nn

from quantsim.run import stages as pipeline
from quantsim.zoo.cifar_resnet import cifar_resnet20
from quantsim.quant.config import QuantConfig
from quantsim.mixed.sensitivity import layer_sensitivity


def _grid_model(bits: int, seed: int = 0):
    """One conv whose weights are integers on the b-bit grid with every output channel
    reaching qmax = 2^(b-1)-1, fed integer inputs whose calibration range is exactly qmax:
    at b bits the scales are 1 and fake quantization changes nothing."""
    qmax = 2 ** (bits - 1) - 1
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=True)
    w = torch.randint(-qmax, qmax + 1, conv.weight.shape, generator=g).float()
    w[:, 0, 0, 0] = qmax  # every channel (per-channel) and the tensor (per-tensor) hit qmax
    with torch.no_grad():
        conv.weight.copy_(w)
        conv.bias.copy_(torch.randn(4, generator=g))
    x = torch.randint(-qmax, qmax + 1, (2, 6, 3, 8, 8), generator=g).float()
    x[0, 0, 0, 0, 0] = qmax
    x[0, 0, 0, 0, 1] = -qmax
    return nn.Sequential(conv).eval(), [x[0], x[1]]


def _sens(model, batches, granularity, at="layer", weighting="none", candidates=(4, 6, 8)):
    prep = pipeline.prepare(model, tuple(batches[0].shape[1:]), batches, 0, False)
    cfg = QuantConfig(granularity=granularity)
    return layer_sensitivity(prep.fgraph, prep.stats, batches, cfg, candidates, at=at, weighting=weighting,
                             progress=False)


def test_zero_where_exactly_representable():
    model, batches = _grid_model(4)
    for gran in ("per-tensor", "per-channel"):
        for at in ("layer", "output"):
            s = _sens(model, batches, gran, at)
            (layer,) = s
            assert s[layer][4] < 1e-12, (gran, at, s)
            # at 6 and 8 bits the scale is 7/31 and 7/127: integers fall off the grid
            assert s[layer][6] > 1e-4 and s[layer][8] > 1e-5, (gran, at, s)


def test_zero_at_eight_bits_too():
    model, batches = _grid_model(8, seed=1)
    s = _sens(model, batches, "per-channel")
    (layer,) = s
    assert s[layer][8] < 1e-12
    assert s[layer][4] > s[layer][6] > 0


def test_decreases_with_width_and_cache(tmp_path):
    torch.manual_seed(0)
    model = cifar_resnet20().eval()
    batches = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    prep = pipeline.prepare(model, (3, 32, 32), batches, 0, False)
    cfg = QuantConfig()
    s = layer_sensitivity(prep.fgraph, prep.stats, batches, cfg, (4, 6, 8), progress=False, cache_dir=tmp_path)
    assert len(s) == 20  # 19 convs + the linear layer
    for layer, row in s.items():
        assert row[4] > row[6] > row[8] > 0, (layer, row)
    (cached,) = list(tmp_path.glob("sensitivity-*.json"))
    again = layer_sensitivity(prep.fgraph, prep.stats, batches, cfg, (4, 6, 8), progress=False,
                              cache_dir=tmp_path)
    assert again == s
    # nuclear weighting rescales each layer: the order over widths stays
    nuc = layer_sensitivity(prep.fgraph, prep.stats, batches[:1], cfg, (4, 8), weighting="nuclear",
                            progress=False)
    for layer, row in nuc.items():
        assert row[4] > row[8] > 0
