"""`plan <run dir>`: steps, buckets and cost of a prepared run, from its TOMLs as they are now; once a stage
has run, its measured s/step (from its log) beside the estimate."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.text import Text

from kohya_1to2.configs.generate import plans_from_run_dir
from kohya_1to2.configs.lint import prediction_summary, read_toml
from kohya_1to2.configs.presets import run_family
from kohya_1to2.configs.stage_plans import check_stage_plans, render_stage_plans
from kohya_1to2.kohya import flatten_training_config
from kohya_1to2.rundir import RunDir, manifest_records, measured_steps, require_run_dir, run_stages


def run(args: argparse.Namespace, console: Console) -> int:
    run_dir = require_run_dir(args.run_dir)
    plans = plans_from_run_dir(run_dir)
    console.print(render_stage_plans(plans, family=run_family(run_dir), measured=measured_steps(run_dir)))
    first = RunDir(run_dir).train_toml(run_stages(run_dir)[0])
    console.print(Text(f"prediction: {prediction_summary(flatten_training_config(read_toml(first)))}"))
    padded = padded_composites(run_dir)
    if padded:
        console.print(f"{padded} composite(s) padded to their stage-2 bucket's aspect, which their own aspect would "
                      "have had cropped by more than 2% (manifest.jsonl: padded_to)")
    check_stage_plans(plans)
    return 0


def padded_composites(run_dir: Path) -> int:
    """How many of the run's composites `prepare` padded to a bucket's aspect (from the manifest)."""
    return sum(1 for record in manifest_records(RunDir(run_dir)) if record.get("padded_to"))
