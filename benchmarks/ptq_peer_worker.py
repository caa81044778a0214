"""One peer PTQ row for benchmarks/ptq_peers.py: Sony MCT or Qualcomm AIMET on CIFAR ResNet-20.

Runs ONLY in the peer's own venv (ptq_peers.py creates it and calls this file as a
subprocess); it imports torch, the peer and quantsim/zoo/cifar_resnet.py (loaded by path: a
plain torch module, so none of quantsim's package or dependencies is needed):

    .venv-mct/bin/python benchmarks/ptq_peer_worker.py mct-gptq IMAGES.pt 4 4 20 OUT.json [CONVENTION]

IMAGES.pt (written once by ptq_peers.py, read with weights_only=True): the float state_dict,
the calibration images and the evaluation images and labels, already normalized. The tool
quantizes with its own defaults except the bit widths (CONVENTION 'all', the default: every layer
at W/A, the first and last included, as both tools do by default; 'first-last-8': the input image,
the first conv's weights, the classifier's input and weights at 8 bits, as ours); OUT.json gets top-1 of the tool's fake-quantized
model on the evaluation images and the wall seconds of quantization (evaluation not counted).
"""
from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BATCH = 32  # calibration batch for every tool (8 batches of the 256 images)


def resnet20(state_dict) -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location("cifar_resnet", ROOT / "quantsim" / "zoo" / "cifar_resnet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.cifar_resnet20()
    model.load_state_dict(state_dict)
    return model.eval()


@torch.no_grad()
def top1(model, x: torch.Tensor, y: torch.Tensor) -> float:
    hits = 0
    for i in range(0, len(x), 250):
        out = model(x[i:i + 250])
        out = out[0] if isinstance(out, (list, tuple)) else out
        hits += int((out.argmax(1) == y[i:i + 250]).sum())
    return 100.0 * hits / len(x)


# --------------------------------------------------------------------------- MCT 2.6


def unique(configs: list) -> list:
    """configs without repeats, in order (MCT's configs compare equal but do not hash)."""
    return [c for i, c in enumerate(configs) if c not in configs[:i]]


def mct_tpc(w_bits: int, a_bits: int, convention: str = "all"):
    """MCT's default platform (imx500 TPC v1.0: symmetric per-channel weights, power-of-two
    activation thresholds) with every MAC layer's weights at w_bits and every activation at a_bits.
    first-last-8 adds the 8-bit options that MCT's manual bit widths (mct_first_last_8) pick from:
    without mixed precision MCT quantizes each node with its base option (the width), except where
    a manual width names another."""
    import model_compression_toolkit.target_platform_capabilities.schema.mct_current_schema as schema
    from model_compression_toolkit.target_platform_capabilities.constants import KERNEL_ATTR, WEIGHTS_N_BITS
    from model_compression_toolkit.target_platform_capabilities.tpc_models.imx500_tpc.v1_0 import tpc as imx500

    linear, _, default = imx500.get_op_quantization_configs()
    inputs = (a_bits,) if convention == "all" else tuple(sorted({a_bits, 8}))

    def mac(w, a):
        return linear.clone_and_edit(attr_to_edit={KERNEL_ATTR: {WEIGHTS_N_BITS: w}}, activation_n_bits=a,
                                     supported_input_activation_n_bits=inputs)

    def act(a):
        return default.clone_and_edit(activation_n_bits=a, supported_input_activation_n_bits=inputs)

    base_mac, base_act = mac(w_bits, a_bits), act(a_bits)
    macs = [base_mac] if convention == "all" else unique([base_mac, mac(8, a_bits), mac(8, 8)])
    tpc = imx500.generate_tpc(default_config=base_act, base_config=base_mac, mixed_precision_cfg_list=macs,
                              name=f"imx500_w{w_bits}a{a_bits}_{convention}")
    if convention == "all":
        return tpc
    acts = unique([base_act, act(8)])
    options = schema.QuantizationConfigOptions(quantization_configurations=tuple(acts), base_config=base_act)
    return tpc.model_copy(update={"default_qco": options})


def mct_first_last_8(convention: str):
    """MCT's manual bit widths for first/last 8, the convention of ours (ptq_methods.py): the input
    image and the first conv's weights, the classifier's input (the pool's output) and its weights at
    8 bits; the first conv's output stays at the width (the classifier's output, the logits, at 8)."""
    from model_compression_toolkit.core import BitWidthConfig
    from model_compression_toolkit.core.common.network_editors import NodeNameFilter

    bw = BitWidthConfig()
    if convention == "first-last-8":
        bw.set_manual_activation_bit_width([NodeNameFilter("x"), NodeNameFilter("avgpool"), NodeNameFilter("linear")], 8)
        # the first conv's node is "conv1_bn" once MCT has folded its BatchNorm into it
        bw.set_manual_weights_bit_width([NodeNameFilter("conv1_bn"), NodeNameFilter("linear")], 8, "weight")
    return bw


def run_mct(tool: str, model, calib, w_bits: int, a_bits: int, iters: int, convention: str):
    import model_compression_toolkit as mct

    def representative():
        for i in range(0, len(calib), BATCH):
            yield [calib[i:i + BATCH]]

    tpc = mct_tpc(w_bits, a_bits, convention)
    core = mct.core.CoreConfig(bit_width_config=mct_first_last_8(convention))
    t0 = time.perf_counter()
    if tool == "mct-ptq":
        qmodel, _ = mct.ptq.pytorch_post_training_quantization(model, representative, core_config=core,
                                                               target_platform_capabilities=tpc)
    else:  # gradient-based PTQ (MCT's "GPTQ"), iters = epochs over the calibration batches
        cfg = mct.gptq.get_pytorch_gptq_config(n_epochs=iters)
        qmodel, _ = mct.gptq.pytorch_gradient_post_training_quantization(
            model, representative, gptq_config=cfg, core_config=core, target_platform_capabilities=tpc)
    seconds = time.perf_counter() - t0
    return qmodel.eval().cpu(), seconds, getattr(mct, "__version__", "?")


def mct_widths(qmodel) -> tuple[list[int], list[int]]:
    """The weight and activation widths MCT's model really carries (a check on the TPC edit)."""
    w, a = set(), set()
    for m in qmodel.modules():
        for q in (getattr(m, "weights_quantizers", None) or {}).values():
            w.add(int(q.num_bits))
        q = getattr(m, "activation_holder_quantizer", None)
        if q is not None:
            a.add(int(q.num_bits))
    return sorted(w), sorted(a)


# --------------------------------------------------------------------------- AIMET 2.42


def aimet_first_last_8(sim) -> None:
    """first/last 8 on AIMET's QuantSim, ours's convention: the input image (conv1's input quantizer) and
    conv1's weights, the classifier's input (the pool's output quantizer) and its weights at 8 bits."""
    m = sim.model
    for q in (m.conv1.input_quantizers[0], m.conv1.param_quantizers["weight"], m.avgpool.output_quantizers[0],
              m.linear.param_quantizers["weight"]):
        q.bitwidth = 8


def run_aimet(tool: str, model, calib, w_bits: int, a_bits: int, iters: int, convention: str):
    """AIMET's PTQ recipe: prepare, fold BNs, (AdaRound,) QuantSim with per-channel weights, encodings on calib."""
    import tempfile

    import aimet_torch
    from aimet_torch.adaround.adaround_weight import Adaround, AdaroundParameters
    from aimet_torch.batch_norm_fold import fold_all_batch_norms
    from aimet_torch.common.defs import QuantScheme
    from aimet_torch.model_preparer import prepare_model
    from aimet_torch.quantsim import QuantizationSimModel

    config = str(Path(aimet_torch.__file__).parent / "common" / "quantsim_config" / "default_config_per_channel.json")
    dummy = calib[:1]
    batches = list(calib.split(BATCH))

    def calibrate(sim_model, _=None):
        with torch.no_grad():
            for b in batches:
                sim_model(b)

    t0 = time.perf_counter()
    model = prepare_model(model)
    fold_all_batch_norms(model, tuple(dummy.shape), dummy)
    # REFERENCES.md's settings: QuantSim with the tf (min-max) scheme; AdaRound with tf_enhanced
    scheme = QuantScheme.post_training_tf_enhanced if tool == "aimet-adaround" else QuantScheme.post_training_tf
    with tempfile.TemporaryDirectory() as tmp:
        if tool == "aimet-adaround":
            params = AdaroundParameters(data_loader=batches, num_batches=len(batches), default_num_iterations=iters)
            override = [(model.conv1, 8), (model.linear, 8)] if convention == "first-last-8" else None
            model = Adaround.apply_adaround(model, dummy, params, path=tmp, filename_prefix="adaround",
                                            default_param_bw=w_bits, param_bw_override_list=override,
                                            default_quant_scheme=scheme, default_config_file=config)
        sim = QuantizationSimModel(model, dummy, quant_scheme=scheme, default_param_bw=w_bits,
                                   default_output_bw=a_bits, config_file=config)
        if convention == "first-last-8":
            aimet_first_last_8(sim)
        if tool == "aimet-adaround":  # the learned weight encodings, frozen; activations computed below
            sim.load_encodings(str(Path(tmp) / "adaround.encodings"), strict=False, partial=True,
                               requires_grad=False, allow_overwrite=False)
        sim.compute_encodings(calibrate)
    seconds = time.perf_counter() - t0
    return sim.model.eval(), seconds, aimet_torch.__version__


def aimet_widths(qmodel) -> tuple[list[int], list[int]]:
    """The weight and activation widths of AIMET's quantizers (a check on the settings)."""
    from aimet_torch.v2.quantization.base import QuantizerBase

    w, a = set(), set()
    for name, m in qmodel.named_modules():
        if isinstance(m, QuantizerBase) and hasattr(m, "bitwidth"):
            (w if ".param_quantizers." in name else a).add(int(m.bitwidth))
    return sorted(w), sorted(a)


def main(argv: list[str]) -> int:
    tool, blob, w_bits, a_bits, iters, out, *rest = argv
    convention = rest[0] if rest else "all"
    w_bits, a_bits, iters = int(w_bits), int(a_bits), int(iters)
    torch.manual_seed(0)
    d = torch.load(blob, weights_only=True)
    model = resnet20(d["state_dict"])
    run = run_mct if tool.startswith("mct-") else run_aimet
    qmodel, seconds, version = run(tool, model, d["calib"], w_bits, a_bits, iters, convention)
    w_seen, a_seen = (mct_widths if tool.startswith("mct-") else aimet_widths)(qmodel)
    row = {"tool": tool, "convention": convention, "version": version, "top1": top1(qmodel, d["eval_x"], d["eval_y"]),
           "quantize_s": seconds, "iters": iters, "weight_bits_seen": w_seen, "act_bits_seen": a_seen}
    Path(out).write_text(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
