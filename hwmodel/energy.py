"""Energy models (picojoules) from an accelerator's energy table.

Seed model (DESIGN.md):  E = sum_l N_MAC(l)*E_MAC(b_l) + N_mem(l)*E_DRAM(b)
    E_MAC(b) = e_mac8 * (b/8)^2 with b = max(b_w, b_a)   ("max" form, default)
             = e_mac8 * b_w*b_a/64                        ("product" form)
    E_DRAM = e_dram_bit * 8 * packed bytes: ceil(n*b/8) per tensor (4-bit values two per
             byte, 6-bit four per three bytes), i.e. e_dram_bit * b per element
    N_mem = compulsory DRAM traffic: the layer's input(s), weights and output, each once
            (no refetch, no bursts: the seed model is the memory floor of the layer).

Detailed model:
    E_MAC   = n_mac*e_static(b) + toggles*e_toggle(b) + n_add*e_add32 + E_vec
    E_vec   = the integer nonlinearities' vector-unit operations (softmax, GELU, LayerNorm),
              and log2 attention's shift-and-add terms (attention·V without multiplies),
              each step priced from e_add32 / e_mac8 at its datapath width (hwmodel.vector_ops);
              reported on its own as e_vec_pj and included in e_mac_pj (all compute energy)
    E_SRAM  = e_sram_bit * bits read and written in the SRAM buffers (hwmodel.mapping)
    E_DRAM  = e_dram_bit * 8 * burst_bytes * DRAM bursts (real, burst-aligned transfers of
              the traffic hwmodel.mapping counts under the accelerator's dram_model)
  Split of the MAC energy: a fixed share STATIC_FRACTION of the b^2 energy is data-
  independent (clock, registers, accumulator), e_static(b) = STATIC_FRACTION*e_mac8*(b/8)^2;
  the rest is switching energy, proportional to multiplier-input toggles with a per-toggle
  energy e_toggle(b) = e_toggle8*(b/8) (one input-bit toggle ripples through a row of about
  b partial-product cells). e_toggle8 is calibrated per dataflow and array size so that
  uniform random 8-bit signed operands (fixed seed CALIBRATION_SEED, streamed through
  count_toggles exactly as a layer would be) give exactly the b^2 model's energy. Random
  b-bit operands toggle about b/2 bits per input per step, so the calibrated model keeps the
  b^2 law on random data and departs from it where real operands toggle less (or more).

FP32 reference: the unquantized model on the same array, fp32 mult + add per MAC
(e_fp32_add per pool/residual add, the nonlinearities' steps at fp32 add/mult energies),
32-bit SRAM and DRAM traffic from the same mapping.

The seed model has no vector-unit term (as it has none for pool and residual adds): it is
MACs (attention matmuls included) plus compulsory DRAM traffic.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .arch import Accelerator
from .mapping import packed_bytes
from .toggles import count_toggles
from .vector_ops import stages_energy, stages_energy_fp32

STATIC_FRACTION = 0.25
CALIBRATION_SEED = 20140201
CALIBRATION_SHAPE = (256, 96, 64)  # M, K, N of the calibration GEMM


def e_mac_b2(accel: Accelerator, x_bits: int, w_bits: int, form: str = "max") -> float:
    """Seed-model energy of one MAC (pJ)."""
    e8 = accel.energy.e_mac8_pj
    if form == "max":
        b = max(x_bits, w_bits)
        return e8 * (b / 8) ** 2
    if form == "product":
        return e8 * x_bits * w_bits / 64
    raise ValueError(f"unknown MAC energy form {form!r} (expected 'max' or 'product')")


def random_operands(seed: int, shape=CALIBRATION_SHAPE, bits: int = 8):
    """Uniform random signed operands over the restricted range, as (X (M,K), W (K,N))."""
    rng = np.random.default_rng(seed)
    hi = 2 ** (bits - 1) - 1
    M, K, N = shape
    return (rng.integers(-hi, hi + 1, size=(M, K), dtype=np.int64),
            rng.integers(-hi, hi + 1, size=(K, N), dtype=np.int64))


@lru_cache(maxsize=None)
def _toggle_energy8(e_mac8: float, dataflow: str, rows: int, cols: int) -> float:
    x, w = random_operands(CALIBRATION_SEED)
    t = count_toggles(x, w, 8, True, 8, True, dataflow, rows, cols)
    return (1.0 - STATIC_FRACTION) * e_mac8 * t["n_mac"] / t["mult_toggles"]


def e_toggle(accel: Accelerator, b: int) -> float:
    """Calibrated energy per multiplier-input bit toggle at operand width b (pJ)."""
    return _toggle_energy8(accel.energy.e_mac8_pj, accel.dataflow, accel.rows, accel.cols) * b / 8


def e_static(accel: Accelerator, b: int) -> float:
    return STATIC_FRACTION * accel.energy.e_mac8_pj * (b / 8) ** 2


def mac_energy_toggle(accel: Accelerator, n_mac: int, toggles: float, x_bits: int, w_bits: int) -> float:
    b = max(x_bits, w_bits)
    return n_mac * e_static(accel, b) + toggles * e_toggle(accel, b)


def seed_energy(accel: Accelerator, n_mac: int, x_bits: int, w_bits: int,
                mem_elems: list[tuple[int, int]], form: str = "max") -> dict:
    """Seed model for one layer; mem_elems = [(elements, bits), ...] moved to/from DRAM,
    each tensor as packed bytes."""
    e_mac = n_mac * e_mac_b2(accel, x_bits, w_bits, form) if n_mac else 0.0
    e_dram = 8 * sum(packed_bytes(n, b) for n, b in mem_elems) * accel.energy.e_dram_bit_pj
    return {"e_seed_mac_pj": e_mac, "e_seed_dram_pj": e_dram, "e_seed_pj": e_mac + e_dram}


def sram_bits(row: dict) -> int:
    return 8 * (row["sram_rd_ifmap_bytes"] + row["sram_rd_filter_bytes"]
                + row["sram_rd_ofmap_bytes"] + row["sram_wr_ofmap_bytes"])


def global_buffer_energy(accel: Accelerator, row: dict) -> float:
    """Reads and writes of activations held in the global buffer (hwmodel.residency)."""
    return 8 * (row.get("gb_rd_bytes", 0) + row.get("gb_wr_bytes", 0)) * accel.e_gb_bit_pj


def detailed_energy(accel: Accelerator, row: dict, toggles: float | None) -> dict:
    """Detailed model for one mapped layer (row from hwmodel.mapping)."""
    en = accel.energy
    if row["n_mac"]:
        if toggles is None:  # no operands: fall back on the b^2 law for the MAC part
            e_mac = row["n_mac"] * e_mac_b2(accel, row["x_bits"], row["w_bits"])
        else:
            e_mac = mac_energy_toggle(accel, row["n_mac"], toggles, row["x_bits"], row["w_bits"])
    else:
        e_mac = 0.0
    e_mac += row["n_add"] * en.e_add32_pj
    e_vec = stages_energy(accel, row.get("vec_stages", ()))
    e_mac += e_vec
    e_sram = sram_bits(row) * en.e_sram_bit_pj + global_buffer_energy(accel, row)
    e_dram = row["dram_bursts"] * accel.burst_bytes * 8 * en.e_dram_bit_pj
    return {"e_mac_pj": e_mac, "e_vec_pj": e_vec, "e_sram_pj": e_sram, "e_dram_pj": e_dram,
            "e_total_pj": e_mac + e_sram + e_dram}


def fp32_energy(accel: Accelerator, row32: dict) -> float:
    """FP32 energy of a layer mapped with 32-bit operands (row32 from hwmodel.mapping)."""
    en = accel.energy
    e = row32["n_mac"] * (en.e_fp32_mult_pj + en.e_fp32_add_pj) + row32["n_add"] * en.e_fp32_add_pj
    e += stages_energy_fp32(accel, row32.get("vec_stages", ()))
    e += sram_bits(row32) * en.e_sram_bit_pj + global_buffer_energy(accel, row32)
    e += row32["dram_bursts"] * accel.burst_bytes * 8 * en.e_dram_bit_pj
    return e
