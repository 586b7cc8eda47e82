"""One evaluation: rows per run, the gen_img work of each, grids, metrics, and the comparison of several runs.

Rows: the base model alone, each earlier stage's final network, the final stage's chosen epochs (`--epochs`);
which stages a run has comes from its job (a joint run has one). Columns: the same seeds in every row, so rows
differ only by weights. Several runs of the same sources are each evaluated as alone, with the first run's
prompts, seeds, sizes and steps, and then compared: one grid per prompt and one metrics table in the first run's
`eval/compare/`. `commands/evaluate.py` checks the options, holds the locks and writes the reports.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.table import Table

from kohya_1to2 import kohya
from kohya_1to2.configs.presets import PresetSettings, effective_settings, load_preset, run_family
from kohya_1to2.dataset.scan import scan_sources
from kohya_1to2.environment.install import SdScriptsInstall, interpreter_of, resolve_install
from kohya_1to2.environment.vendor import require_sd_scripts
from kohya_1to2.errors import DatasetError, UsageError
from kohya_1to2.evaluate import compare
from kohya_1to2.evaluate import metrics as metric
from kohya_1to2.evaluate.argv import build_generate_command
from kohya_1to2.evaluate.generate import Job as RowJob
from kohya_1to2.evaluate.generate import model_fingerprint, plan_row, run_rows
from kohya_1to2.evaluate.grid import compose_grid
from kohya_1to2.evaluate.identity import identity_records
from kohya_1to2.evaluate.prompts import EvalPrompt, character_prompts, column_seeds, image_name, parse_user_prompts
from kohya_1to2.evaluate.rows import Row, build_rows, parse_epochs, saved_epochs, select_epochs, stage_title
from kohya_1to2.evaluate.seams import SeamScores, calibrate, even_sample, scores
from kohya_1to2.fsutil import atomic_path, atomic_write_text, file_fingerprint
from kohya_1to2.launch.pipeline import read_stage
from kohya_1to2.launch.substitutions import Capabilities
from kohya_1to2.models import Character, Job
from kohya_1to2.rundir import RunDir, load_job

SEAM_CACHE_FILE = "seam_scores.json"
"""eval/seam_scores.json: detector scores by image file version, so a re-run only scores new images."""
EVALUATION_FILE = "evaluation.json"
"""eval/evaluation.json: rows, prompts, seeds and grid files of the last evaluation, for `report`."""


class EvaluateOptions(BaseModel):
    """What `evaluate` was asked to do; its command-line flags are derived from these fields."""

    model_config = ConfigDict(frozen=True)

    run_dir: Path
    compare: tuple[Path, ...] = Field(
        (), description="further runs of the same sources, compared with run_dir: one grid per prompt and one "
        "metrics table in run_dir's eval/compare/ and report")
    epochs: str = Field("last", description="epochs of the final stage as rows: last, all or N,M")
    seeds: int = Field(4, description="images per prompt and row (the same seeds in every row)")
    steps: int | None = Field(None, description="sampling steps (default: the preset's sample_steps)")
    prompts: Path | None = Field(None, description="extra prompts, one per line in sd-scripts' prompt syntax")
    singles: int | None = Field(None, description="at most this many single-character prompts (default: all)")
    pairs: int | None = Field(None, description="at most this many ordered-pair prompts (default: all)")
    multiplier: float = Field(1.0, description=f"network multiplier (gen_img {kohya.flag(kohya.GEN_IMG_NETWORK_MUL)})")
    sd_scripts: Path | None = Field(None, description="sd-scripts tree that generates the images, e.g. a "
                                    "kohya_ss install's sd-scripts/ (default: $KOHYA_1TO2_SD_SCRIPTS, else "
                                    "vendor/sd-scripts)")
    python: Path | None = Field(None, description="the Python that runs that sd-scripts (default: $KOHYA_1TO2_PYTHON, "
                                "else the venv beside it; this one for the pin)")


@dataclass(frozen=True)
class RunInputs:
    """One run to evaluate: where it is, its job and the characters scanned from its sources."""

    root: Path
    job: Job
    characters: tuple[Character, ...]

    @property
    def layout(self) -> RunDir:
        return RunDir(self.root)


@dataclass(frozen=True)
class RunPlan:
    """One run's rows and the gen_img work of each, planned before any image is generated."""

    run: RunInputs
    rows: list[Row]
    jobs: list[RowJob]


