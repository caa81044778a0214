"""Learned codes on disk (quantsim.quant.rounding_cache): a second run on the same model, images
and config reads them back instead of learning again and lowers to the same integers; a changed
image, weight or option misses; a damaged file is learned again; loading needs no pickle."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from quantsim.quant import adaround, gptq, reconstruct, rounding_cache
from quantsim.quant.config import QuantConfig
from quantsim.run import stages
from small_models import SmallConvNet

BLOCK = QuantConfig(w_bits=3, a_bits=4, rounding="adaround", reconstruct="block", recon_iters=30)
ADA = QuantConfig(w_bits=3, a_bits=8, rounding="adaround", recon_iters=30)
GPTQ = QuantConfig(w_bits=3, a_bits=8, rounding="gptq")


def fresh_prep(folder, images=None, seed=0):
    """A new Prepared (its own in-memory cache) of the same small network."""
    torch.manual_seed(seed)
    model = SmallConvNet().eval()
    x = images if images is not None else torch.randn(64, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    prep = stages.prepare(model, (3, 12, 12), list(x.split(32)), progress=False)
    prep.rounding_cache = folder
    return prep


def assert_same_program(a, b):
    """Every integer parameter, output quantization and attribute of two lowered programs equal."""
    assert [n.name for n in a.nodes] == [n.name for n in b.nodes]
    for x, y in zip(a.nodes, b.nodes):
        assert x.params.keys() == y.params.keys()
        for k in x.params:
            assert np.array_equal(x.params[k], y.params[k]), (x.name, k)
        assert repr(x.out) == repr(y.out) and repr(x.weight_q) == repr(y.weight_q), x.name
        assert repr(x.attrs) == repr(y.attrs), x.name


def counting(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def wrapped(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(module, name, wrapped)
    return calls


@pytest.mark.parametrize("cfg, module, learner", [(BLOCK, reconstruct, "reconstruct"),
                                                   (ADA, adaround, "adaround_codes"),
                                                   (GPTQ, gptq, "gptq_codes")],
                         ids=["block", "adaround", "gptq"])
def test_second_run_reads_the_codes_back_and_lowers_the_same_integers(tmp_path, monkeypatch, cfg, module, learner):
    calls = counting(monkeypatch, module, learner)
    first = stages.quantize(fresh_prep(tmp_path), cfg)
    assert len(calls) == 1
    files = list(tmp_path.glob("rounding-*.npz"))
    assert len(files) == 1
    second = stages.quantize(fresh_prep(tmp_path), cfg)  # another Prepared: only the folder is shared
    assert len(calls) == 1, "the codes were learned again instead of read back"
    assert_same_program(first, second)
    # and what was read back is what learning gives: the same run without the folder
    assert_same_program(first, stages.quantize(fresh_prep(None), cfg))
    assert len(calls) == 2


def test_block_reconstruction_keeps_its_learned_clips(tmp_path):
    prep = fresh_prep(tmp_path)
    g, stats = reconstruct.reconstructed(prep.fgraph, prep.stats, prep.calib, BLOCK, disk_cache=tmp_path)
    learned = {k: v.clip_override for k, v in stats.items() if v.clip_override is not None}
    assert learned
    (path,) = tmp_path.glob("rounding-reconstruct-block-*.npz")
    codes, clips = rounding_cache.load(path)
    assert clips == pytest.approx(learned, rel=0, abs=0)
    for n in g.mac_nodes():
        assert np.array_equal(codes[n.name].codes, n.attrs["weight_codes"]["codes"])


def test_a_changed_image_weight_or_option_is_a_new_key(tmp_path):
    prep = fresh_prep(tmp_path)
    g, stats, calib = prep.fgraph, prep.stats, prep.calib
    key = rounding_cache.fingerprint("gptq", g, stats, calib, GPTQ)
    assert key == rounding_cache.fingerprint("gptq", g, stats, [b.clone() for b in calib], GPTQ)
    # the same values in another memory layout are the same inputs
    assert key == rounding_cache.fingerprint("gptq", g, stats,
                                             [b.contiguous(memory_format=torch.channels_last) for b in calib], GPTQ)
    one_pixel = [b.clone() for b in calib]
    one_pixel[1][5, 2, 3, 4] += 1e-3
    assert rounding_cache.fingerprint("gptq", g, stats, one_pixel, GPTQ) != key
    assert rounding_cache.fingerprint("gptq", g, stats, calib, replace(GPTQ, w_bits=4)) != key
    assert rounding_cache.fingerprint("adaround", g, stats, calib, GPTQ) != key
    nodes = list(g.nodes)
    mac = next(i for i, n in enumerate(nodes) if n.is_mac)
    w = nodes[mac].weight.clone()
    w.view(-1)[0] += 1e-4
    nodes[mac] = replace(nodes[mac], weight=w)
    assert rounding_cache.fingerprint("gptq", type(g)(nodes, g.output, g.input_shape), stats, calib, GPTQ) != key
    # a run on other calibration images learns anew (a second file) instead of answering from the first
    stages.quantize(prep, GPTQ)
    stages.quantize(fresh_prep(tmp_path, images=torch.cat(one_pixel)), GPTQ)
    assert len(list(tmp_path.glob("rounding-gptq-*.npz"))) == 2


def test_a_damaged_file_is_learned_again_and_replaced(tmp_path, monkeypatch, capsys):
    calls = counting(monkeypatch, gptq, "gptq_codes")
    first = stages.quantize(fresh_prep(tmp_path), GPTQ)
    (path,) = tmp_path.glob("rounding-gptq-*.npz")
    path.write_bytes(path.read_bytes()[:100])  # a truncated file
    second = stages.quantize(fresh_prep(tmp_path), GPTQ)
    assert len(calls) == 2
    assert "unreadable" in capsys.readouterr().err
    assert_same_program(first, second)
    rounding_cache.load(path)  # replaced by a whole one
    assert not list(tmp_path.glob("*.tmp"))


def test_files_load_without_pickle_and_name_their_format(tmp_path):
    stages.quantize(fresh_prep(tmp_path), GPTQ)
    (path,) = tmp_path.glob("rounding-gptq-*.npz")
    with np.load(path, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
        assert json.loads(str(z["header"]))["format"] == rounding_cache.FORMAT


def test_command_line_flag_reaches_the_run(tmp_path):
    from quantsim.cli.simulate import build_parser
    from quantsim.run.options import RunOptions

    ns = build_parser().parse_args(["cifar_resnet20", "--rounding", "gptq", "--rounding-cache", str(tmp_path)])
    assert RunOptions.from_namespace(ns).rounding_cache == str(tmp_path)
