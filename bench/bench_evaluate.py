"""Benchmark `evaluate`: seconds per generated image through the wrapper vs sd-scripts' gen_img.py run directly.

    python bench/bench_evaluate.py RUN_DIR [--seeds 4] [--repeats 2]

RUN_DIR is a trained run (e.g. `demo`'s). Both sides generate the same base-model images (one single-character
prompt x SEEDS seeds, the preset's size and steps) with the same gen_img.py argv, in one run, alternating:
- *sd-scripts*: gen_img.py started directly on a prompt file (model load + sampling + saving);
- *evaluate*: `python -m kohya_1to2 evaluate RUN --singles 1 --pairs 0` with the base row's images deleted, so
  exactly that row is generated; everything else evaluate does (sources scan, reuse check, grids, seam scores,
  metrics, report) is counted as wrapper cost.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kohya_1to2.environment.vendor import default_sd_scripts  # noqa: E402
from kohya_1to2.evaluate.argv import build_generate_command  # noqa: E402
from kohya_1to2.evaluate.prompts import character_prompts, column_seeds, prompt_line  # noqa: E402
from kohya_1to2.launch.pipeline import read_stage  # noqa: E402
from kohya_1to2.launch.substitutions import probe_capabilities  # noqa: E402
from kohya_1to2.rundir import RunDir, load_job, run_family  # noqa: E402


def direct_command(run: Path, seeds: int, folder: Path) -> tuple[list[str], Path, dict[str, str]]:
    """The base row's gen_img argv exactly as evaluate builds it, on a prompt file of our own."""
    from kohya_1to2.configs.presets import load_preset
    from kohya_1to2.dataset.scan import scan_sources

    job = load_job(run)
    settings = load_preset(job.training.preset).settings
    first = scan_sources(job.sources).characters[0]
    [prompt] = character_prompts([(first.name, first.trigger)], settings, job.composites.captions, singles=1, pairs=0)
    folder.mkdir(parents=True, exist_ok=True)
    prompt_file = folder / "prompts.txt"
    prompt_file.write_text("\n".join(prompt_line(prompt, s, settings.sample_steps) for s in column_seeds(seeds)) + "\n")
    caps = probe_capabilities()
    stage1 = read_stage(run, 1, caps)
    command = build_generate_command(
        row="base", weights=None, network_module="lycoris.kohya", multiplier=1.0, flat=stage1.flat,
        family=run_family(run), sd_scripts=default_sd_scripts(), python=sys.executable, prompt_file=prompt_file,
        outdir=folder, cuda=caps.cuda, xformers=caps.xformers)
    return list(command.argv), command.cwd, command.env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    run = args.run_dir.resolve()
    base_images = RunDir(run).eval_images / "base"
    evaluate = [sys.executable, "-m", "kohya_1to2", "evaluate", str(run), "--seeds", str(args.seeds),
                "--singles", "1", "--pairs", "0", "--epochs", "last"]
    # warm-up: every row of this evaluation exists afterwards, so later evaluate runs generate the base row only
    subprocess.run(evaluate, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    direct, wrapped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        argv, cwd, env = direct_command(run, args.seeds, Path(tmp) / "direct")
        for _ in range(args.repeats):
            t0 = time.monotonic()
            subprocess.run(argv, cwd=cwd, env={**os.environ, **env}, check=True, capture_output=True)
            direct.append(time.monotonic() - t0)
            shutil.rmtree(base_images)
            t0 = time.monotonic()
            subprocess.run(evaluate, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
            wrapped.append(time.monotonic() - t0)
    d, w = statistics.median(direct), statistics.median(wrapped)
    print(f"images per run:                 {args.seeds} (base model, one prompt, same argv)")
    print(f"sd-scripts gen_img.py directly: {d / args.seeds:8.2f} s/image  ({d:.1f} s, median of {args.repeats})")
    print(f"through evaluate:               {w / args.seeds:8.2f} s/image  ({w:.1f} s)")
    print(f"wrapper adds:                   {(w / d - 1) * 100:8.1f} %  (target < 5 %)")


if __name__ == "__main__":
    main()
