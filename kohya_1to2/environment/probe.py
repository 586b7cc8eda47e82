"""`doctor`: the training environment, what `launch` will substitute on this machine, and known traps.

Versions come from a probe run in a child Python (it imports torch; the wrapper itself never does); turning
the probe's facts into findings is pure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kohya_1to2 import kohya
from kohya_1to2.configs.lint.prediction import base_prediction_line
from kohya_1to2.launch.substitutions import Capabilities, Substitution, plan_substitutions

PROBE = r"""
import importlib, importlib.metadata as md, json, os, platform, sys
def version(dist):
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None
facts = {"python": platform.python_version(), "executable": sys.executable}
for dist in ("torch", "torchvision", "xformers", "bitsandbytes", "lycoris-lora", "accelerate", "diffusers",
             "transformers", "open-clip-torch", "library"):
    facts[dist] = version(dist)
facts["cuda"] = False
facts["gpus"] = []
try:
    import torch
    facts["torch_cuda_build"] = torch.version.cuda
    facts["cuda"] = bool(torch.cuda.is_available())
    if facts["cuda"]:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            facts["gpus"].append({"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1)})
except Exception as exc:
    facts["torch_error"] = f"{type(exc).__name__}: {exc}"
facts["xformers_ok"] = False
if facts["cuda"] and facts["xformers"]:
    try:
        import xformers.ops  # noqa
        facts["xformers_ok"] = True
    except Exception as exc:
        facts["xformers_error"] = f"{type(exc).__name__}: {exc}"
facts["bitsandbytes_ok"] = False
if facts["cuda"] and facts["bitsandbytes"]:
    try:
        import bitsandbytes as bnb, torch
        bnb.optim.AdamW8bit([torch.nn.Parameter(torch.zeros(1, device="cuda"))])
        facts["bitsandbytes_ok"] = True
    except Exception as exc:
        facts["bitsandbytes_error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(facts))
"""

GPU_CONFIG = {kohya.MIXED_PRECISION: "bf16", kohya.SAVE_PRECISION: "fp16", kohya.XFORMERS: True,
              kohya.OPTIMIZER_TYPE: "AdamW8bit"}
"""A typical GPU training config: what launch would change in it on this machine."""


@dataclass(frozen=True)
class Finding:
    """One line of the report; `problem` ones make doctor exit non-zero."""

    label: str
    value: str
    problem: bool = False
    fix: str | None = None


def probe_environment(python: str = sys.executable, timeout: float = 180.0) -> dict[str, Any]:
    """Run the probe in a child Python; a broken environment is reported, not raised."""
    try:
        proc = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"probe_error": str(exc)}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            facts: dict[str, Any] = json.loads(line)
            return facts
    return {"probe_error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}


def capabilities_of(facts: dict[str, Any]) -> Capabilities:
    return Capabilities(
        cuda=bool(facts.get("cuda")),
        xformers=bool(facts.get("xformers_ok")),
        bitsandbytes=bool(facts.get("bitsandbytes_ok")),
    )


def planned_substitutions(facts: dict[str, Any]) -> list[Substitution]:
    return plan_substitutions(GPU_CONFIG, capabilities_of(facts))


def accelerate_config_file(environ: dict[str, str]) -> Path:
    """Where `accelerate launch` would look for a default config (launch isolates it via HF_HOME)."""
    home = environ.get("HF_HOME") or str(Path(environ.get("HOME", "~")) / ".cache" / "huggingface")
    return Path(home) / "accelerate" / "default_config.yaml"


def findings(facts: dict[str, Any], environ: dict[str, str]) -> list[Finding]:
    """Turn probe facts of the Python that runs sd-scripts into report lines (pure; the install's own lines:
    environment.install.install_findings)."""
    out: list[Finding] = []
    if "probe_error" in facts:
        out.append(Finding("python probe", facts["probe_error"], True, "run ./bootstrap.sh"))
        return out
    out.append(Finding("python", f"{facts['python']} ({facts['executable']})"))
    torch_v, vision_v = facts.get("torch"), facts.get("torchvision")
    if not torch_v:
        out.append(Finding("torch", "not installed", True, "run `python -m kohya_1to2 setup`"))
    else:
        cuda = f"CUDA {facts.get('torch_cuda_build')}" if facts.get("torch_cuda_build") else "CPU-only build"
        out.append(Finding("torch", f"{torch_v} ({cuda}, torchvision {vision_v})"))
        if "torch_error" in facts:
            out.append(Finding("torch import", facts["torch_error"], True,
                               f"install a matching pair, e.g. {' '.join(kohya.TORCH_PAIR)}"))
    gpus = facts.get("gpus") or []
    out.append(Finding("GPUs", ", ".join(f"{g['name']} ({g['memory_gib']} GiB)" for g in gpus) or
                       "none (training runs on CPU: only the smoke profile is practical)"))
    out.append(Finding("xformers", _ok(facts, "xformers")))
    out.append(Finding("bitsandbytes", _ok(facts, "bitsandbytes")))
    lycoris = facts.get("lycoris-lora")
    problem = kohya.lycoris_sd1_problem(lycoris, "sd1")
    out.append(Finding("lycoris-lora", lycoris or "not installed", bool(problem) or not lycoris,
                       problem or (None if lycoris else f"pip install '{kohya.LYCORIS_PIN}'")))
    config = accelerate_config_file(environ)
    out.append(Finding("accelerate", f"{facts.get('accelerate') or 'not installed'}; user config "
                       f"{config if config.is_file() else 'none'} (launch ignores it unless --accelerate-config)",
                       not facts.get("accelerate")))
    return out


def base_model_finding(model: str, where: str) -> Finding:
    """The base model a run (or --base-model) names, and the prediction type it says it has: sd-scripts fails
    only after loading much else, and trains a mismatched prediction type without failing at all."""
    problem = kohya.base_model_problem(model)
    said = f": {problem}" if problem else f", {base_prediction_line(model)}"
    return Finding("base model", f"{model} ({where}){said}", bool(problem),
                   "point it at a .safetensors/.ckpt file or a diffusers folder (model_index.json or unet/)"
                   if problem else None)


def _ok(facts: dict[str, Any], name: str) -> str:
    version = facts.get(name)
    if not version:
        return "not installed"
    if facts.get(f"{name}_ok"):
        return f"{version} (working)"
    reason = facts.get(f"{name}_error") or "needs CUDA"
    return f"{version} (not usable: {reason})"

