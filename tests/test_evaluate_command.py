"""commands/evaluate.py: user mistakes are one-line errors; rows come from the run's stages and saved networks;
`evaluate RUN1 RUN2` compares runs of the same sources (a fake gen_img.py stands in for sd-scripts')."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from kohya_1to2.cli import main
from kohya_1to2.configs.presets import load_preset
from kohya_1to2.configs.prompts import group_canvas
from kohya_1to2.errors import UsageError
from kohya_1to2.evaluate.grid import HEADER_HEIGHT, PAD
from kohya_1to2.evaluate.session import evaluation_rows
from kohya_1to2.rundir import RunDir
from tests.fake_launch import make_fake_base_model, make_fake_gen_img
from tests.test_evaluate_rows import write_network


def test_not_a_run_directory_and_bad_counts_are_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(tmp_path / "nowhere")]) == 2
    assert "not a prepared run directory" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "job.json").write_text("{}")
    assert main(["evaluate", str(tmp_path / "run"), "--seeds", "0"]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "run"), "--multiplier", "0.5"]) == 2
    assert "only at 1.0" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "run"), str(tmp_path / "nowhere")]) == 2
    assert "nowhere is not a prepared run directory" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "run"), str(tmp_path / "run" / ".." / "run")]) == 2
    assert "given twice" in capsys.readouterr().err


def flat(out: Path, name: str) -> dict[str, str]:
    return {"output_dir": str(out), "output_name": name, "save_model_as": "safetensors"}


def test_two_stage_rows_from_the_stage_configs_and_saved_networks(tmp_path: Path) -> None:
    flats = {1: flat(tmp_path / "out1", "1to2_stage1"), 2: flat(tmp_path / "out2", "1to2")}
    assert [r.id for r in evaluation_rows("all", (1, 2), flats, "sequential")] == ["base"]  # nothing trained yet
    write_network(tmp_path / "out1" / "1to2_stage1.safetensors", {"ss_epoch": "1"})
    write_network(tmp_path / "out2" / "1to2-000001.safetensors", {"ss_epoch": "1"})
    write_network(tmp_path / "out2" / "1to2.safetensors", {"ss_epoch": "2"})
    rows = evaluation_rows("all", (1, 2), flats, "replay")
    assert [r.id for r in rows] == ["base", "stage1", "stage2-e000001", "stage2-e000002"]
    assert rows[1].weights == tmp_path / "out1" / "1to2_stage1.safetensors"
    assert [r.id for r in evaluation_rows("last", (1, 2), flats, "sequential")][-1] == "stage2-e000002"
    with pytest.raises(UsageError, match="stage 2 has no saved epoch 5"):
        evaluation_rows("5", (1, 2), flats, "sequential")


def test_one_stage_rows_are_the_base_then_that_stages_epochs(tmp_path: Path) -> None:
    flats = {1: flat(tmp_path / "out1", "1to2")}
    write_network(tmp_path / "out1" / "1to2-000001.safetensors", {"ss_epoch": "1"})
    write_network(tmp_path / "out1" / "1to2.safetensors", {"ss_epoch": "2"})
    rows = evaluation_rows("all", (1,), flats, "joint")
    assert [(r.id, r.label) for r in rows] == [("base", "base model"), ("stage1-e000001", "joint epoch 1"),
                                               ("stage1-e000002", "joint epoch 2 (final)")]
    assert [r.id for r in evaluation_rows("1", (1,), flats, "joint")] == ["base", "stage1-e000001"]
    with pytest.raises(UsageError, match="joint has no saved epoch 3"):
        evaluation_rows("3", (1,), flats, "joint")


# ---------------------------------------------------------------- whole command, fake gen_img.py


@pytest.fixture
def fake_gen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr("kohya_1to2.evaluate.session.require_sd_scripts", lambda path: Path(path))
    return make_fake_gen_img(tmp_path)


Prepare = Callable[[Path, Path, str], Path]


@pytest.fixture
def prepare(tmp_path: Path) -> Prepare:
    """`prepare(src, out, mode)`: a run of `src` in `mode` on one fake base model, ready for evaluate."""
    base = make_fake_base_model(tmp_path)

    def run(src: Path, out: Path, mode: str) -> Path:
        code = main(["prepare", str(src), "--out", str(out), "--base-model", str(base), "--workers", "1",
                     "--mode", mode, "--preset", "smoke"])
        assert code == 0
        return out

    return run


def trained(run: Path, stage: int, name: str, epochs: int) -> None:
    """Networks as launch leaves them: `<name>-NNNNNN` per epoch, the last one as `<name>`; unlike any other run's."""
    for epoch in range(1, epochs):
        write_network(RunDir(run).output_dir(stage) / f"{name}-{epoch:06d}.safetensors",
                      {"ss_epoch": str(epoch), "run": run.name, "stage": str(stage)})
    write_network(RunDir(run).output_dir(stage) / f"{name}.safetensors",
                  {"ss_epoch": str(epochs), "run": run.name, "stage": str(stage)})


