"""sd-scripts facts: log-line parsing, output naming, config flattening."""

from __future__ import annotations

from pathlib import Path

import pytest

from kohya_1to2 import kohya


def test_lycoris_empty_report_is_clean() -> None:
    log = "noise\nload network weights from /r/o u/net_stage1.safetensors: {}\nmore\n"
    report = kohya.parse_weights_report(log)
    assert report is not None and report.clean and report.file == "/r/o u/net_stage1.safetensors"


def test_lycoris_report_with_missing_and_unexpected_keys() -> None:
    line = ("load network weights from /w.safetensors: {'missing keys': ['lora_unet_a.hada_w1_a', "
            "'lora_unet_b.hada_w1_a'], 'unexpected keys': ['lora_te_x.lora_up.weight']}")
    report = kohya.parse_weights_report(line)
    assert report is not None and not report.clean
    assert report.missing == ("lora_unet_a.hada_w1_a", "lora_unet_b.hada_w1_a")
    assert report.unexpected == ("lora_te_x.lora_up.weight",)


@pytest.mark.parametrize(("info", "clean"), [
    ("_IncompatibleKeys(missing_keys=[], unexpected_keys=[])", True),
    ("_IncompatibleKeys(missing_keys=['a.weight'], unexpected_keys=[])", False),
    ("<All keys matched successfully>", True),
    ("{broken", None),
])
def test_builtin_lora_reports(info: str, clean: bool | None) -> None:
    report = kohya.parse_weights_report(f"load network weights from /w.safetensors: {info}")
    if clean is None:
        assert report is None  # not a report line at all
    else:
        assert report is not None and report.clean is clean


def test_no_report_line_gives_none() -> None:
    assert kohya.parse_weights_report("training...\nsteps: 100%\n") is None


def test_final_weights_naming_follows_sd_scripts_defaults() -> None:
    assert kohya.final_weights_path("/o", "net", None) == Path("/o/net.safetensors")
    assert kohya.final_weights_path("/o", None, "ckpt") == Path("/o/last.ckpt")
    assert kohya.final_weights_of({"output_name": "x"}) is None


def test_flatten_merges_one_level_and_the_last_table_wins() -> None:
    flat = kohya.flatten_training_config({"top": 1, "a": {"k": 1, "x": 2}, "b": {"k": 3}})
    assert flat == {"top": 1, "k": 3, "x": 2}


def test_training_script_per_family() -> None:
    assert kohya.training_script("sdxl") == "sdxl_train_network.py"
    assert kohya.training_script("sd1") == kohya.training_script("sd2") == "train_network.py"
