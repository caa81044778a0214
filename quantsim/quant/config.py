"""The quantization recipe as data: printable, saveable, comparable (cf. torchao's configs)."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from integer_ref.arith import ACC_OVERFLOW_MODES

from quantsim.errors import QuantsimError

MIN_BITS, MAX_BITS = 2, 16
GRANULARITIES = ("per-tensor", "per-channel")
# similarity / ranking: Liu et al.'s per-layer search of weight and input scales (quantsim.quant.scale_search)
SEARCH_METHODS = ("similarity", "ranking")
CALIB_METHODS = ("minmax", "percentile", "mse") + SEARCH_METHODS
# dyadic: integer multiplier and shift (hardware-like); float32: ONNX Runtime's float32 multipliers
# computed from float32 scales, so that quantsim.interop.onnx_export gives a model ORT runs bit-exactly
REQUANT_MODES = ("dyadic", "float32")
NONLINEAR_MODES = ("integer", "float")
# weight rounding: nearest (round half to even at the weight scale), GPTQ's error-fed rounding at
# the same scale (quantsim.quant.gptq) or AdaRound's learned up/down rounding (quantsim.quant.adaround);
# gptq_inputs: whose inputs the Hessians are taken on
ROUNDING_METHODS = ("nearest", "gptq", "adaround")
GPTQ_INPUTS = ("sequential", "float")
# reconstruction unit (quantsim.quant.reconstruct): none (AdaRound alone, weights only), layer or
# block (BRECQ): AdaRound's rounding plus learned activation steps on the unit's output error
RECONSTRUCT_UNITS = ("none", "layer", "block")
# cross-layer equalization across a ReLU6: skip such pairs (the function stays exact) or replace the
# ReLU6 by a ReLU first (DFQ); quantsim.quant.equalize.RELU6_MODES
EQUALIZE_RELU6 = ("skip", "relu")
# softmax outputs (the attention probabilities): uniform codes at scale 2^-b, or log2 codes
# (code k means 2^-k; attention·V then shifts and adds V's integers: integer_ref.kernels_vit)
SOFTMAX_QUANT = ("uniform", "log2")


@dataclass
class QuantConfig:
    w_bits: int = 8
    a_bits: int = 8
    granularity: str = "per-channel"
    calib_method: str = "minmax"
    percentile: float = 99.99
    out_bits: int = 16  # the network's output (logits) tensor: kept wide so top-1 ties stay rare
    mult_bits: int = 31  # width of the dyadic requantization multiplier M
    acc_bits: int = 32
    # what the accumulator holds of a sum outside acc_bits (integer_ref.arith.accumulator_value):
    # count (the exact sum, overflows only counted), saturate or wrap (two's complement)
    acc_overflow: str = "count"
    requant: str = "dyadic"
    # Vision Transformers (quantsim.quant.lower): the residual stream (patch/position embedding and
    # residual-add outputs, LayerNorm inputs) and the inputs of softmax and GELU (q·kᵀ scores,
    # fc1 outputs) are no MAC operands, so they are held wider; nonlinear picks integer-only
    # (I-BERT, bit-exact) or float softmax/GELU/LayerNorm (Liu et al.; never bit-exact).
    resid_bits: int = 16
    nonlinear_in_bits: int = 16
    nonlinear: str = "integer"
    # per MAC layer overrides (mixed precision): layer name -> [w_bits, a_bits]
    layer_bits: dict[str, list[int]] = field(default_factory=dict)
    # similarity / ranking: points of the interval [0.5, 1.2] x max searched (Liu et al.: 100)
    search_steps: int = 100
    # b' = b - mean quantization error of the layer output on the calibration images
    bias_correction: bool = False
    rounding: str = "nearest"
    gptq_inputs: str = "sequential"
    # adaround: Adam iterations per layer, and the seed of its batch sampling (codes reproducible to the bit)
    recon_iters: int = 500
    recon_seed: int = 0
    # --recon-crop P: units wider than P input pixels learn on aligned P x P windows (reconstruct.CropPlan;
    # 0: whole images)
    recon_crop: int = 0
    # reconstruction unit (needs rounding 'adaround') and QDrop's probability of keeping an
    # activation element unquantized while reconstructing (0: BRECQ without QDrop)
    reconstruct: str = "none"
    qdrop: float = 0.5
    # cross-layer equalization (quantsim.quant.equalize, applied when the model is prepared, before
    # the statistics); equalize_relu6: skip pairs with a ReLU6 between them (exact) or make it a ReLU (DFQ)
    equalize: bool = False
    equalize_relu6: str = "skip"
    # RepQ-ViT post-LayerNorm reparameterization (quantsim.quant.reparam_ln, applied when the model
    # is prepared, before the statistics) and the softmax output quantizer
    reparam_ln: bool = False
    softmax_quant: str = "uniform"

    def __post_init__(self):
        for b in (self.w_bits, self.a_bits, self.out_bits, *[x for wa in self.layer_bits.values() for x in wa]):
            check_bits(b)
        for b in (self.resid_bits, self.nonlinear_in_bits):
            check_bits(b)
        if self.nonlinear not in NONLINEAR_MODES:
            raise QuantsimError(f"nonlinear mode {self.nonlinear!r}: choose one of {', '.join(NONLINEAR_MODES)}")
        if self.granularity not in GRANULARITIES:
            raise QuantsimError(f"granularity {self.granularity!r}: choose one of {', '.join(GRANULARITIES)}")
        if self.calib_method not in CALIB_METHODS:
            raise QuantsimError(f"calibration method {self.calib_method!r}: choose one of {', '.join(CALIB_METHODS)}")
        if not isinstance(self.search_steps, int) or self.search_steps < 2:
            raise QuantsimError(f"search steps {self.search_steps}: use an integer >= 2")
        if self.requant not in REQUANT_MODES:
            raise QuantsimError(f"requant mode {self.requant!r}: choose one of {', '.join(REQUANT_MODES)}")
        if self.acc_overflow not in ACC_OVERFLOW_MODES:
            raise QuantsimError(f"accumulator overflow mode {self.acc_overflow!r}: choose one of "
                                f"{', '.join(ACC_OVERFLOW_MODES)}")
        if not 8 <= self.acc_bits <= 62:
            raise QuantsimError(f"accumulator width {self.acc_bits}: use 8..62 bits")
        if self.rounding not in ROUNDING_METHODS:
            raise QuantsimError(f"rounding {self.rounding!r}: choose one of {', '.join(ROUNDING_METHODS)}")
        if self.gptq_inputs not in GPTQ_INPUTS:
            raise QuantsimError(f"GPTQ inputs {self.gptq_inputs!r}: choose one of {', '.join(GPTQ_INPUTS)}")
        if self.equalize_relu6 not in EQUALIZE_RELU6:
            raise QuantsimError(f"equalize relu6 mode {self.equalize_relu6!r}: choose one of {', '.join(EQUALIZE_RELU6)}")
        if self.softmax_quant not in SOFTMAX_QUANT:
            raise QuantsimError(f"softmax quantizer {self.softmax_quant!r}: choose one of {', '.join(SOFTMAX_QUANT)}")
        if self.softmax_quant == "log2" and self.nonlinear == "float":
            raise QuantsimError("--softmax-quant log2 needs the integer softmax (--nonlinear integer)")
        if self.rounding in ("gptq", "adaround") and self.bias_correction:
            raise QuantsimError("bias correction measures the error of round-to-nearest weights: it does not "
                                f"combine with --rounding {self.rounding} (use one or the other)")
        if self.reconstruct not in RECONSTRUCT_UNITS:
            raise QuantsimError(f"--reconstruct {self.reconstruct!r}: choose one of {', '.join(RECONSTRUCT_UNITS)}")
        if self.reconstruct != "none" and self.rounding != "adaround":
            raise QuantsimError(f"--reconstruct {self.reconstruct} learns AdaRound's rounding variables: use it with "
                                f"--rounding adaround (not {self.rounding})")
        if self.reconstruct != "none" and self.calib_method in SEARCH_METHODS:
            raise QuantsimError(f"--reconstruct {self.reconstruct} learns the activation scales itself: it does not "
                                f"combine with --calib-method {self.calib_method} (use minmax, percentile or mse)")
        if not (isinstance(self.qdrop, (int, float)) and 0.0 <= self.qdrop < 1.0):
            raise QuantsimError(f"--qdrop {self.qdrop}: give a probability in [0, 1)")
        if not isinstance(self.recon_iters, int) or self.recon_iters < 1:
            raise QuantsimError(f"--recon-iters {self.recon_iters}: use an integer >= 1")
        if not isinstance(self.recon_crop, int) or self.recon_crop < 0:
            raise QuantsimError(f"--recon-crop {self.recon_crop}: give a window side in pixels (0: whole images)")
        if self.recon_crop and self.reconstruct == "none":
            raise QuantsimError("--recon-crop applies to --reconstruct block|layer: add one, or drop --recon-crop")
        if not isinstance(self.recon_seed, int):
            raise QuantsimError(f"AdaRound seed {self.recon_seed!r}: use an integer")
        if not 0 < self.percentile <= 100:
            raise QuantsimError(f"percentile {self.percentile} must be in (0, 100]")

    def bits_for(self, layer: str) -> tuple[int, int]:
        wa = self.layer_bits.get(layer)
        return (wa[0], wa[1]) if wa else (self.w_bits, self.a_bits)

    @property
    def label(self) -> str:
        if self.layer_bits:
            return "mixed"
        return f"W{self.w_bits}A{self.a_bits}"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "QuantConfig":
        return cls(**d)

    def round_to_nearest(self) -> "QuantConfig":
        """This config with round-to-nearest weights: the learned rounding goes, and with it a
        reconstruction and its own options (--recon-crop); widths, clips and the rest stay."""
        d = self.to_json()
        d.update(rounding="nearest", reconstruct="none", recon_crop=0)
        return QuantConfig.from_json(d)


def check_bits(b: int) -> int:
    if not isinstance(b, int) or not MIN_BITS <= b <= MAX_BITS:
        raise QuantsimError(f"bit width {b} is out of range: use {MIN_BITS}..{MAX_BITS}")
    return b


def parse_bits(text: str) -> tuple[int, int] | None:
    """'8' -> (8, 8); 'W4A8' -> (4, 8); 'fp32' -> None. 'mixed' is handled by the caller."""
    t = text.strip().lower()
    if t in ("fp32", "float", "float32"):
        return None
    m = re.fullmatch(r"(\d+)", t)
    if m:
        b = int(m.group(1))
        return check_bits(b), b
    m = re.fullmatch(r"w(\d+)a(\d+)", t)
    if m:
        return check_bits(int(m.group(1))), check_bits(int(m.group(2)))
    raise QuantsimError(f"--bits {text!r}: use fp32, mixed, a width {MIN_BITS}..{MAX_BITS} such as 8, or WxAy such as W4A8")
