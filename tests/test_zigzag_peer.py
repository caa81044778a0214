"""ZigZag 3.9.1 (benchmarks/zigzag_peer.py, in its own venv) against hwmodel.mapping on one small
conv on scalesim-32x32-ws: the counts the comparison reports as equal are equal, and the
padding term is what benchmarks/zigzag_compare.py says it is.

Skips unless ZigZag's venv exists (`python benchmarks/zigzag_compare.py` creates it in
.cache/venv-zigzag). About 10 s.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from zigzag_compare import PEER, ZZ_PY, arch_json, ours, theirs  # noqa: E402

from hwmodel.arch import load_accelerator  # noqa: E402
from hwmodel.mapping import map_conv  # noqa: E402

# 3 -> 16 channels, 3x3, pad 1, on an 8x8 input: everything fits the 64 KiB buffers
LAYER = dict(name="small", C=3, O=16, H=8, W=8, kh=3, kw=3, stride=1, pad_h=[1, 1], pad_w=[1, 1], OH=8, OW=8,
             x_bits=8, w_bits=8, out_bits=8, acc_bits=32)


@pytest.fixture(scope="module")
def zz(tmp_path_factory):
    if not ZZ_PY.exists():
        pytest.skip(f"ZigZag venv {ZZ_PY.parent.parent} absent (python benchmarks/zigzag_compare.py creates it)")
    d = tmp_path_factory.mktemp("zigzag")
    accel = load_accelerator("scalesim-32x32-ws")
    job = d / "job.json"
    job.write_text(json.dumps({"arch": arch_json(accel), "layers": [LAYER], "workdir": str(d), "lpf_limit": 4}))
    subprocess.run([str(ZZ_PY), str(PEER), str(job), str(d / "out.json")], check=True, capture_output=True)
    return accel, json.loads((d / "out.json").read_text())["layers"][0]


def test_dram_and_mac_terms_equal_hwmodel(zz):
    accel, z = zz
    row = map_conv((1, 3, 8, 8), (16, 3, 3, 3), accel, padding=(1, 1, 1, 1))
    row["e_seed_mac_pj"] = row["n_mac"] * accel.energy.e_mac8_pj
    row.update(e_sram_pj=0.0, e_dram_pj=0.0, e_mac_pj=0.0)
    a, b = ours(row), theirs(z)
    assert z["n_mac"] == row["n_mac"] == 64 * 27 * 16
    for k in ("dram_rd_x", "dram_rd_w", "dram_wr_o", "dram_rd_o", "sram_o"):
        assert a[k] == b[k], k
    assert a["dram_rd_x"] == 8 * 3 * 8 * 8  # the unpadded input, once
    assert b["e_mac"] == pytest.approx(a["e_mac"])
    # ZigZag prices an access at its port width: energy per bit x bits moved
    assert b["e_dram"] == pytest.approx(accel.energy.e_dram_bit_pj * (b["dram_rd_x"] + b["dram_rd_w"] + b["dram_wr_o"]))


def test_sram_ifmap_difference_is_the_padded_taps(zz):
    accel, z = zz
    row = map_conv((1, 3, 8, 8), (16, 3, 3, 3), accel, padding=(1, 1, 1, 1))
    b = theirs(z)
    assert 8 * row["sram_rd_ifmap"] < b["sram_rd_x"]  # hwmodel skips the padded taps
    assert b["sram_rd_x"] == 8 * row["gemm_m"] * row["gemm_k"] * row["col_folds"]  # ZigZag reads them
