"""evaluate/argv.py: gen_img.py argv for one row, from stage 1's training config."""

from __future__ import annotations

from pathlib import Path

from kohya_1to2.evaluate.argv import build_generate_command

FLAT = {"pretrained_model_name_or_path": "/m/model.safetensors", "clip_skip": 2, "max_token_length": 225,
        "tokenizer_cache_dir": "/m/tok", "sample_sampler": "k_euler_a", "mixed_precision": "bf16", "xformers": True,
        "network_module": "lycoris.kohya", "v2": False}


def build(**overrides: object) -> tuple[str, ...]:
    kwargs: dict = {"row": "stage1", "weights": Path("/r/out/a_stage1.safetensors"), "network_module": "lycoris.kohya",
                    "multiplier": 0.8, "flat": FLAT, "family": "sd1", "sd_scripts": Path("/sd"), "python": "py",
                    "prompt_file": Path("/r/eval/p.txt"), "outdir": Path("/r/eval/images/stage1"), "cuda": True,
                    "xformers": True}
    kwargs.update(overrides)
    return build_generate_command(**kwargs).argv


def option(argv: tuple[str, ...], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_loha_row_loads_the_network_through_lycoris() -> None:
    argv = build()
    assert argv[:2] == ("py", "/sd/gen_img.py")
    assert option(argv, "--network_module") == "lycoris.kohya"
    assert option(argv, "--network_weights") == "/r/out/a_stage1.safetensors"
    assert option(argv, "--network_mul") == "0.8"
    assert "--network_merge" in argv  # lycoris' apply_to refuses gen_img's call; merge_to works
    assert option(argv, "--ckpt") == "/m/model.safetensors" and "--v1" in argv
    assert option(argv, "--clip_skip") == "2" and option(argv, "--max_embeddings_multiples") == "3"
    assert option(argv, "--sampler") == "k_euler_a" and option(argv, "--tokenizer_cache_dir") == "/m/tok"
    assert option(argv, "--from_file") == "/r/eval/p.txt" and option(argv, "--outdir") == "/r/eval/images/stage1"
    assert "--bf16" in argv and "--xformers" in argv


def test_base_row_has_no_network_and_cpu_uses_sdpa_in_full_precision() -> None:
    argv = build(weights=None, cuda=False)
    assert not any(a.startswith("--network") for a in argv)
    assert "--sdpa" in argv and "--xformers" not in argv and "--bf16" not in argv


def test_sdxl_and_v2_flags() -> None:
    assert "--sdxl" in build(family="sdxl") and "--v1" not in build(family="sdxl")
    assert "--v2" in build(family="sd2")
    assert "--v_parameterization" in build(flat={**FLAT, "v_parameterization": True})
    assert "--zero_terminal_snr" not in build()


def test_a_zero_terminal_snr_training_generates_with_the_rescaled_schedule() -> None:
    argv = build(flat={**FLAT, "v_parameterization": True, "zero_terminal_snr": True})
    assert "--v_parameterization" in argv and "--zero_terminal_snr" in argv
