"""`make-tiny-model OUT`: build the random-init SD1 model used by the CPU smoke profile."""

from __future__ import annotations

import argparse
import time

from rich.console import Console

from kohya_1to2.environment.tiny_model import build_tiny_model, tokenizer_cache_dir


def run(args: argparse.Namespace, console: Console) -> int:
    started = time.monotonic()
    console.print(f"building a random-init SD1 model in {args.out} (full-size UNet, tiny text encoder and VAE)")
    out = build_tiny_model(args.out.expanduser().resolve())
    console.print(f"done in {time.monotonic() - started:.0f} s: {out}")
    console.print(f"use it with base model = {out} and tokenizer_cache_dir = {tokenizer_cache_dir(out)}")
    return 0
