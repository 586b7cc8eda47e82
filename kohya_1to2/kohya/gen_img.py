"""gen_img.py, the generation script `evaluate` runs."""

from __future__ import annotations

from kohya_1to2.kohya.options import CLIP_SKIP, TOKENIZER_CACHE_DIR, VAE

GEN_IMG_SCRIPT = "gen_img.py"
"""The generation script for every family: in v0.10.1 gen_img.py loads SDXL too (`--sdxl`, gen_img.py:1636),
and unlike sdxl_gen_img.py it takes a per-prompt output file name (`--f NAME`, gen_img.py:2974), which
`evaluate` needs to know which file is which prompt and seed."""

GEN_IMG_PROMPT_OPTIONS = ("n", "w", "h", "d", "s", "l", "f")
"""Per-line options of a `--from_file` prompt file that `evaluate` writes: negative prompt, width, height, seed
(`" --d N"`, read before the line is split, gen_img.py:2740), steps, guidance scale, output file name. Lines
are split at every " --" (gen_img.py:2787); empty lines and lines starting with "#" are skipped."""

GEN_IMG_LYCORIS_MERGE = True
"""gen_img.py applies a network with `network.apply_to(text_encoders, unet)` (gen_img.py:1923), which lycoris-lora
3.4.0's kohya network refuses (`AssertionError: internal error: flag not set`: it wants both flags); with
`--network_merge` it calls `merge_to(...)` instead, which works, but merges at multiplier 1.0 whatever
`--network_mul` says (LycorisNetworkKohya.merge_to calls `super().merge_to(1)`)."""


def gen_img_max_embeddings_multiples(max_token_length: int | None) -> int | None:
    """gen_img's `--max_embeddings_multiples` for a training `max_token_length` (75 tokens per multiple)."""
    return None if not max_token_length else max(1, int(max_token_length) // 75)


# gen_img.py's own options (its setup_parser), as `evaluate` passes them; `options.flag` spells them on a command
# line. network_module and network_weights are spelled as in training (options.NETWORK_MODULE, NETWORK_WEIGHTS).
GEN_IMG_CKPT = "ckpt"
GEN_IMG_V1 = "v1"
GEN_IMG_V2 = "v2"
GEN_IMG_SDXL = "sdxl"
GEN_IMG_V_PARAMETERIZATION = "v_parameterization"
GEN_IMG_ZERO_TERMINAL_SNR = "zero_terminal_snr"
"""gen_img's switch for a model trained with zero terminal SNR: its scheduler gets `rescale_betas_zero_snr`
(gen_img.py:1810), as training's noise schedule did."""
GEN_IMG_MAX_EMBEDDINGS_MULTIPLES = "max_embeddings_multiples"
GEN_IMG_SAMPLER = "sampler"
GEN_IMG_XFORMERS = "xformers"
GEN_IMG_SDPA = "sdpa"
GEN_IMG_FROM_FILE = "from_file"
GEN_IMG_OUTDIR = "outdir"
GEN_IMG_BATCH_SIZE = "batch_size"
GEN_IMG_IMAGES_PER_PROMPT = "images_per_prompt"
GEN_IMG_NETWORK_MUL = "network_mul"
GEN_IMG_NETWORK_MERGE = "network_merge"

GEN_IMG_SAME_AS_TRAINING = (VAE, TOKENIZER_CACHE_DIR, CLIP_SKIP)
"""Training options that gen_img takes under the same name and meaning (a value each)."""

GEN_IMG_PRECISION_FLAGS = ("fp16", "bf16")
"""Training `mixed_precision` values that gen_img takes as a switch of the same name (`--fp16`, `--bf16`)."""
