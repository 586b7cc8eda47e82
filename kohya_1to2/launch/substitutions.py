"""What `launch` changes in a training TOML so it runs on this machine, made visible (pure functions).

A `store_true` flag set true in the user's TOML cannot be switched off from sd-scripts' command line, so
launch writes an effective copy (`.1to2/launch/stageN.train.toml`) with each substitution printed and logged;
`--strict` turns every substitution into an error instead.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomlkit
from pydantic import BaseModel, ConfigDict

from kohya_1to2 import kohya
from kohya_1to2.kohya import BNB_OPTIMIZER_FALLBACK, table_of_key


class Capabilities(BaseModel):
    """What this machine can do for training."""

    model_config = ConfigDict(frozen=True)

    cuda: bool
    xformers: bool
    bitsandbytes: bool
    cpu_count: int | None = None
    """CPU cores; None = unknown (no cap)."""


class Substitution(BaseModel):
    """One visible change from the user's TOML to the effective one."""

    model_config = ConfigDict(frozen=True)

    key: str
    old: Any
    new: Any
    reason: str
    gpu_only: bool = True  # a GPU-only option replaced (refused under --strict), not a cap sd-scripts applies anyway

    def describe(self) -> str:
        new = "(removed)" if self.new is None else repr(self.new)
        return f"{self.key}: {self.old!r} -> {new} ({self.reason})"


def plan_substitutions(flat: Mapping[str, Any], caps: Capabilities) -> list[Substitution]:
    """The substitutions a flattened training config needs on a machine with `caps`."""
    subs: list[Substitution] = []
    if not caps.cuda:
        mixed = flat.get(kohya.MIXED_PRECISION)
        if mixed in ("fp16", "bf16"):
            subs.append(Substitution(key=kohya.MIXED_PRECISION, old=mixed, new="no", reason="no CUDA device"))
            save = flat.get(kohya.SAVE_PRECISION)
            if save in ("fp16", "bf16"):
                subs.append(
                    Substitution(key=kohya.SAVE_PRECISION, old=save, new="float", reason="mixed precision is off")
                )
        for key in kohya.CUDA_ONLY_FLAGS:
            if flat.get(key) is True:
                subs.append(Substitution(key=key, old=True, new=None, reason="needs a CUDA device"))
    if flat.get(kohya.XFORMERS) is True and not caps.xformers:
        reason = "xformers not installed" if caps.cuda else "xformers needs CUDA"
        subs.append(Substitution(key=kohya.XFORMERS, old=True, new=None, reason=reason))
        if flat.get(kohya.SDPA) is not True:
            subs.append(Substitution(key=kohya.SDPA, old=flat.get(kohya.SDPA), new=True, reason="replaces xformers"))
    optimizer = flat.get(kohya.OPTIMIZER_TYPE)
    if isinstance(optimizer, str) and optimizer.lower() in BNB_OPTIMIZER_FALLBACK and not caps.bitsandbytes:
        subs.append(
            Substitution(
                key=kohya.OPTIMIZER_TYPE,
                old=optimizer,
                new=BNB_OPTIMIZER_FALLBACK[optimizer.lower()],
                reason="no working bitsandbytes (needs CUDA)",
            )
        )
    workers = flat.get(kohya.MAX_DATA_LOADER_N_WORKERS)
    if caps.cpu_count and isinstance(workers, int) and not isinstance(workers, bool) and workers > caps.cpu_count:
        # sd-scripts itself starts min(workers, os.cpu_count()); the substitution makes that cap visible
        subs.append(Substitution(key=kohya.MAX_DATA_LOADER_N_WORKERS, old=workers, new=caps.cpu_count,
                                 reason=f"this machine has {caps.cpu_count} CPU cores", gpu_only=False))
    return subs


def apply_substitutions(text: str, subs: list[Substitution]) -> str:
    """Apply substitutions to a TOML text, keeping its layout and comments (tomlkit round trip)."""
    doc = tomlkit.parse(text)
    for sub in subs:
        table: Any = table_of_key(doc, sub.key)
        if sub.new is None:
            if table is not None:
                del table[sub.key]
        elif table is not None:
            table[sub.key] = sub.new
        else:
            doc[sub.key] = sub.new  # a top-level key lands in the flattened namespace too
    return tomlkit.dumps(doc)


def _torch_cuda_build() -> bool:
    """Whether the installed torch is a CUDA build, read from torch/version.py without importing torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return False
    version_file = Path(spec.origin).parent / "version.py"
    try:
        text = version_file.read_text(encoding="utf-8")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("cuda") and "=" in line:
            return line.split("=", 1)[1].strip() not in ("None", "")
    return False


def _gpu_visible(environ: Mapping[str, str]) -> bool:
    if environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or Path("/dev/nvidia0").exists()


def probe_capabilities(environ: Mapping[str, str] | None = None) -> Capabilities:
    """A fast probe (no torch import): `doctor` reports the slow, exact view."""
    return capabilities_from(_torch_cuda_build(), importlib.util.find_spec("xformers") is not None,
                             importlib.util.find_spec("bitsandbytes") is not None, environ)


def capabilities_from(torch_cuda_build: bool, xformers: bool, bitsandbytes: bool,
                      environ: Mapping[str, str] | None = None) -> Capabilities:
    """This machine's capabilities given what a Python has installed: ours, or an sd-scripts install's own
    (probed in a child by environment.install)."""
    env = os.environ if environ is None else environ
    cuda = torch_cuda_build and _gpu_visible(env)
    return Capabilities(cuda=cuda, xformers=cuda and xformers, bitsandbytes=cuda and bitsandbytes,
                        cpu_count=os.cpu_count())


__all__ = [
    "BNB_OPTIMIZER_FALLBACK",
    "Capabilities",
    "Substitution",
    "apply_substitutions",
    "capabilities_from",
    "plan_substitutions",
    "probe_capabilities",
]