def pixels(path: Path) -> bytes:
    with Image.open(path) as image:
        return image.convert("RGB").tobytes()


EVAL = ("--seeds", "2", "--singles", "1", "--pairs", "1", "--epochs", "all", "--steps", "3")


def test_two_runs_of_the_same_sources_in_one_grid_per_prompt_and_one_metrics_table(
        tmp_path: Path, fake_gen: Path, kohya_dataset: Callable[..., Path], prepare: Prepare,
        capsys: pytest.CaptureFixture[str]) -> None:
    src = kohya_dataset({"alice": 2, "bob": 2})
    seq = prepare(src, tmp_path / "run_seq", "sequential")
    joint = prepare(src, tmp_path / "run_joint", "joint")
    trained(seq, 1, "1to2_stage1", 1)
    trained(seq, 2, "1to2", 2)
    trained(joint, 1, "1to2", 2)
    capsys.readouterr()

    assert main(["evaluate", str(seq), str(joint), "--sd-scripts", str(fake_gen), *EVAL]) == 0
    out = capsys.readouterr().out
    assert "run_seq: 16 image(s) generated" in out and "run_joint: 12 image(s) generated" in out

    # each run is evaluated as alone: its own rows, by its stages
    own = {run.name: json.loads((run / "eval" / "evaluation.json").read_text()) for run in (seq, joint)}
    assert [r["id"] for r in own["run_seq"]["rows"]] == ["base", "stage1", "stage2-e000001", "stage2-e000002"]
    assert [r["label"] for r in own["run_joint"]["rows"]] == ["base model", "joint epoch 1", "joint epoch 2 (final)"]
    # ... with the first run's prompts, sizes, seeds and steps, so the base model's images are the same
    assert own["run_seq"]["prompts"] == own["run_joint"]["prompts"] and own["run_joint"]["steps"] == 3
    for name, rel in own["run_seq"]["images"]["base"].items():
        assert pixels(seq / rel) == pixels(joint / own["run_joint"]["images"]["base"][name])

    # one comparison in the first run's eval/compare/: the base row once, then each run's rows
    compare = seq / "eval" / "compare"
    summary = json.loads((compare / "comparison.json").read_text())
    labels = [r["label"] for r in summary["rows"]]
    assert labels == ["base model", "run_seq (sequential) · stage 1 final", "run_seq (sequential) · stage 2 epoch 1",
                      "run_seq (sequential) · stage 2 epoch 2 (final)", "run_joint (joint) · joint epoch 1",
                      "run_joint (joint) · joint epoch 2 (final)"]
    assert summary["rows"][0]["shared_by"] == ["run_seq (sequential)", "run_joint (joint)"]
    prompt = next(p for p in summary["prompts"] if p["kind"] == "pair")
    cell_w, cell_h = prompt["width"] // 8, prompt["height"] // 8  # the fake's image size
    with Image.open(seq / summary["grids"][prompt["id"]]) as grid:
        assert grid.height == HEADER_HEIGHT + len(labels) * (cell_h + PAD) + PAD
        first_column = grid.width - 2 * (cell_w + PAD)  # the first of two seed columns, right of the labels
        column = [grid.convert("RGB").getpixel((first_column + cell_w // 2, HEADER_HEIGHT + r * (cell_h + PAD) + PAD
                                                + cell_h // 2)) for r in range(len(labels))]
    assert len(set(column)) == len(labels), "every row shows its own weights' images"
    shown = column[-1]
    joint_final = joint / own["run_joint"]["images"]["stage1-e000002"][f"{prompt['id']}_s1000.png"]
    assert shown == Image.open(joint_final).convert("RGB").getpixel((0, 0))  # the joint run's final, seed 1000
    records = [json.loads(line) for line in (compare / "metrics.jsonl").read_text().splitlines()]
    rates = [r for r in records if r["metric"] == "composite_rate"]
    assert {(r["label"], r["kind"]) for r in rates} == {(label, k) for label in labels for k in ("single", "pair")}
    assert {r["run"] for r in records if r["metric"] == "calibration"} == {"run_seq (sequential)", "run_joint (joint)"}
    best = {r["run"]: r["stage"] for r in records if r["metric"] == "best_epoch"}
    assert best == {"run_seq (sequential)": 2, "run_joint (joint)": 1}

    # the first run's report shows the comparison as one section; the joint run's report has one stage
    page = (seq / "report.html").read_text(encoding="utf-8")
    section = page[page.index('<section id="comparison">'):]
    section = section[:section.index("</section>")]
    assert "run_joint (joint)" in section and section.count("<table>") == 1 and "eval/compare/grids" in section
    assert "Best stage-2 epoch" in section and "Best joint epoch" in section
    joint_page = (joint / "report.html").read_text(encoding="utf-8")
    assert 'id="configs"' not in joint_page and "<h3>stage 2" not in joint_page and "stage2" not in joint_page
    assert joint_page.count("<h3>joint</h3>") == 2  # loss curves and samples of the one stage
    assert "Best joint epoch" in joint_page and 'id="comparison"' not in joint_page

    # a re-run reuses every image of both runs
    assert main(["evaluate", str(seq), str(joint), "--sd-scripts", str(fake_gen), *EVAL]) == 0
    out = capsys.readouterr().out
    assert "run_seq: 0 image(s) generated, 16 reused" in out and "run_joint: 0 image(s) generated, 12 reused" in out


def test_runs_of_other_sources_are_refused_before_any_image(
        tmp_path: Path, fake_gen: Path, kohya_dataset: Callable[..., Path], prepare: Prepare,
        capsys: pytest.CaptureFixture[str]) -> None:
    first = prepare(kohya_dataset({"alice": 2, "bob": 2}), tmp_path / "a", "sequential")
    other = prepare(kohya_dataset({"alice": 2, "bob": 2, "carol": 2}, root_name="src2"), tmp_path / "b", "joint")
    capsys.readouterr()
    assert main(["evaluate", str(first), str(other), "--sd-scripts", str(fake_gen), *EVAL]) == 2
    err = capsys.readouterr().err
    assert "cannot compare runs of different sources: b was prepared from" in err
    assert len(err.splitlines()) == 2  # error + hint
    assert not (first / "eval").exists() and not (other / "eval").exists()


def test_a_joint_run_alone_has_the_base_then_its_epochs_and_no_comparison(
        tmp_path: Path, fake_gen: Path, kohya_dataset: Callable[..., Path], prepare: Prepare,
        capsys: pytest.CaptureFixture[str]) -> None:
    joint = prepare(kohya_dataset({"alice": 1, "bob": 1}), tmp_path / "run_joint", "joint")
    trained(joint, 1, "1to2", 3)
    assert main(["evaluate", str(joint), "--sd-scripts", str(fake_gen), "--seeds", "1", "--epochs", "1,3"]) == 0
    out = capsys.readouterr().out
    assert "3 row(s) x 4 prompt(s) x 1 seed(s)" in out and "comparison" not in out
    summary = json.loads((joint / "eval" / "evaluation.json").read_text())
    assert [r["label"] for r in summary["rows"]] == ["base model", "joint epoch 1", "joint epoch 3 (final)"]
    assert summary["stages"] == [1] and not (joint / "eval" / "compare").exists()
    assert main(["evaluate", str(joint), "--sd-scripts", str(fake_gen), "--epochs", "2,5"]) == 2
    assert "joint has no saved epoch 5" in capsys.readouterr().err


def test_evaluate_samples_at_the_run_s_effective_settings_not_the_bare_preset(tmp_path: Path) -> None:
    """Issue 22: evaluate read the preset's settings directly, so `prepare --resolution 768` (whose training
    samples follow it) was evaluated at the preset's 512x512."""
    from kohya_1to2.evaluate.session import EvaluateOptions, RunInputs, evaluation_prompts
    from kohya_1to2.models import Character, Job, SourceImage, SourceSettings, TrainingSettings

    characters = tuple(Character(name=n, trigger=n, repeats=1, folder=tmp_path / f"1_{n}",
                                 images=(SourceImage(path=tmp_path / f"1_{n}" / "a.png", character=n, tags=(n,)),))
                       for n in ("alice", "bob"))
    job = Job(out=tmp_path / "run", sources=SourceSettings(roots=[tmp_path / "src"]),
              training=TrainingSettings(preset="seed", resolution=768))
    prompts, settings = evaluation_prompts(EvaluateOptions(run_dir=tmp_path / "run"),
                                           RunInputs(root=tmp_path / "run", job=job, characters=characters))
    single = next(p for p in prompts if p.kind == "single")
    assert (single.width, single.height) == (768, 768) and settings.resolution == 768


def test_a_run_of_groups_of_three_evaluates_its_group_prompts_on_the_group_canvas(
        tmp_path: Path, fake_gen: Path, kohya_dataset: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    """--group-size 3, end to end through evaluate: the group prompts name all three characters, are drawn on
    the wider group canvas, get a composite rate per row, and the report shows them."""
    src = kohya_dataset({"alice": 2, "bob": 2, "carol": 2, "dave": 2})  # four groups of three
    run = tmp_path / "trio"
    base = make_fake_base_model(tmp_path)
    assert main(["prepare", str(src), "--out", str(run), "--base-model", str(base), "--workers", "1",
                 "--preset", "smoke", "--group-size", "3"]) == 0
    trained(run, 1, "1to2_stage1", 1)
    trained(run, 2, "1to2", 2)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--sd-scripts", str(fake_gen), "--seeds", "1", "--singles", "1",
                 "--pairs", "2", "--epochs", "all", "--steps", "3"]) == 0
    summary = json.loads((run / "eval" / "evaluation.json").read_text())
    groups = [p for p in summary["prompts"] if p["kind"] == "pair"]
    assert len(groups) == 2 and all(len(p["characters"]) == 3 for p in groups), groups
    assert all(p["id"].startswith("group_") and p["text"].count("/") == 2 for p in groups), groups
    width, height = group_canvas(load_preset("smoke").settings, 3)
    assert {(p["width"], p["height"]) for p in groups} == {(width, height)} and width > 2 * height
    for row in summary["rows"]:
        for prompt in groups:
            with Image.open(run / summary["images"][row["id"]][f"{prompt['id']}_s1000.png"]) as image:
                assert image.size == (width // 8, height // 8), "the fake draws an eighth of --w x --h"
    records = [json.loads(line) for line in (run / "eval" / "metrics.jsonl").read_text().splitlines()]
    rates = {(r["row"], r["kind"]) for r in records if r["metric"] == "composite_rate"}
    assert {(row["id"], "pair") for row in summary["rows"]} <= rates
    page = (run / "report.html").read_text(encoding="utf-8")
    assert all(prompt["id"] in page for prompt in groups)