def load_run(run_dir: Path) -> RunInputs:
    """A run's job and the characters its sources hold now."""
    job = load_job(run_dir)
    characters = tuple(scan_sources(job.sources).characters)
    if not characters:
        raise DatasetError(f"no characters found in the sources of {run_dir}", hint="check job.json's sources.roots")
    return RunInputs(run_dir, job, characters)


def evaluation_prompts(args: EvaluateOptions, run: RunInputs) -> tuple[list[EvalPrompt], PresetSettings]:
    """The run's prompts (its characters, its preset's sizes and negative prompt) and its preset's settings, with
    the run's command-line choices applied as for training (`--resolution` moves the sample size too)."""
    settings = effective_settings(run.job, load_preset(run.job.training.preset))
    triggers = [(c.name, c.trigger) for c in run.characters]
    prompts = character_prompts(triggers, settings, run.job.composites.captions, singles=args.singles,
                                pairs=args.pairs, group_size=run.job.composites.group_size)
    if args.prompts is not None:
        path = args.prompts.expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--prompts {path}: cannot read it ({exc})", hint="a UTF-8 text file") from None
        prompts += parse_user_prompts(text, settings, str(path))
    return prompts, settings


def evaluation_rows(epochs: str, stages: Sequence[int], flats: dict[int, dict[str, Any]], mode: str) -> list[Row]:
    """The rows of one run from its stages' training configs and the networks saved so far."""
    *earlier, final_stage = stages
    earlier_finals: dict[int, Path | None] = {}
    for stage in earlier:
        weights = kohya.final_weights_of(flats[stage])
        earlier_finals[stage] = weights if weights is not None and weights.is_file() else None
    available = saved_epochs(*kohya.network_output(flats[final_stage]))
    chosen = select_epochs(available, parse_epochs(epochs), stage_title(stages, final_stage, mode))
    return build_rows(stages, earlier_finals, chosen, available[-1][0] if available else None, mode)


def plan_run(args: EvaluateOptions, run: RunInputs, prompts: Sequence[EvalPrompt], seeds: Sequence[int], steps: int,
             install: SdScriptsInstall, caps: Capabilities) -> RunPlan:
    """Read a run's stage configs and plan one gen_img child per row (nothing is generated yet)."""
    stages = run.job.stages
    configs = {stage: read_stage(run.root, stage, caps) for stage in stages}
    flats: dict[int, dict[str, Any]] = {stage: config.flat for stage, config in configs.items()}
    rows = evaluation_rows(args.epochs, stages, flats, run.job.training.mode)
    first = flats[stages[0]]  # every row is sampled with the first stage's model and settings
    family = run_family(run.root)
    model_hash = model_fingerprint(Path(str(first.get(kohya.PRETRAINED_MODEL, ""))))
    jobs = []
    for row in rows:
        folder = run.layout.eval_images / row.id
        command = build_generate_command(
            row=row.id, weights=row.weights,
            network_module=str(first.get(kohya.NETWORK_MODULE) or "lycoris.kohya"),
            multiplier=args.multiplier, flat=first, family=family, sd_scripts=install.path, python=install.python,
            prompt_file=folder / "prompts.txt", outdir=folder, cuda=caps.cuda, xformers=caps.xformers)
        jobs.append(plan_row(row, folder, command, prompts, seeds, steps, model_hash))
    return RunPlan(run, rows, jobs)


