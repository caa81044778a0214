"""What importing quantsim costs: each check runs in a fresh interpreter and reads sys.modules.

Every Ray worker of `pareto --ray` imports quantsim.run.sweep (the warm-up, then the tasks'
functions) and unpickles a CIFAR ResNet; timm, torchvision (with torch._dynamo, sympy),
matplotlib and scipy's optimiser cost it seconds it never uses. `--help` of the two commands
needs neither torch nor pandas. A heavy import put back at module level fails here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("timm", "torchvision", "torch._dynamo", "sympy", "matplotlib", "scipy.optimize")


def loaded_after(code: str, names=HEAVY + ("torch", "pandas")) -> dict[str, bool]:
    """Run `code` in a fresh interpreter; which of `names` it left in sys.modules."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps({{n: n in sys.modules for n in {list(names)!r}}}))"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_ray_worker_imports_no_library_it_does_not_use():
    got = loaded_after("import quantsim.run.sweep, quantsim.run.distribute")
    assert got["torch"] and got["pandas"]  # the tasks use both: the probe sees what is imported
    assert [n for n in HEAVY if got[n]] == []


def test_a_cifar_resnet_unpickles_and_captures_without_timm_or_torchvision():
    got = loaded_after("import pickle\n"
                       "from quantsim.zoo.cifar_resnet import cifar_resnet20\n"
                       "from quantsim.graph.capture import capture\n"
                       "model = pickle.loads(pickle.dumps(cifar_resnet20()))\n"
                       "assert len(capture(model, (3, 32, 32)).nodes) > 20")
    assert not got["timm"] and not got["torchvision"]


def test_command_line_parsers_import_neither_torch_nor_pandas():
    got = loaded_after("from quantsim.cli import pareto, simulate\n"
                       "from quantsim.run.options import RunOptions, SweepOptions\n"
                       "assert pareto.build_parser().description.startswith('The accuracy-energy Pareto sweep')\n"
                       "SweepOptions.from_namespace(pareto.build_parser().parse_args(['cifar_resnet20']))\n"
                       "RunOptions.from_namespace(simulate.build_parser().parse_args(['cifar_resnet20']))")
    assert not got["torch"] and not got["pandas"]


def test_package_names_resolve_on_first_use():
    got = loaded_after("import quantsim\n"
                       "assert not __import__('sys').modules.get('quantsim.api')\n"
                       "from quantsim import QuantConfig, RunOptions\n"
                       "import quantsim.run.single\n"
                       "assert callable(quantsim.run) and quantsim.quantize.__module__ == 'quantsim.api'\n"
                       "assert quantsim.QuantConfig is QuantConfig")
    assert got["torch"]  # quantsim.api was imported by its first name, and with it torch
