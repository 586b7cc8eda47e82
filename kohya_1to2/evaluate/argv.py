"""gen_img.py commands as argv lists (pure; `generate.py` runs them), one per row of the evaluation.

Generation settings come from stage 1's training config (model, v2, v-prediction, zero terminal SNR, CLIP skip,
token length, tokenizer cache, VAE, sampler, precision), so every row is sampled the way sd-scripts samples
during training.
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
    flag = kohya.flag
    args = [flag(kohya.GEN_IMG_CKPT), str(flat[kohya.PRETRAINED_MODEL])]
    if family == "sdxl":
        args.append(flag(kohya.GEN_IMG_SDXL))
    elif family == "sd2" or _set(flat, kohya.V2):
        args.append(flag(kohya.GEN_IMG_V2))
    else:
        args.append(flag(kohya.GEN_IMG_V1))
    if _set(flat, kohya.V_PARAMETERIZATION):
        args.append(flag(kohya.GEN_IMG_V_PARAMETERIZATION))
    if _set(flat, kohya.ZERO_TERMINAL_SNR):
        args.append(flag(kohya.GEN_IMG_ZERO_TERMINAL_SNR))
    for key in kohya.GEN_IMG_SAME_AS_TRAINING:
        if (value := _set(flat, key)) is not None:
            args += [flag(key), str(value)]
    multiples = kohya.gen_img_max_embeddings_multiples(_set(flat, kohya.MAX_TOKEN_LENGTH))
    if multiples:
        args += [flag(kohya.GEN_IMG_MAX_EMBEDDINGS_MULTIPLES), str(multiples)]
    args += [flag(kohya.GEN_IMG_SAMPLER), str(_set(flat, kohya.SAMPLE_SAMPLER) or DEFAULT_SAMPLER)]
    precision = str(flat.get(kohya.MIXED_PRECISION) or "no")
    if cuda and precision in kohya.GEN_IMG_PRECISION_FLAGS:
        args.append(flag(precision))
    # xformers only where training used it and it works; otherwise PyTorch's SDPA (CPU included)
    use_xformers = cuda and xformers and _set(flat, kohya.XFORMERS)
    args.append(flag(kohya.GEN_IMG_XFORMERS if use_xformers else kohya.GEN_IMG_SDPA))
    return args


def build_generate_command(
    *, row: str, weights: Path | None, network_module: str, multiplier: float, flat: Mapping[str, Any],
    family: Family, sd_scripts: Path, python: str, prompt_file: Path, outdir: Path, cuda: bool, xformers: bool,
    offline: bool = True,
) -> GenerateCommand:
    """`python <sd-scripts>/gen_img.py <model options> --from_file F --outdir D [--network_* W]` for one row."""
    flag = kohya.flag
    argv = [python, str(sd_scripts / kohya.GEN_IMG_SCRIPT),
            *generation_arguments(flat, family=family, cuda=cuda, xformers=xformers),
            flag(kohya.GEN_IMG_FROM_FILE), str(prompt_file), flag(kohya.GEN_IMG_OUTDIR), str(outdir),
            flag(kohya.GEN_IMG_BATCH_SIZE), "1", flag(kohya.GEN_IMG_IMAGES_PER_PROMPT), "1"]
    if weights is not None:
        argv += [flag(kohya.NETWORK_MODULE), network_module, flag(kohya.NETWORK_WEIGHTS), str(weights),
                 flag(kohya.GEN_IMG_NETWORK_MUL), f"{multiplier:g}"]
        if network_module.startswith("lycoris"):
            argv.append(flag(kohya.GEN_IMG_NETWORK_MERGE))  # kohya.GEN_IMG_LYCORIS_MERGE
    env = {"PYTHONUNBUFFERED": "1"}
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return GenerateCommand(row=row, argv=tuple(argv), cwd=sd_scripts, env=env)
