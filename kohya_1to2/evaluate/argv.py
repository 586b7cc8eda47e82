"""gen_img.py commands as argv lists (pure; `generate.py` runs them), one per row of the evaluation.

Generation settings come from stage 1's training config (model, v2, v-prediction, CLIP skip, token length,
tokenizer cache, VAE, sampler, precision), so every row is sampled the way sd-scripts samples during training.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from kohya_1to2 import kohya
from kohya_1to2.models import Family

DEFAULT_SAMPLER = "ddim"
"""sd-scripts' own default `sample_sampler` (train_util's add_training_arguments)."""


class GenerateCommand(BaseModel):
    """One row's gen_img run: argv, cwd (sd-scripts' root, where relative TOML paths resolve) and env."""

    model_config = ConfigDict(frozen=True)

    row: str
    argv: tuple[str, ...]
    cwd: Path
    env: dict[str, str]


def _set(flat: Mapping[str, Any], key: str) -> Any:
    value = flat.get(key)
    return None if value in (None, "", False) else value


def generation_arguments(flat: Mapping[str, Any], *, family: Family, cuda: bool, xformers: bool) -> list[str]:
    """gen_img options that reproduce training's sampling setup from a flattened training config."""
    args = ["--ckpt", str(flat[kohya.PRETRAINED_MODEL])]
    if family == "sdxl":
        args.append("--sdxl")
    elif family == "sd2" or _set(flat, "v2"):
        args.append("--v2")
    else:
        args.append("--v1")
    if _set(flat, "v_parameterization"):
        args.append("--v_parameterization")
    for key in ("vae", "tokenizer_cache_dir", "clip_skip"):
        if (value := _set(flat, key)) is not None:
            args += [f"--{key}", str(value)]
    multiples = kohya.gen_img_max_embeddings_multiples(_set(flat, kohya.MAX_TOKEN_LENGTH))
    if multiples:
        args += ["--max_embeddings_multiples", str(multiples)]
    args += ["--sampler", str(_set(flat, "sample_sampler") or DEFAULT_SAMPLER)]
    precision = str(flat.get("mixed_precision") or "no")
    if cuda and precision in ("fp16", "bf16"):
        args.append(f"--{precision}")
    # xformers only where training used it and it works; otherwise PyTorch's SDPA (CPU included)
    args.append("--xformers" if cuda and xformers and _set(flat, "xformers") else "--sdpa")
    return args


def build_generate_command(
    *, row: str, weights: Path | None, network_module: str, multiplier: float, flat: Mapping[str, Any],
    family: Family, sd_scripts: Path, python: str, prompt_file: Path, outdir: Path, cuda: bool, xformers: bool,
    offline: bool = True,
) -> GenerateCommand:
    """`python <sd-scripts>/gen_img.py <model options> --from_file F --outdir D [--network_* W]` for one row."""
    argv = [python, str(sd_scripts / kohya.GEN_IMG_SCRIPT),
            *generation_arguments(flat, family=family, cuda=cuda, xformers=xformers),
            "--from_file", str(prompt_file), "--outdir", str(outdir), "--batch_size", "1", "--images_per_prompt", "1"]
    if weights is not None:
        argv += [kohya.flag(kohya.NETWORK_MODULE), network_module, kohya.flag(kohya.NETWORK_WEIGHTS), str(weights),
                 "--network_mul", f"{multiplier:g}"]
        if network_module.startswith("lycoris"):
            argv.append("--network_merge")  # kohya.GEN_IMG_LYCORIS_MERGE
    env = {"PYTHONUNBUFFERED": "1"}
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return GenerateCommand(row=row, argv=tuple(argv), cwd=sd_scripts, env=env)
