"""The real thing: bundled example -> `prepare` (smoke preset, tiny model) -> `launch` both stages on CPU, then
`evaluate` and `report` on it.

Real pinned sd-scripts, real LyCORIS LoHa, a random-init model; the run is trained once per session
(`trained_run` in conftest.py), ~3 minutes on 2 cores and ~9 GB RAM. The cost model's fit to this run's step
times is a benchmark (bench/bench_launch.py smoke), not a test: it depends on the machine's load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from smoke_runs import EVAL_SMOKE, cli, missing_requirement, safetensors_header, tensor_bytes

from kohya_1to2.environment.vendor import default_sd_scripts
from kohya_1to2.kohya import parse_weights_report

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def stage_file(run: Path, stage: int) -> Path:
    job = json.loads((run / "job.json").read_text())
    name = job["training"]["output_name"]
    return run / "output" / f"stage{stage}" / (f"{name}_stage1.safetensors" if stage == 1 else f"{name}.safetensors")


def test_stage_1_is_a_loha_with_the_preset_network(trained_run: dict[str, Any]) -> None:
    header = safetensors_header(stage_file(trained_run["run"], 1))
    meta = header["__metadata__"]
    names = [n for n in header if n != "__metadata__"]
    assert names and all(".hada_w" in n or n.endswith(".alpha") for n in names)
    assert any(n.startswith("lora_unet_") for n in names) and any(n.startswith("lora_te_") for n in names)
    assert {n.rsplit(".", 1)[1] for n in names} == {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"}
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert meta["ss_network_dim"] == "8"
    assert float(meta["ss_network_alpha"]) == 1.0
    net_args = json.loads(meta["ss_network_args"])
    assert net_args["algo"] == "loha"
    assert net_args["conv_dim"] == "0" and net_args["conv_alpha"] == "16"
    # conv_dim = 0: no LoHa on convolutions, so every hada_w1_a is a 2-D (linear) factor
    assert all(len(header[n]["shape"]) == 2 for n in names if n.endswith("hada_w1_a"))


def test_stage_2_started_from_stage_1_and_trained_on(trained_run: dict[str, Any]) -> None:
    run = trained_run["run"]
    log = (run / "logs" / "stage2.log").read_text(encoding="utf-8")
    report = parse_weights_report(log)
    assert report is not None and report.clean
    assert Path(report.file) == stage_file(run, 1)
    one, two = tensor_bytes(stage_file(run, 1)), tensor_bytes(stage_file(run, 2))
    assert one.keys() == two.keys(), "stage 2 trains exactly the modules of stage 1"
    assert any(one[k] != two[k] for k in one), "stage 2 changed the weights"
    meta2 = safetensors_header(stage_file(run, 2))["__metadata__"]
    assert meta2["ss_network_dim"] == "8" and meta2["ss_network_module"] == "lycoris.kohya"


def test_a_sample_image_per_stage_and_a_summary(trained_run: dict[str, Any]) -> None:
    run = trained_run["run"]
    for stage in (1, 2):
        assert list((run / "output" / f"stage{stage}" / "sample").glob("*.png")), f"no sample from stage {stage}"
        assert (run / "logs" / f"stage{stage}.log").stat().st_size > 0
    assert "summary" in trained_run["launch"].stdout


def test_a_second_launch_skips_both_completed_stages(trained_run: dict[str, Any]) -> None:
    again = cli("launch", str(trained_run["run"]), timeout=120)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("skipped") >= 2


def test_tensorboard_event_files_for_both_stages(trained_run: dict[str, Any]) -> None:
    """The presets log to <run>/logs/tensorboard/<stage>; sd-scripts adds <timestamp>/network_train/."""
    for stage in (1, 2):
        folder = trained_run["run"] / "logs" / "tensorboard" / f"stage{stage}"
        events = list(folder.glob("*/network_train/events.out.tfevents.*"))
        assert events and all(e.stat().st_size > 0 for e in events), f"no TensorBoard events for stage {stage}"


def test_saved_states_sit_beside_the_final_weights_without_being_taken_for_them(trained_run: dict[str, Any]) -> None:
    run = trained_run["run"]
    for stage in (1, 2):
        final = stage_file(run, stage)
        states = [p for p in final.parent.glob("*-state") if (p / "train_state.json").is_file()]
        assert states, f"save_state wrote no state for stage {stage}"
        assert final.is_file() and final.stat().st_size > 0
    # completion (the skip in test_a_second_launch_skips_both_completed_stages) and stage 2's
    # network_weights still name the final file, not a state folder
    log = (run / "logs" / "stage2.log").read_text(encoding="utf-8")
    report = parse_weights_report(log)
    assert report is not None and Path(report.file) == stage_file(run, 1)


SDXL_NETWORK_PROBE = """\
import sys
sys.path.insert(0, ".")
import torch
from library import sdxl_original_unet
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
import lycoris.kohya as lk
with torch.device("meta"):  # full-size SDXL UNet structure without allocating its 2.6B weights
    unet = sdxl_original_unet.SdxlUNet2DConditionModel()
    te1 = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=1024, num_hidden_layers=2,
                                       num_attention_heads=12))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=1280, intermediate_size=1024, num_hidden_layers=2,
                                                     num_attention_heads=20, projection_dim=1280))
