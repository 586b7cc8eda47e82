"""gen_img.py, the generation script `evaluate` runs."""

from __future__ import annotations

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