def evaluate(args: EvaluateOptions, console: Console, run_dirs: Sequence[Path], hold: tuple[int, ...] = ()) -> None:
    """Plan every run (sources compared, stage configs read, rows chosen) before generating any image.

    `hold`: the runs' lock descriptors, kept open until the last gen_img process is gone (launch.run)."""
    install = resolve_install(args.sd_scripts, args.python, os.environ, pinned=require_sd_scripts)
    caps = interpreter_of(install, os.environ).caps
    runs = [load_run(run_dir) for run_dir in run_dirs]
    names = compare.run_names(run_dirs)
    compare.refuse_other_sources([
        compare.RunSources(name=name, roots=tuple(root.expanduser().resolve() for root in run.job.sources.roots),
                           characters=tuple((c.name, c.trigger) for c in run.characters))
        for name, run in zip(names, runs, strict=True)])
    prompts, settings = evaluation_prompts(args, runs[0])
    seeds = column_seeds(args.seeds)
    steps = args.steps or settings.sample_steps
    plans = [plan_run(args, run, prompts, seeds, steps, install, caps) for run in runs]
    records = []
    for name, plan in zip(names, plans, strict=True):
        records.append(evaluate_planned(args, console, plan, prompts, seeds, steps,
                                        f"{name}: " if len(plans) > 1 else "", hold))
    if len(plans) == 1:
        console.print(rates_table(records[0]))
        return
    table_records = write_comparison(args, plans, names, records, prompts, seeds, steps)
    console.print(rates_table(table_records, "comparison: "))


def evaluate_planned(args: EvaluateOptions, console: Console, plan: RunPlan, prompts: Sequence[EvalPrompt],
                     seeds: Sequence[int], steps: int, prefix: str, hold: tuple[int, ...] = ()) -> list[metric.Record]:
    """Generate one run's stale images, then write its grids, metrics.jsonl and evaluation.json."""
    layout, rows = plan.run.layout, plan.rows
    if len(rows) == 1:
        console.print(f"evaluate: {prefix}no trained network yet; only the base model row (run `launch` first)")
    generated, reused = run_rows(plan.jobs, console, layout.eval_logs, hold)
    console.print(f"evaluate: {prefix}{generated} image(s) generated, {reused} reused, {len(rows)} row(s) x "
                  f"{len(prompts)} prompt(s) x {len(seeds)} seed(s)")
    grids = write_grids(layout.eval_grids, [(row.label, layout.eval_images / row.id) for row in rows], prompts, seeds)
    records = measure(layout, rows, prompts, seeds, plan.run.characters, plan.run.job.stages[-1])
    atomic_write_text(layout.eval_metrics, metric.metrics_text(records))
    summary = {
        "rows": [row.model_dump(mode="json") for row in rows],
        "stages": list(plan.run.job.stages), "mode": plan.run.job.training.mode,
        "prompts": [p.model_dump(mode="json") for p in prompts],
        "seeds": list(seeds), "steps": steps, "multiplier": args.multiplier,
        "grids": {pid: str(path.relative_to(layout.root)) for pid, path in grids.items()},
        "images": {row.id: {image_name(p, s): str((layout.eval_images / row.id / image_name(p, s))
                                                  .relative_to(layout.root))
                            for p in prompts for s in seeds} for row in rows},
    }
    atomic_write_text(layout.eval_dir / EVALUATION_FILE, json.dumps(summary, indent=1) + "\n")
    return records


def comparison_dir(first: RunDir) -> Path:
    return first.eval_dir / compare.COMPARE_FOLDER


def write_comparison(args: EvaluateOptions, plans: Sequence[RunPlan], names: Sequence[str],
                     records: Sequence[Sequence[metric.Record]], prompts: Sequence[EvalPrompt],
                     seeds: Sequence[int], steps: int) -> list[metric.Record]:
    """The first run's eval/compare/: one grid per prompt over every run's rows, metrics.jsonl, comparison.json."""
    runs = [compare.RunRows(name=name, mode=plan.run.job.training.mode, rows=tuple(plan.rows),
                            cells={job.row.id: tuple(key for _, _, key in job.cells) for job in plan.jobs})
            for name, plan in zip(names, plans, strict=True)]
    compared = compare.plan_comparison(runs)
    first = plans[0].run.layout
    out = comparison_dir(first)
    folders = [(row.label, plans[row.run].run.layout.eval_images / row.row.id) for row in compared]
    grids = write_grids(out / "grids", folders, prompts, seeds)
    table_records = compare.compared_records(compared, runs, records)
    atomic_write_text(out / "metrics.jsonl", metric.metrics_text(table_records))
    summary = {
        "command": "evaluate " + " ".join(names), "written": datetime.now().isoformat(timespec="seconds"),
        "runs": [{"name": run.name, "mode": run.mode, "title": run.title, "stages": list(plan.run.job.stages),
                  "path": compare.relative_link(plan.run.root, first.root)}
                 for run, plan in zip(runs, plans, strict=True)],
        "rows": [{"id": row.id, "label": row.label, "run": runs[row.run].title,
                  "shared_by": [runs[i].title for i in row.shared_by],
                  "images": compare.relative_link(folder, first.root)}
                 for row, (_, folder) in zip(compared, folders, strict=True)],
        "prompts": [p.model_dump(mode="json") for p in prompts],
        "seeds": list(seeds), "steps": steps, "multiplier": args.multiplier,
        "grids": {pid: compare.relative_link(path, first.root) for pid, path in grids.items()},
    }
    atomic_write_text(out / compare.COMPARISON_FILE, json.dumps(summary, indent=1) + "\n")
    return table_records


