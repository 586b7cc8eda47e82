"""evaluate/report.py: report.html from a run directory; checked in headless Chromium where it is installed."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote

import pytest
from PIL import Image

from kohya_1to2.cli import main
from kohya_1to2.evaluate import metrics as metric
from kohya_1to2.evaluate.report import build_report, config_difference, line_chart, write_report
from kohya_1to2.evaluate.seams import Calibration
from kohya_1to2.rundir import RunDir
from tests.browser import MISSING, check_page, chromium
from tests.test_curves import scalar_event, write_events


def fake_run(root: Path) -> RunDir:
    """A run directory with what launch and evaluate leave behind (no sources: that section says so)."""
    run = RunDir(root)
    root.mkdir(parents=True)
    Image.new("RGB", (300, 100), (200, 100, 50)).save(run.preview)
    run.manifest.write_text("".join(json.dumps({"index": i, "caption": f"{a}/{b}/COMPOSITE, x"}) + "\n"
                                    for i, (a, b) in enumerate([("akari", "bob"), ("bob", "akari"), ("akari", "bob")])))
    for stage in (1, 2):
        run.train_toml(stage).write_text(f'[training]\ntrain_batch_size = {4 if stage == 1 else 2}\nseed = 42\n'
                                         f'[saving]\noutput_dir = "out{stage}"\n', encoding="utf-8")
        sample = run.output_dir(stage) / "sample"
        sample.mkdir(parents=True)
        for epoch in (1, 2):
            name = f"1to2_e{epoch:06d}_00_20260101120000_1000.png"
            Image.new("RGB", (64, 64), (50 * epoch, 60, 70)).save(sample / name)
    run.effective_toml(1).parent.mkdir(parents=True)
    run.effective_toml(1).write_text('[training]\ntrain_batch_size = 4\nseed = 42\n[saving]\noutput_dir = "out1"\n'
                                     'sdpa = true\n', encoding="utf-8")
    write_events(run.tensorboard(1) / "20260101" / "network_train" / "events.out.tfevents.1.h",
                 [scalar_event(s, "loss/current", 1.0 / s) for s in (1, 2, 3)])
    run.logs.mkdir(parents=True, exist_ok=True)
    run.log(2).write_text("steps:  50%|█ | 1/2 [00:03<00:03,  3.05s/it, avr_loss=0.3]\n"
                          "steps: 100%|██| 2/2 [00:06<00:00,  3.05s/it, avr_loss=0.2]\n", encoding="utf-8")
    grid = run.eval_grids / "pair_akari__bob.png"
    grid.parent.mkdir(parents=True)
    Image.new("RGB", (400, 300), (10, 120, 200)).save(grid)
    (run.eval_dir / "evaluation.json").write_text(json.dumps({
        "rows": [{"id": "base"}, {"id": "stage1"}], "seeds": [1000], "steps": 2, "multiplier": 1.0,
        "prompts": [{"id": "pair_akari__bob", "kind": "pair", "text": "akari/bob"}],
        "grids": {"pair_akari__bob": "eval/grids/pair_akari__bob.png"}}))
    calibration = Calibration(0.5, 0.97, 1.0, 12, 12)
    rate = metric.CompositeRate(row="stage2-e000001", label="stage 2 epoch 1", stage=2, epoch=1, kind="pair",
                                images=4, composites=1, rate=0.25, detector_accuracy=1.0)
    records = [metric.CalibrationRecord.of(calibration), rate,
               metric.IdentityStatus(status="identity scores unavailable: dghs-imgutils is not installed"),
               metric.BestEpoch.of([rate])]
    run.eval_metrics.write_text(metric.metrics_text(records))
    return run


def test_sections_links_and_no_remote_resources(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run 'one' ü")
    page = build_report(run.root)
    for heading in ("Sources", "Pairing", "Plan", "Stage 2 vs stage 1", "Launch substitutions", "Loss curves",
                    "Training samples", "Evaluation"):
        assert f"<h2>{heading}</h2>" in page
    assert "3 composites over 2 ordered pairs" in page
    assert "<td>train_batch_size</td><td>4</td><td>2</td>" in page  # the stage-2 vs stage-1 difference
    assert "<td>sdpa</td><td>-</td><td>True</td>" in page  # launch's substitution, from the effective TOML
    assert "from the TensorBoard events" in page and "from the log" in page and page.count("<polyline") == 2
    assert "epoch 1" in page and "epoch 2" in page
    assert "Best stage-2 epoch for pair prompts: <b>epoch 1 (25%)</b>" in page and "accuracy 100.0%" in page
    assert "dghs-imgutils is not installed" in page and "Identity similarity" not in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page) and "<script" not in page
    links = re.findall(r'(?:src|href)="([^"#]+)"', page)
    assert links and all(not link.startswith("/") for link in links)
    assert all((run.root / unquote(link)).is_file() for link in links), "every relative link resolves"


def test_report_command_writes_the_page(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run")
    run.job_file.write_text("{}")  # a run directory marker for the command; sources then say 'not readable'
    assert main(["report", str(run.root)]) == 0
    assert run.report.is_file() and "not readable" in run.report.read_text(encoding="utf-8")
    assert main(["report", str(tmp_path / "nowhere")]) == 2


def test_pure_helpers() -> None:
    assert config_difference({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}) == [("b", "2", "3"), ("c", "-", "4")]
    assert line_chart({}) == "" and "<svg" in line_chart({"loss": [(1, 0.5), (2, 0.4)]})


def browser_skip_reason() -> str | None:
    if chromium() is None:
        return MISSING
    return None


@pytest.mark.skipif(browser_skip_reason() is not None and os.environ.get("KOHYA_1TO2_REQUIRE_BROWSER") != "1",
                    reason=browser_skip_reason() or "")
@pytest.mark.slow
def test_report_opens_in_headless_chromium_with_every_image_loaded(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run 'one' ü")
    report = write_report(run.root)
    result = check_page(report, tmp_path / "report.png", tmp_path)
    assert result["images"] >= 6
    assert result["broken"] == [] and result["errors"] == [] and result["console"] == []
    assert (tmp_path / "report.png").stat().st_size > 10_000


@pytest.mark.skipif(browser_skip_reason() is not None and os.environ.get("KOHYA_1TO2_REQUIRE_BROWSER") != "1",
                    reason=browser_skip_reason() or "")
@pytest.mark.slow
def test_the_browser_check_sees_a_broken_image_and_a_console_error(tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><title>x</title></head><body><img src="missing.png">'
                    '<script>console.error("boom")</script></body></html>', encoding="utf-8")
    result = check_page(page, tmp_path / "bad.png", tmp_path)
    assert result["broken"] == ["missing.png"]
    assert any("missing.png" in e for e in result["errors"]) and any("boom" in e for e in result["errors"])


def test_a_joint_run_shows_its_one_stage_and_no_stage_2(tmp_path: Path) -> None:
    from kohya_1to2.models import Job, SourceSettings, TrainingSettings

    run = fake_run(tmp_path / "joint")
    job = Job(out=run.root, sources=SourceSettings(roots=[tmp_path / "src"]), training=TrainingSettings(mode="joint"))
    run.job_file.write_text(job.model_dump_json())
    records = metric.read_metrics(run.eval_metrics.read_text())
    rates = [r.model_copy(update={"row": "stage1-e000001", "label": "joint epoch 1", "stage": 1})
             for r in metric.of_kind(records, metric.CompositeRate)]
    best = metric.BestEpoch.of(rates, "pair", stage=1)
    kept = [r for r in records if not isinstance(r, metric.BestEpoch | metric.CompositeRate)]
    run.eval_metrics.write_text(metric.metrics_text([*kept, *rates, best]))
    page = build_report(run.root)
    assert "<h2>Stage 2 vs stage 1</h2>" not in page and "<h3>stage 2</h3>" not in page
    assert page.count("<h3>joint</h3>") == 2  # loss curves and training samples of its one stage
    assert "Best joint epoch for pair prompts: <b>epoch 1 (25%)</b>" in page and "stage-2" not in page


def test_a_comparison_is_one_section_whose_links_resolve(tmp_path: Path) -> None:
    first, other = fake_run(tmp_path / "run_seq"), fake_run(tmp_path / "run_joint")
    other.report.write_text("<html></html>")
    compare = first.eval_dir / "compare"
    (compare / "grids").mkdir(parents=True)
    Image.new("RGB", (500, 300), (90, 20, 20)).save(compare / "grids" / "pair_akari__bob.png")
    runs = [{"name": "run_seq", "mode": "sequential", "title": "run_seq (sequential)", "stages": [1, 2], "path": "."},
            {"name": "run_joint", "mode": "joint", "title": "run_joint (joint)", "stages": [1],
             "path": "../run_joint"}]
    (compare / "comparison.json").write_text(json.dumps({
        "command": "evaluate run_seq run_joint", "written": "2026-01-01T12:00:00", "runs": runs, "rows": [],
        "prompts": [{"id": "pair_akari__bob", "kind": "pair", "text": "akari/bob"}], "seeds": [1000, 1001],
        "steps": 2, "multiplier": 1.0, "grids": {"pair_akari__bob": "eval/compare/grids/pair_akari__bob.png"}}))

    def rate(run: str, label: str, stage: int, rate: float) -> metric.CompositeRate:
        return metric.CompositeRate(row=label, label=label, stage=stage, epoch=1, kind="pair", images=4,
                                    composites=int(rate * 4), rate=rate, detector_accuracy=1.0, run=run)

    seq, joint = (r["title"] for r in runs)
    rates = [rate(seq, "base model", 0, 0.0), rate(seq, "run_seq (sequential) · stage 2 epoch 1", 2, 0.25),
             rate(joint, "run_joint (joint) · joint epoch 1", 1, 0.5)]
    records: list[metric.Record] = [*rates]
    records += [metric.BestEpoch.of(rates[1:2]).for_run(seq), metric.BestEpoch.of(rates[2:3], stage=1).for_run(joint)]
    (compare / "metrics.jsonl").write_text(metric.metrics_text(records))
    page = build_report(first.root)
    section = page[page.index('<section id="comparison">'):]
    section = section[:section.index("</section>")]
    assert section.count("<table>") == 1 and section.count("<tr>") == 4  # header + one line per row
    assert ("<td>run_joint (joint) · joint epoch 1</td><td>pair</td><td class=num>4</td><td class=num>2</td>"
            "<td class=num>50%</td>") in section
    assert "run_seq (sequential): Best stage-2 epoch" in section and "run_joint (joint): Best joint epoch" in section
    assert "seeds 1000, 1001" in section and 'href="../run_joint/report.html"' in section
    links = re.findall(r'(?:src|href)="([^"#]+)"', section)
    assert len(links) == 3 and all((first.root / unquote(link)).is_file() for link in links)
    assert 'id="comparison"' not in build_report(other.root)  # only the first run of the comparison shows it

    from kohya_1to2.evaluate.rows import Row

    joint_final = Row(id="run_joint/stage1-e000001", label="run_joint (joint) · joint epoch 1", stage=1, epoch=1)
    scores = {"images": 4, "figures": 8, "similarity": {"akari": 0.91, "bob": 0.88}, "pair_images": 2,
              "both_present_rate": 0.5, "clone_rate": 0.0}
    records.append(metric.IdentityScores.of(joint_final, scores, 0.18).for_run(joint))
    (compare / "metrics.jsonl").write_text(metric.metrics_text(records))
    page = build_report(first.root)
    section = page[page.index('<section id="comparison">'):]
    assert "<td>run_joint (joint) · joint epoch 1</td><td class=num>2</td><td class=num>50%</td>" in section


def test_the_page_shows_nothing_from_outside_the_run_and_survives_a_move(
        tmp_path: Path, kohya_dataset: Callable[..., Path]) -> None:
    """Issue 19: the sources section linked `../src/...`; a moved or copied run directory broke those links."""
    import shutil

    from kohya_1to2.models import Job, SourceSettings

    src = kohya_dataset({"alice": 2, "bob": 2})
    run = fake_run(tmp_path / "run")
    run.job_file.write_text(Job(out=run.root, sources=SourceSettings(roots=[src])).model_dump_json(), encoding="utf-8")
    write_report(run.root)
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(run.root, moved)
    shutil.rmtree(src)  # on another machine the sources are not there
    page = (moved / "report.html").read_text(encoding="utf-8")
    links = re.findall(r'(?:src|href)="([^"#]+)"', page)
    assert "alice_00.png" in page and not [link for link in links if link.startswith("..")]
    assert all((moved / unquote(link)).is_file() for link in links), "every link resolves in the moved copy"


def test_the_pairing_table_reads_captions_through_the_runs_own_template(tmp_path: Path) -> None:
    """Issue 22: the report split captions on `/`, wrong for any other group separator."""
    from kohya_1to2.evaluate.report import pairing_section
    from kohya_1to2.models import CaptionRules, CompositeSettings, Job, SourceSettings

    run = fake_run(tmp_path / "plus")
    rules = CaptionRules(template="{left}+{right}+{tag}, {left_tags}, {right_tags}")
    job = Job(out=run.root, sources=SourceSettings(roots=[tmp_path / "src"]),
              composites=CompositeSettings(captions=rules))
    run.job_file.write_text(job.model_dump_json())
    run.manifest.write_text("".join(json.dumps({"index": i, "caption": f"{a}+{b}+COMPOSITE, x"}) + "\n"
                                    for i, (a, b) in enumerate([("akari", "bob"), ("bob", "akari"), ("akari", "bob")])))
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", pairing_section(run))
    assert cells == ["akari", "bob", "2", "bob", "akari", "1"]


def test_a_scene_run_shows_its_composites_beside_their_loss_masks(tmp_path: Path) -> None:
    from kohya_1to2.cli import main
    from kohya_1to2.evaluate.report import build_report
    from tests.test_prepare_command import _figures

    src = _figures(tmp_path / "src", ("alice", "bob"))
    scene, side = tmp_path / "scene", tmp_path / "side"
    assert main(["prepare", str(src), "--out", str(scene), "--composite-style", "scene", "--workers", "1"]) == 0
    assert main(["prepare", str(src), "--out", str(side), "--workers", "1"]) == 0
    html = build_report(scene)
    assert "Scene composites and their loss masks" in html
    masks = re.findall(r'<img src="([^"]+)" alt="mask">', html)
    assert len(masks) == 4
    with Image.open(scene / masks[0]) as mask:
        assert mask.mode == "L" and mask.getextrema() == (0, 255)
    assert "loss masks" not in build_report(side)


def test_the_pairing_table_of_a_group_run_shows_its_groups_and_seatings(tmp_path: Path) -> None:
    from kohya_1to2.evaluate.report import pairing_section
    from kohya_1to2.models import CompositeSettings, Job, SourceSettings

    run = fake_run(tmp_path / "groups")
    job = Job(out=run.root, sources=SourceSettings(roots=[tmp_path / "src"]),
              composites=CompositeSettings(group_size=3))
    run.job_file.write_text(job.model_dump_json())
    seatings = [("bob", "akari", "cid"), ("akari", "cid", "bob"), ("dan", "akari", "bob"), ("bob", "akari", "cid")]
    run.manifest.write_text("".join(json.dumps({"index": i, "caption": "/".join(names) + "/COMPOSITE, x"}) + "\n"
                                    for i, names in enumerate(seatings)))
    section = pairing_section(run)
    assert "4 composites over 2 groups of 3" in section
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", section)
    assert cells == ["akari, bob, cid", "3", "akari/cid/bob x1, bob/akari/cid x2", "akari, bob, dan", "1",
                     "dan/akari/bob x1"]
