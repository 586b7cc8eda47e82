"""`evaluate RUN`: fixed-seed images per weights row through sd-scripts' gen_img.py, grids, metrics, report.

Rows: the base model alone, stage 1's final network, stage 2's chosen epochs (`--epochs`). Columns: the same
seeds in every row, so rows differ only by weights. Holds the run directory's writer lock throughout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.table import Table
from rich.text import Text

from kohya_1to2 import kohya
from kohya_1to2.environment.vendor import require_sd_scripts
from kohya_1to2.errors import DatasetError, UsageError
from kohya_1to2.evaluate import metrics as metric
from kohya_1to2.evaluate.argv import build_generate_command
from kohya_1to2.evaluate.generate import model_fingerprint, plan_row, run_rows
from kohya_1to2.evaluate.grid import compose_grid
from kohya_1to2.evaluate.identity import identity_status
from kohya_1to2.evaluate.prompts import EvalPrompt, character_prompts, column_seeds, image_name, parse_user_prompts
from kohya_1to2.evaluate.rows import Row, build_rows, parse_epochs, select_epochs, stage2_epochs
from kohya_1to2.evaluate.seams import SeamScores, calibrate, even_sample, scores
from kohya_1to2.flags import model_overrides
from kohya_1to2.fsutil import atomic_path, atomic_write_text
from kohya_1to2.launch.pipeline import read_stage
from kohya_1to2.launch.substitutions import probe_capabilities
from kohya_1to2.rundir import RunDir, load_job, run_family, writer_lock

SEAM_CACHE_FILE = "seam_scores.json"
"""eval/seam_scores.json: detector scores by image file version, so a re-run only scores new images."""
EVALUATION_FILE = "evaluation.json"
"""eval/evaluation.json: rows, prompts, seeds and grid files of the last evaluation, for `report`."""


class EvaluateOptions(BaseModel):
    """What `evaluate` was asked to do; its command-line flags are derived from these fields."""

    model_config = ConfigDict(frozen=True)

    run_dir: Path
    epochs: str = Field("last", description="stage-2 epochs as rows: last, all or N,M")
    seeds: int = Field(4, description="images per prompt and row (the same seeds in every row)")
    steps: int | None = Field(None, description="sampling steps (default: the preset's sample_steps)")
    prompts: Path | None = Field(None, description="extra prompts, one per line in sd-scripts' prompt syntax")
    singles: int | None = Field(None, description="at most this many single-character prompts (default: all)")
    pairs: int | None = Field(None, description="at most this many ordered-pair prompts (default: all)")
    multiplier: float = Field(1.0, description="network multiplier (gen_img --network_mul)")
    sd_scripts: Path | None = Field(None, description="sd-scripts checkout (default: vendor/sd-scripts)")


def run(args: argparse.Namespace, console: Console) -> int:
    return evaluate_run(EvaluateOptions(run_dir=args.run_dir, **model_overrides(args, "evaluate")), console)


def evaluate_run(args: EvaluateOptions, console: Console) -> int:
    """`evaluate` for callers that hold options, not a command line (`demo`)."""
    run_dir = args.run_dir.expanduser().resolve()
    if not RunDir(run_dir).job_file.is_file():
        raise UsageError(f"{run_dir} is not a prepared run directory (no job.json)",
                         hint="run `python -m kohya_1to2 prepare ... --out <run dir>` and `launch` first")
    if args.seeds < 1 or (args.steps is not None and args.steps < 1):
        raise UsageError("--seeds and --steps must be at least 1", hint="e.g. --seeds 4 --steps 28")
    if args.multiplier != 1.0:
        # kohya.GEN_IMG_LYCORIS_MERGE: gen_img can only merge a LyCORIS network, and the merge ignores network_mul
        raise UsageError(f"--multiplier {args.multiplier:g}: {kohya.GEN_IMG_SCRIPT} applies LyCORIS 3.4 networks "
                         "only at 1.0",
                         hint="leave --multiplier at 1")
    with writer_lock(RunDir(run_dir), "evaluate"):
        evaluate(args, console, run_dir)
    from kohya_1to2.evaluate.report import write_report

    console.print(Text(f"report: {write_report(run_dir)}"), soft_wrap=True)
    return 0


def evaluation_prompts(args: EvaluateOptions, run_dir: Path) -> tuple[list[EvalPrompt], Any]:
    from kohya_1to2.configs.presets import load_preset
    from kohya_1to2.dataset.scan import scan_sources

    job = load_job(run_dir)
    settings = load_preset(job.training.preset).settings
    characters = scan_sources(job.sources).characters
    if not characters:
        raise DatasetError("no characters found in the run's sources", hint="check job.json's sources.roots")
    triggers = [(c.name, c.trigger) for c in characters]
    prompts = character_prompts(triggers, settings, job.composites.captions, singles=args.singles, pairs=args.pairs)
    if args.prompts is not None:
        path = args.prompts.expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--prompts {path}: cannot read it ({exc})", hint="a UTF-8 text file") from None
        prompts += parse_user_prompts(text, settings, str(path))
    return prompts, (job, settings, characters)


def evaluation_rows(args: EvaluateOptions, flat1: dict[str, Any], flat2: dict[str, Any]) -> list[Row]:
    stage1 = kohya.final_weights_of(flat1)
    available = stage2_epochs(*kohya.network_output(flat2))
    chosen = select_epochs(available, parse_epochs(args.epochs))
    return build_rows(stage1 if stage1 is not None and stage1.is_file() else None, chosen,
                      available[-1][0] if available else None)


def evaluate(args: EvaluateOptions, console: Console, run_dir: Path) -> None:
    layout = RunDir(run_dir)
    sd_scripts = require_sd_scripts(args.sd_scripts)
    caps = probe_capabilities()
    stage1, stage2 = read_stage(run_dir, 1, caps), read_stage(run_dir, 2, caps)
    prompts, (_, settings, characters) = evaluation_prompts(args, run_dir)
    rows = evaluation_rows(args, stage1.flat, stage2.flat)
    if len(rows) == 1:
        console.print("evaluate: no trained network yet; only the base model row (run `launch` first)")
    seeds = column_seeds(args.seeds)
    steps = args.steps or settings.sample_steps
    family = run_family(run_dir)
    model_hash = model_fingerprint(Path(str(stage1.flat.get(kohya.PRETRAINED_MODEL, ""))))
    jobs = []
    for row in rows:
        folder = layout.eval_images / row.id
        command = build_generate_command(
            row=row.id, weights=row.weights,
            network_module=str(stage1.flat.get(kohya.NETWORK_MODULE) or "lycoris.kohya"),
            multiplier=args.multiplier, flat=stage1.flat, family=family, sd_scripts=sd_scripts, python=sys.executable,
            prompt_file=folder / "prompts.txt", outdir=folder, cuda=caps.cuda, xformers=caps.xformers)
        jobs.append(plan_row(row, folder, command, prompts, seeds, steps, model_hash))
    generated, reused = run_rows(jobs, console, layout.eval_logs)
    console.print(f"evaluate: {generated} image(s) generated, {reused} reused, {len(rows)} row(s) x "
                  f"{len(prompts)} prompt(s) x {len(seeds)} seed(s)")
    grids = write_grids(layout, rows, prompts, seeds)
    records = measure(layout, rows, prompts, seeds, characters)
    atomic_write_text(layout.eval_metrics, metric.metrics_text(records))
    summary = {
        "rows": [row.model_dump(mode="json") for row in rows],
        "prompts": [p.model_dump(mode="json") for p in prompts],
        "seeds": seeds, "steps": steps, "multiplier": args.multiplier,
        "grids": {pid: str(path.relative_to(run_dir)) for pid, path in grids.items()},
        "images": {row.id: {image_name(p, s): str((layout.eval_images / row.id / image_name(p, s)).relative_to(run_dir))
                            for p in prompts for s in seeds} for row in rows},
    }
    atomic_write_text(layout.eval_dir / EVALUATION_FILE, json.dumps(summary, indent=1) + "\n")
    console.print(rates_table(records))


def write_grids(layout: RunDir, rows: list[Row], prompts: list[EvalPrompt], seeds: list[int]) -> dict[str, Path]:
    grids: dict[str, Path] = {}
    for prompt in prompts:
        cells = [[layout.eval_images / row.id / image_name(prompt, s) for s in seeds] for row in rows]
        grid = compose_grid([[p if p.is_file() else None for p in r] for r in cells], [row.label for row in rows],
                            [f"seed {s}" for s in seeds], prompt.text)
        out = layout.eval_grids / f"{prompt.id}.png"
        with atomic_path(out) as tmp:
            grid.save(tmp, format="PNG")
        grids[prompt.id] = out
    return grids


def measure(layout: RunDir, rows: list[Row], prompts: list[EvalPrompt], seeds: list[int],
            characters: Any) -> list[dict[str, Any]]:
    """Calibrate the seam detector on the run's composites vs sources, then score every generated image."""
    records: list[dict[str, Any]] = []
    composites = sorted(p for p in layout.composites.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".webp"))
    sources = sorted(image.path for c in characters for image in c.images)
    cache_file = layout.eval_dir / SEAM_CACHE_FILE
    cache = _load_seam_cache(cache_file)
    used: dict[str, list[float]] = {}

    def cached_scores(path: Path) -> SeamScores:
        """Scores of an image, computed once per file version (a re-run scores only new images)."""
        stat = path.stat()
        key = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
        if key not in cache:
            with Image.open(path) as image:
                found = scores(image)
            cache[key] = [found.seam, found.split]
        used[key] = cache[key]
        return SeamScores(*cache[key])

    if composites and sources:
        positives = [cached_scores(p) for p in even_sample(composites)]  # type: ignore[arg-type]
        negatives = [cached_scores(p) for p in even_sample(sources)]  # type: ignore[arg-type]
        calibration = calibrate(positives, negatives)
        records.append(metric.calibration_record(calibration))
        image_scores: dict[tuple[str, str], SeamScores] = {}
        for row in rows:
            for prompt in prompts:
                for seed in seeds:
                    path = layout.eval_images / row.id / image_name(prompt, seed)
                    if path.is_file():
                        image_scores[(row.id, path.name)] = cached_scores(path)
        rates = metric.composite_rates(rows, prompts, seeds, image_scores, calibration)
        records += rates
        records.append(metric.best_epoch(rates, "pair"))
    records.append(metric.identity_record(identity_status()))
    atomic_write_text(cache_file, json.dumps(used) + "\n")  # only what this evaluation used
    return records


def _load_seam_cache(path: Path) -> dict[str, list[float]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): [float(v[0]), float(v[1])] for k, v in data.items()} if isinstance(data, dict) else {}


def rates_table(records: list[dict[str, Any]]) -> Table:
    table = Table(title="composite rate (share of images judged side-by-side panels)")
    table.add_column("row")
    kinds = sorted({r["kind"] for r in records if r["metric"] == "composite_rate"})
    for kind in kinds:
        table.add_column(kind, justify="right")
    for label in dict.fromkeys(r["label"] for r in records if r["metric"] == "composite_rate"):
        cells = []
        for kind in kinds:
            rec = next((r for r in records if r["metric"] == "composite_rate" and r["label"] == label
                        and r["kind"] == kind), None)
            cells.append("-" if rec is None or rec["rate"] is None else f"{rec['rate']:.0%} of {rec['images']}")
        table.add_row(label, *cells)
    calibration = next((r for r in records if r["metric"] == "calibration"), None)
    if calibration:
        table.caption = (f"detector accuracy {calibration['accuracy']:.0%} on {calibration['positives']} composites "
                         f"vs {calibration['negatives']} sources")
    return table
