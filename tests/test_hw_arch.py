"""Accelerator presets load, and bad files fail with one clear line."""
from __future__ import annotations

import tomllib

import pytest

from hwmodel.arch import PRESET_DIR, list_presets, load_accelerator


def test_presets_load_and_carry_sources():
    names = list_presets()
    for required in ("scalesim-32x32-ws", "scalesim-32x32-os", "edge-16x16-ws"):
        assert required in names
    for n in names:
        a = load_accelerator(n)
        assert a.name == n and a.dataflow in ("ws", "os", "is")
        for k in ("e_mac8_pj", "e_sram_bit_pj", "e_dram_bit_pj", "e_fp32_mult_pj"):
            assert a.energy.sources[k]


def test_scalesim_presets_mirror_scale_cfg():
    for df in ("ws", "os"):
        a = load_accelerator(f"scalesim-32x32-{df}")
        assert (a.rows, a.cols, a.dataflow) == (32, 32, df)
        assert a.sram_ifmap_bytes == a.sram_filter_bytes == a.sram_ofmap_bytes == 64 * 1024


def test_load_by_path():
    a = load_accelerator(PRESET_DIR / "edge-16x16-ws.toml")
    assert a.rows == 16


def _write(tmp_path, text):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    return p


def _mutate(tmp_path, section, key, value):
    doc = (PRESET_DIR / "scalesim-32x32-ws.toml").read_text()
    lines, out, cur = doc.splitlines(), [], None
    for ln in lines:
        s = ln.strip()
        if s.startswith("["):
            cur = s.split("]")[0][1:]
        if cur == section and s.split("=")[0].strip() == key:
            if value is None:
                continue
            ln = f"{key} = {value}"
        out.append(ln)
    return _write(tmp_path, "\n".join(out))


@pytest.mark.parametrize("section,key,value,words", [
    ("array", "rows", None, "missing key array.rows"),
    ("array", "rows", '"32"', "array.rows must be int"),
    ("array", "dataflow", '"rs"', "array.dataflow must be one of"),
    ("sram", "ifmap_bytes", "0", "sram.ifmap_bytes must be positive"),
    ("energy", "e_dram_bit_pj", "-1.0", "energy.e_dram_bit_pj must be positive"),
    ("energy", "e_mac8_source", None, "missing key energy.e_mac8_source"),
    ("array", "clock_mhz", "0", "array.clock_mhz must be positive"),
    ("array", "clock_mhz", '"1GHz"', "array.clock_mhz must be float"),
])
def test_bad_preset_names_key_and_file(tmp_path, section, key, value, words):
    p = _mutate(tmp_path, section, key, value)
    tomllib.loads(p.read_text())  # still valid TOML
    with pytest.raises(ValueError) as e:
        load_accelerator(p)
    msg = str(e.value)
    assert words in msg and str(p) in msg and "\n" not in msg


def test_unknown_preset_and_broken_toml(tmp_path):
    with pytest.raises(ValueError, match="unknown accelerator preset"):
        load_accelerator("no-such-accel")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_accelerator(_write(tmp_path, "name = ["))


def test_clock_gives_latency_and_is_optional(tmp_path):
    """Presets name an (assumed) clock: latency = cycles / clock; a file without one has no latency."""
    for n in list_presets():
        a = load_accelerator(n)
        assert a.clock_mhz and a.latency_us(4_000_000) == pytest.approx(4_000_000 / a.clock_mhz)
    assert "ASSUMED" in (PRESET_DIR / "scalesim-32x32-ws.toml").read_text()
    no_clock = _mutate(tmp_path, "array", "clock_mhz", None)
    with pytest.raises(ValueError, match="dram.transfer_mts needs array.clock_mhz"):  # its bus rate is per second
        load_accelerator(no_clock)
    text = "\n".join(ln for ln in no_clock.read_text().splitlines()
                     if not ln.startswith(("transfer_", "stalls")))
    a = load_accelerator(_write(tmp_path, text))
    assert a.clock_mhz is None and a.latency_us(1000) is None
