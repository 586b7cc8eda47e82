"""A hand-written run directory in the shape `prepare` writes (a stand-in until the e2e uses `prepare`)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

CHARACTERS = {"alice": (220, 60, 60), "bob": (60, 120, 220)}


def _q(path: Path) -> str:
    return json.dumps(str(path))  # a JSON string is a valid TOML basic string


def write_handmade_run(run: Path, src: Path, model: Path, *, output_name: str = "1to2", steps: int = 2) -> Path:
    for name, colour in CHARACTERS.items():
        folder = src / f"1_{name}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(2):
            Image.new("RGB", (192, 256), colour).save(folder / f"{name}{i}.png")
            (folder / f"{name}{i}.txt").write_text(f"{name}, tag{i}, 1girl, solo\n", encoding="utf-8")
    comp = run / "composites" / "1_composite"
    comp.mkdir(parents=True, exist_ok=True)
    for i, (left, right) in enumerate([("alice", "bob"), ("bob", "alice")]):
        image = Image.new("RGB", (384, 256), CHARACTERS[left])
        image.paste(CHARACTERS[right], (192, 0, 384, 256))
        image.save(comp / f"{i:05d}.png")
        (comp / f"{i:05d}.txt").write_text(f"{left}/{right}/COMPOSITE, tag0, tag1\n", encoding="utf-8")
    (run / "sample_prompts.txt").write_text("alice, 1girl --w 64 --h 64 --s 2 --d 1\n", encoding="utf-8")
    for stage in (1, 2):
        dirs = [src / f"1_{n}" for n in CHARACTERS] if stage == 1 else [comp]
        subsets = "".join(f"[[datasets.subsets]]\nimage_dir = {_q(d)}\nnum_repeats = 1\n" for d in dirs)
        (run / f"stage{stage}.dataset.toml").write_text(
            '[general]\ncaption_extension = ".txt"\nkeep_tokens = 1\nshuffle_caption = true\nenable_bucket = true\n'
            "min_bucket_reso = 128\nmax_bucket_reso = 512\nbucket_reso_steps = 64\n"
            f"[[datasets]]\nresolution = 256\nbatch_size = {stage}\n{subsets}",
            encoding="utf-8",
        )
        out = run / "output" / f"stage{stage}"
        name = f"{output_name}_stage1" if stage == 1 else output_name
        weights = f"network_weights = {_q(run / 'output' / 'stage1' / f'{output_name}_stage1.safetensors')}\n"
        (run / f"stage{stage}.train.toml").write_text(
            f"[model]\npretrained_model_name_or_path = {_q(model)}\n"
            f"tokenizer_cache_dir = {_q(model / 'tokenizer_cache')}\nclip_skip = 2\n"
            '[network]\nnetwork_module = "lycoris.kohya"\nnetwork_dim = 8\nnetwork_alpha = 1.0\n'
            'network_args = ["conv_dim=0", "conv_alpha=16", "algo=loha"]\n'
            + (weights if stage == 2 else "")
            + f'[training]\nmax_train_steps = {steps}\nlearning_rate = 0.0005\noptimizer_type = "AdamW8bit"\n'
            'mixed_precision = "fp16"\nxformers = true\ncache_latents = true\nseed = 42\n'
            f'[saving]\noutput_dir = {_q(out)}\noutput_name = "{name}"\nsave_model_as = "safetensors"\n'
            f'[sampling]\nsample_prompts = {_q(run / "sample_prompts.txt")}\nsample_every_n_epochs = 1\n'
            'sample_sampler = "k_euler_a"\n',
            encoding="utf-8",
        )
    return run
