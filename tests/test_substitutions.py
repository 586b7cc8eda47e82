"""What launch substitutes on a machine without CUDA / xformers / bitsandbytes, and how the copy looks."""

from __future__ import annotations

import toml

from kohya_1to2.kohya import flatten_training_config
from kohya_1to2.launch.substitutions import Capabilities, apply_substitutions, plan_substitutions

CPU = Capabilities(cuda=False, xformers=False, bitsandbytes=False)
GPU = Capabilities(cuda=True, xformers=True, bitsandbytes=True)
GPU_NO_XFORMERS = Capabilities(cuda=True, xformers=False, bitsandbytes=True)

USER_TOML = """\
# my settings
[training]
# keep my comment
mixed_precision = "bf16"
xformers = true
optimizer_type = "AdamW8bit"
learning_rate = 0.0001

[saving]
save_precision = "fp16"
output_dir = "/out/it's \\"here\\" ü"
"""


def flat(text: str) -> dict[str, object]:
    return flatten_training_config(toml.loads(text))


def test_cpu_machine_substitutes_each_gpu_only_option() -> None:
    subs = {s.key: (s.old, s.new) for s in plan_substitutions(flat(USER_TOML), CPU)}
    assert subs == {
        "mixed_precision": ("bf16", "no"),
        "save_precision": ("fp16", "float"),
        "xformers": (True, None),
        "sdpa": (None, True),
        "optimizer_type": ("AdamW8bit", "AdamW"),
    }


def test_full_gpu_machine_substitutes_nothing() -> None:
    assert plan_substitutions(flat(USER_TOML), GPU) == []


def test_gpu_without_xformers_only_switches_attention() -> None:
    subs = plan_substitutions(flat(USER_TOML), GPU_NO_XFORMERS)
    assert [s.key for s in subs] == ["xformers", "sdpa"]
    assert "not installed" in subs[0].reason


def test_effective_copy_is_what_sd_scripts_reads_and_keeps_comments() -> None:
    subs = plan_substitutions(flat(USER_TOML), CPU)
    text = apply_substitutions(USER_TOML, subs)
    parsed = flat(text)  # the `toml` package sd-scripts parses with
    assert parsed["mixed_precision"] == "no"
    assert "xformers" not in parsed
    assert parsed["sdpa"] is True
    assert parsed["optimizer_type"] == "AdamW"
    assert parsed["save_precision"] == "float"
    assert parsed["learning_rate"] == 0.0001
    assert parsed["output_dir"] == "/out/it's \"here\" ü"
    assert "# keep my comment" in text


def test_the_last_duplicate_key_is_the_one_replaced() -> None:
    text = '[a]\nmixed_precision = "no"\n[b]\nmixed_precision = "fp16"\n'
    subs = plan_substitutions(flat(text), CPU)
    assert flat(apply_substitutions(text, subs))["mixed_precision"] == "no"
    assert toml.loads(apply_substitutions(text, subs))["b"]["mixed_precision"] == "no"


def test_describe_is_one_readable_line() -> None:
    (sub,) = plan_substitutions({"optimizer_type": "PagedLion8bit"}, CPU)
    assert sub.new == "Lion"
    assert sub.describe() == "optimizer_type: 'PagedLion8bit' -> 'Lion' (no working bitsandbytes (needs CUDA))"


LOADER_TOML = """\
[training]
# the reference's loader
max_data_loader_n_workers = 8
persistent_data_loader_workers = true
"""


def test_loader_workers_are_capped_visibly_at_the_machines_cores() -> None:
    caps = GPU.model_copy(update={"cpu_count": 2})
    [sub] = plan_substitutions(flat(LOADER_TOML), caps)
    assert (sub.key, sub.old, sub.new) == ("max_data_loader_n_workers", 8, 2)
    assert "2 CPU cores" in sub.describe()
    effective = apply_substitutions(LOADER_TOML, [sub])
    assert flat(effective)["max_data_loader_n_workers"] == 2 and "# the reference's loader" in effective
    assert flat(effective)["persistent_data_loader_workers"] is True


def test_loader_workers_within_the_cores_or_cores_unknown_are_left_alone() -> None:
    assert plan_substitutions(flat(LOADER_TOML), GPU.model_copy(update={"cpu_count": 8})) == []
    assert plan_substitutions(flat(LOADER_TOML), GPU) == []  # cpu_count unknown


def test_probe_reports_the_cores() -> None:
    import os

    from kohya_1to2.launch.substitutions import probe_capabilities

    assert probe_capabilities({"CUDA_VISIBLE_DEVICES": ""}).cpu_count == os.cpu_count()
