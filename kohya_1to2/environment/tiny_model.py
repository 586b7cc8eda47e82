"""A random-init SD1 model the pinned sd-scripts loads offline: for CPU smoke runs of the whole pipeline.

sd-scripts converts the diffusers UNet into its own fixed-size SD1 UNet with a strict load, so the UNet must
be full size; the text encoder (2 layers, hidden 768) and the VAE (4 latent channels, 4 blocks = /8) can be
tiny. sd-scripts ignores the pipeline's tokenizer and loads `openai/clip-vit-large-patch14` unless
`tokenizer_cache_dir` holds a saved copy, so one is built from the CLIP BPE vocabulary in `open-clip-torch`.
Imports torch: only `make-tiny-model` (and the `demo`/tests that build the cache) call this.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

from kohya_1to2.errors import SetupError

TOKENIZER_ID = "openai/clip-vit-large-patch14"
TOKENIZER_CACHE = "tokenizer_cache"
COMPLETE_MARKER = ".complete"
SEED = 1234


def tokenizer_cache_dir(model_dir: Path) -> Path:
    """The folder to pass as sd-scripts' `tokenizer_cache_dir` for a tiny model."""
    return model_dir / TOKENIZER_CACHE


def is_complete(model_dir: Path) -> bool:
    """A model dir is reusable only once its build finished (the marker is written last)."""
    return (model_dir / COMPLETE_MARKER).is_file()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode table (as in CLIP's tokenizer)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def clip_vocab_and_merges(bpe_gz: Path) -> tuple[dict[str, int], list[str]]:
    """Rebuild the 49408-token CLIP vocabulary and its merges from open_clip's `bpe_simple_vocab_16e6.txt.gz`."""
    with gzip.open(bpe_gz, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}, merges


def find_open_clip_vocab() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise SetupError(
            "open-clip-torch is not installed (its CLIP vocabulary builds the offline tokenizer)",
            hint="pip install --no-deps open-clip-torch, or run `python -m kohya_1to2 setup`",
        )
    path = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise SetupError(f"{path} is missing from open-clip-torch", hint="reinstall open-clip-torch")
    return path


def save_clip_tokenizer(out: Path) -> None:
    """Write a CLIPTokenizer (vocab.json + merges.txt + configs) equivalent to clip-vit-large-patch14's."""
    from transformers import CLIPTokenizer  # the training stack: seconds to import, so only when building

    vocab, merges = clip_vocab_and_merges(find_open_clip_vocab())
    raw = out.parent / (out.name + ".raw")
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (raw / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(str(raw / "vocab.json"), str(raw / "merges.txt"), model_max_length=77)
    tokenizer.save_pretrained(str(out))
    shutil.rmtree(raw)


UNET: dict[str, Any] = {  # SD1 shape: must match sd-scripts' fixed-size UNet exactly
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "cross_attention_dim": 768, "attention_head_dim": 8,
    "block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2,
}
TEXT_ENCODER: dict[str, Any] = {
    "hidden_size": 768, "intermediate_size": 1024,
    "num_hidden_layers": 2,  # clip_skip = 2 needs at least two layers
    "num_attention_heads": 12, "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 768,
}
VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "block_out_channels": (32, 32, 32, 32), "layers_per_block": 1,
    "latent_channels": 4, "norm_num_groups": 32, "sample_size": 256,
}
SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "skip_prk_steps": True,
    "steps_offset": 1,
}


def build_tiny_model(out: Path) -> Path:
    """Build the model into `out` (a diffusers folder); deterministic for a given library version."""
    # torch and friends: the training stack, seconds to import, so only when a model is built
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(SEED)
    staging = out.parent / (out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    token_dir = tokenizer_cache_dir(staging) / TOKENIZER_ID.replace("/", "_")
    save_clip_tokenizer(token_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(token_dir))

    unet = UNet2DConditionModel(**UNET)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER))
    vae = AutoencoderKL(**VAE)
    scheduler = PNDMScheduler(**SCHEDULER)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet.half(),  # type: ignore[attr-defined]
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(staging), safe_serialization=True)  # type: ignore[attr-defined]
    (staging / COMPLETE_MARKER).write_text(f"seed={SEED}\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def ensure_tiny_model(out: Path) -> Path:
    """Reuse a complete tiny model at `out`, or build it."""
    if is_complete(out):
        return out
    return build_tiny_model(out)