def write_grids(out: Path, rows: Sequence[tuple[str, Path]], prompts: Sequence[EvalPrompt],
                seeds: Sequence[int]) -> dict[str, Path]:
    """One PNG per prompt in `out`: a row per (label, images folder), a column per seed."""
    grids: dict[str, Path] = {}
    for prompt in prompts:
        cells = [[folder / image_name(prompt, s) for s in seeds] for _, folder in rows]
        grid = compose_grid([[p if p.is_file() else None for p in r] for r in cells], [label for label, _ in rows],
                            [f"seed {s}" for s in seeds], prompt.text)
        path = out / f"{prompt.id}.png"
        with atomic_path(path) as tmp:
            grid.save(tmp, format="PNG")
        grids[prompt.id] = path
    return grids


def measure(layout: RunDir, rows: Sequence[Row], prompts: Sequence[EvalPrompt], seeds: Sequence[int],
            characters: Sequence[Character], final_stage: int) -> list[metric.Record]:
    """Calibrate the seam detector on the run's composites vs sources, then score every generated image."""
    records: list[metric.Record] = []
    composites = sorted(p for p in layout.composites.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".webp"))
    sources = sorted(image.path for c in characters for image in c.images)
    cache_file = layout.eval_dir / SEAM_CACHE_FILE
    cache = _load_seam_cache(cache_file)
    used: dict[str, list[float]] = {}

    def cached_scores(path: Path) -> SeamScores:
        """Scores of an image, computed once per file version (a re-run scores only new images)."""
        key = f"{path}:{file_fingerprint(path)}"
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
        records.append(metric.CalibrationRecord.of(calibration))
        image_scores: dict[tuple[str, str], SeamScores] = {}
        for row in rows:
            for prompt in prompts:
                for seed in seeds:
                    path = layout.eval_images / row.id / image_name(prompt, seed)
                    if path.is_file():
                        image_scores[(row.id, path.name)] = cached_scores(path)
        rates = metric.composite_rates(rows, prompts, seeds, image_scores, calibration)
        records += rates
        records.append(metric.BestEpoch.of(rates, "pair", final_stage))
    records += identity_records(rows, prompts, seeds, characters, layout.eval_images)
    atomic_write_text(cache_file, json.dumps(used) + "\n")  # only what this evaluation used
    return records


def _load_seam_cache(path: Path) -> dict[str, list[float]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): [float(v[0]), float(v[1])] for k, v in data.items()} if isinstance(data, dict) else {}


def rates_table(records: Sequence[metric.Record], title_prefix: str = "") -> Table:
    table = Table(title=f"{title_prefix}composite rate (share of images judged side-by-side panels)")
    table.add_column("row")
    rates: list[metric.CompositeRate] = metric.of_kind(records, metric.CompositeRate)
    kinds = sorted({r.kind for r in rates})
    for kind in kinds:
        table.add_column(kind, justify="right")
    for label in dict.fromkeys(r.label for r in rates):
        cells = []
        for kind in kinds:
            rec = next((r for r in rates if r.label == label and r.kind == kind), None)
            cells.append("-" if rec is None or rec.rate is None else f"{rec.rate:.0%} of {rec.images}")
        table.add_row(label, *cells)
    calibrations: list[metric.CalibrationRecord] = metric.of_kind(records, metric.CalibrationRecord)
    if calibrations:
        table.caption = "; ".join(
            (f"{r.run}: " if r.run else "")
            + f"detector accuracy {r.accuracy:.0%} on {r.positives} composites vs {r.negatives} sources"
            for r in calibrations)
    return table