net = lk.create_network(1.0, 8, 1.0, None, [te1, te2], unet, algo="loha", conv_dim="0", conv_alpha="16")
net.apply_to([te1, te2], unet, True, True)
names = [m.lora_name for m in net.text_encoder_loras + net.unet_loras]
assert len(names) == len(set(names)), "duplicated lora name"
print("SDXL", len(net.text_encoder_loras), len(net.unet_loras), {type(m).__name__ for m in net.unet_loras})
"""


def test_the_pinned_lycoris_builds_a_loha_on_sdxl() -> None:
    """SDXL check of the lycoris-lora pin: the network the SDXL script creates, on the real SDXL UNet layout
    (4.x failed SD1 exactly here, with a duplicated module name). Training SDXL needs a GPU-sized model."""
    if reason := missing_requirement():
        pytest.skip(reason)
    proc = subprocess.run([sys.executable, "-c", SDXL_NETWORK_PROBE], cwd=default_sd_scripts(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("SDXL"))
    _, te_modules, unet_modules, kinds = line.split(" ", 3)
    assert int(te_modules) > 0 and int(unet_modules) > 0 and kinds == "{'LohaModule'}"


# ---------------------------------------------------------------- evaluate and report (issue 10) on the trained run

def _pixels(path: Path) -> bytes:
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB").tobytes()


def test_evaluate_grids_have_a_row_per_weights_and_a_column_per_seed(evaluated_run: dict[str, Any]) -> None:
    from PIL import Image

    from kohya_1to2.evaluate.grid import HEADER_HEIGHT, LABEL_WIDTH, PAD

    run, summary = evaluated_run["run"], evaluated_run["summary"]
    rows = [row["id"] for row in summary["rows"]]
    assert rows[:2] == ["base", "stage1"] and len(rows) >= 3 and all(r.startswith("stage2-e") for r in rows[2:])
    assert [p["kind"] for p in summary["prompts"]] == ["single", "pair"] and summary["seeds"] == [1000]
    for prompt in summary["prompts"]:
        with Image.open(run / summary["grids"][prompt["id"]]) as grid:
            assert grid.size == (LABEL_WIDTH + prompt["width"] + 2 * PAD,
                                 HEADER_HEIGHT + len(rows) * (prompt["height"] + PAD) + PAD)
        # rows differ only by weights, and the weights change the image: base, stage 1, stage 2 all differ
        cells = [_pixels(run / summary["images"][row][f"{prompt['id']}_s1000.png"]) for row in rows]
        assert len(set(cells[:3])) == 3, f"{prompt['id']}: base / stage 1 / stage 2 images are not all different"


def test_evaluate_metrics_and_the_calibrated_seam_detector(evaluated_run: dict[str, Any]) -> None:
    run, summary = evaluated_run["run"], evaluated_run["summary"]
    records = [json.loads(line) for line in (run / "eval" / "metrics.jsonl").read_text().splitlines()]
    [calibration] = [r for r in records if r["metric"] == "calibration"]
    assert calibration["accuracy"] >= 0.95 and calibration["positives"] > 0 and calibration["negatives"] > 0
    rates = [r for r in records if r["metric"] == "composite_rate"]
    assert {(r["row"], r["kind"]) for r in rates} == {(row["id"], k) for row in summary["rows"]
                                                      for k in ("single", "pair")}
    assert all(r["images"] == 1 and r["detector_accuracy"] == calibration["accuracy"] for r in rates)
    [best] = [r for r in records if r["metric"] == "best_epoch"]
    assert best["epoch"] is not None and best["rule"]
    [identity] = [r for r in records if r["metric"] == "identity"]
    assert identity["available"] is False and "unavailable" in identity["status"]


def test_evaluate_reuses_unchanged_images(evaluated_run: dict[str, Any]) -> None:
    """A re-run with the same options generates nothing (a deleted image coming back alone is a unit test,
    test_evaluate_generate; the same seed giving the same image is checked across two runs in test_e2e_modes)."""
    run, summary = evaluated_run["run"], evaluated_run["summary"]
    before = {rel: _pixels(run / rel) for cells in summary["images"].values() for rel in cells.values()}
    again = cli("evaluate", str(run), *EVAL_SMOKE)
    assert again.returncode == 0 and "0 image(s) generated" in again.stdout, again.stdout[-3000:]
    assert {rel: _pixels(run / rel) for rel in before} == before


def test_the_report_of_the_evaluated_run_opens_in_a_browser(evaluated_run: dict[str, Any], tmp_path: Path) -> None:
    from tests.browser import MISSING, check_page, chromium

    run = evaluated_run["run"]
    assert cli("report", str(run), timeout=300).returncode == 0
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "eval/grids/" in page and "Best stage-2 epoch" in page
    assert "from the TensorBoard events" in page or "from the log" in page  # loss curves of both stages
    if chromium() is None and os.environ.get("KOHYA_1TO2_REQUIRE_BROWSER") != "1":
        pytest.skip(MISSING)
    result = check_page(run / "report.html", tmp_path / "report.png", tmp_path)
    assert result["images"] > 0 and result["broken"] == [] and result["errors"] == [] and result["console"] == []
