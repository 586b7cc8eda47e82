"""Benchmark `evaluate`: seconds per generated image through the wrapper vs sd-scripts' own generation.

    python bench/bench_evaluate.py RUN_DIR [--seeds 4] [--repeats 3]

RUN_DIR is a trained run (e.g. `demo`'s). Three sides make the same base-model images (one single-character
prompt x SEEDS seeds: the same prompt lines, size, steps and sampler) in one run, REPEATS times, each side
going first in turn:
- *training*: sd-scripts' own sampling during training. train_network.py on the run's stage-1 config with
  `--sample_at_first` and our prompt file; the sampling call (`train_util.sample_images_common`) is timed inside
  that process, which then stops before the first training step. Its model is already loaded, as in training.
- *gen_img*: sd-scripts' gen_img.py started directly on that prompt file, with the argv `evaluate` builds.
- *evaluate*: `python -m kohya_1to2 evaluate RUN --singles 1 --pairs 0` with the base row's images deleted, so
  exactly that row is generated. It runs in a measuring process that also times its gen_img child, so the
  wrapper's own cost is measured directly (evaluate minus its gen_img child) as well as by A/B against *gen_img*.

Wall time and CPU time (user+sys of the whole process tree, from getrusage(RUSAGE_CHILDREN)) are both reported,
as medians over the repeats; CPU time is what a shared, loaded machine disturbs least.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kohya_1to2.environment.vendor import default_sd_scripts  # noqa: E402
from kohya_1to2.evaluate.argv import build_generate_command  # noqa: E402
from kohya_1to2.evaluate.prompts import character_prompts, column_seeds, prompt_line  # noqa: E402
from kohya_1to2.launch.pipeline import read_stage  # noqa: E402
from kohya_1to2.launch.substitutions import probe_capabilities  # noqa: E402
from kohya_1to2.rundir import RunDir, load_job, run_family  # noqa: E402

SAMPLING_FUNCTION = "sample_images_common"
"""library/train_util.py: the function every in-training sampling goes through (v0.10.1)."""


@dataclass(frozen=True)
class Timing:
    wall: float
    cpu: float  # user + sys of the process tree


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_child(argv: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None) -> Timing:
    """Run a child to completion; its wall time and the CPU time of its whole (waited-for) process tree."""
    cpu0, t0 = children_cpu(), time.monotonic()
    proc = subprocess.run(list(argv), cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall, cpu = time.monotonic() - t0, children_cpu() - cpu0
    if proc.returncode != 0:
        sys.exit(f"{argv[1]} failed (exit {proc.returncode}):\n{proc.stderr.decode(errors='replace')[-3000:]}")
    return Timing(wall, cpu)


# --- measuring workers: run inside the child process, write their figures to a JSON file -------------------

def evaluate_worker(out: Path, evaluate_args: list[str]) -> None:
    """`evaluate` in this process, timing each gen_img child it waits for (wall and CPU)."""
    from kohya_1to2 import cli
    from kohya_1to2.evaluate import generate

    inside: list[Timing] = []
    run_child = generate.run_child

    def timed_run_child(*args: Any, **kwargs: Any) -> Any:
        cpu0, t0 = children_cpu(), time.monotonic()
        try:
            return run_child(*args, **kwargs)
        finally:
            inside.append(Timing(time.monotonic() - t0, children_cpu() - cpu0))

    generate.run_child = timed_run_child  # type: ignore[assignment]
    code = cli.main(["evaluate", *evaluate_args])
    out.write_text(json.dumps({"gen_img_wall": sum(t.wall for t in inside), "gen_img_cpu": sum(t.cpu for t in inside),
                               "gen_img_runs": len(inside)}))
    sys.exit(code)


def training_sampling_worker(out: Path, script: Path, script_args: list[str]) -> None:
    """sd-scripts' training script in this process; time its sampling at step 0, then stop before training."""
    sys.path.insert(0, str(script.parent))
    from library import train_util  # sd-scripts' own module, the one the training script calls

    sampling: Callable[..., Any] = getattr(train_util, SAMPLING_FUNCTION)

    def timed_sampling(*args: Any, **kwargs: Any) -> None:
        cpu0, t0 = time.process_time(), time.monotonic()
        sampling(*args, **kwargs)
        out.write_text(json.dumps({"sampling_wall": time.monotonic() - t0,
                                   "sampling_cpu": time.process_time() - cpu0}))
        sys.stdout.flush()
        os._exit(0)  # the sampling is what we came for: skip training, saving and accelerate's shutdown

    setattr(train_util, SAMPLING_FUNCTION, timed_sampling)
    sys.argv = [str(script), *script_args]
    import runpy
    runpy.run_path(str(script), run_name="__main__")
    sys.exit(f"{script.name} ended without sampling at step 0 (is --sample_at_first honoured?)")


# --- the three sides ---------------------------------------------------------------------------------------

def prompt_file(run: Path, seeds: int, folder: Path) -> Path:
    """The base row's prompt lines exactly as evaluate writes them (one single-character prompt)."""
    from kohya_1to2.configs.presets import load_preset
    from kohya_1to2.dataset.scan import scan_sources

    job = load_job(run)
    settings = load_preset(job.training.preset).settings
    first = scan_sources(job.sources).characters[0]
    [prompt] = character_prompts([(first.name, first.trigger)], settings, job.composites.captions, singles=1, pairs=0)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "prompts.txt"
    path.write_text("\n".join(prompt_line(prompt, s, settings.sample_steps) for s in column_seeds(seeds)) + "\n")
    return path


def gen_img_command(run: Path, prompts: Path, outdir: Path) -> tuple[list[str], Path, dict[str, str]]:
    """The base row's gen_img argv exactly as evaluate builds it."""
    caps = probe_capabilities()
    stage1 = read_stage(run, 1, caps)
    command = build_generate_command(
        row="base", weights=None, network_module="lycoris.kohya", multiplier=1.0, flat=stage1.flat,
        family=run_family(run), sd_scripts=default_sd_scripts(), python=sys.executable, prompt_file=prompts,
        outdir=outdir, cuda=caps.cuda, xformers=caps.xformers)
    return list(command.argv), command.cwd, {**os.environ, **command.env}


def training_command(run: Path, prompts: Path, scratch: Path, out: Path) -> tuple[list[str], Path, dict[str, str]]:
    """train_network.py on the stage-1 config launch ran (substitutions applied), sampling our prompts at step 0.

    Outputs and logs go to a scratch folder, never into the run."""
    from kohya_1to2 import kohya

    layout = RunDir(run)
    effective = layout.effective_toml(1)
    if not effective.is_file():
        sys.exit(f"{effective} not found: launch the run first")
    sd_scripts = default_sd_scripts()
    script = sd_scripts / kohya.training_script(run_family(run))
    args = ["--config_file", str(effective), "--dataset_config", str(layout.dataset_toml(1)),
            "--sample_prompts", str(prompts), "--sample_at_first", "--output_dir", str(scratch / "output"),
            "--logging_dir", str(scratch / "logs")]
    argv = [sys.executable, str(Path(__file__).resolve()), "--training-sampling-worker", str(out), str(script), *args]
    return argv, sd_scripts, {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--evaluate-worker":
        evaluate_worker(Path(sys.argv[2]), sys.argv[3:])
    if len(sys.argv) > 3 and sys.argv[1] == "--training-sampling-worker":
        training_sampling_worker(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    run = args.run_dir.resolve()
    n = args.seeds
    base_images = RunDir(run).eval_images / "base"
    evaluate_args = [str(run), "--seeds", str(n), "--singles", "1", "--pairs", "0", "--epochs", "last"]
    load_before = os.getloadavg()
    # warm-up: every row of this evaluation exists afterwards, so later evaluate runs generate the base row only
    subprocess.run([sys.executable, "-m", "kohya_1to2", "evaluate", *evaluate_args], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)
    sampling: list[Timing] = []
    training: list[Timing] = []
    direct: list[Timing] = []
    wrapped: list[Timing] = []
    inside: list[Timing] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        prompts = prompt_file(run, n, tmp / "prompts")
        for repeat in range(args.repeats):

            def in_training(repeat: int = repeat) -> None:
                figures, scratch = tmp / f"training{repeat}.json", tmp / f"train{repeat}"
                argv, cwd, env = training_command(run, prompts, scratch, figures)
                training.append(timed_child(argv, cwd=cwd, env=env))
                measured = json.loads(figures.read_text())
                sampling.append(Timing(measured["sampling_wall"], measured["sampling_cpu"]))
                shutil.rmtree(scratch, ignore_errors=True)

            def gen_img(repeat: int = repeat) -> None:
                argv, cwd, env = gen_img_command(run, prompts, tmp / f"direct{repeat}")
                direct.append(timed_child(argv, cwd=cwd, env=env))

            def through_evaluate(repeat: int = repeat) -> None:
                figures = tmp / f"evaluate{repeat}.json"
                shutil.rmtree(base_images)
                argv = [sys.executable, str(Path(__file__).resolve()), "--evaluate-worker", str(figures),
                        *evaluate_args]
                wrapped.append(timed_child(argv, cwd=REPO))
                measured = json.loads(figures.read_text())
                if measured["gen_img_runs"] != 1:
                    sys.exit(f"evaluate ran gen_img {measured['gen_img_runs']} times, expected once (the base row)")
                inside.append(Timing(measured["gen_img_wall"], measured["gen_img_cpu"]))

            sides = [in_training, gen_img, through_evaluate]
            for side in sides[repeat % 3:] + sides[:repeat % 3]:  # each side goes first in turn
                side()
            print(f"repeat {repeat + 1}/{args.repeats} (wall/CPU s): sampling in training "
                  f"{sampling[-1].wall:.1f}/{sampling[-1].cpu:.1f} (process {training[-1].wall:.1f}/"
                  f"{training[-1].cpu:.1f}), gen_img {direct[-1].wall:.1f}/{direct[-1].cpu:.1f}, evaluate "
                  f"{wrapped[-1].wall:.1f}/{wrapped[-1].cpu:.1f} (its gen_img {inside[-1].wall:.1f}/"
                  f"{inside[-1].cpu:.1f}), load {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    report(n, args.repeats, sampling, training, direct, wrapped, inside, load_before, load_after)


def report(n: int, repeats: int, sampling: list[Timing], training: list[Timing], direct: list[Timing],
           wrapped: list[Timing], inside: list[Timing], load_before: tuple[float, float, float],
           load_after: tuple[float, float, float]) -> None:
    def per_image(timings: list[Timing], field: str) -> float:
        return median([getattr(t, field) for t in timings]) / n

    def paired(a: list[Timing], b: list[Timing], field: str, combine: Callable[[float, float], float]) -> list[float]:
        """Per repeat (the sides of one repeat ran back to back, under the same load)."""
        return [combine(getattr(x, field), getattr(y, field)) for x, y in zip(a, b, strict=True)]

    minus, ratio = (lambda x, y: x - y), (lambda x, y: x / y)
    print(f"images per run: {n} (base model, one single-character prompt, the same prompt lines on every side); "
          f"medians of {repeats} repeats in rotating order")
    print(f"load average (1, 5, 15 min): before {' '.join(f'{x:.2f}' for x in load_before)}, "
          f"after {' '.join(f'{x:.2f}' for x in load_after)}")
    print(f"{'side':44} {'wall s/image':>13} {'CPU s/image':>12}")
    for label, timings in [("sd-scripts sampling during training", sampling),
                           ("  (that training process, start to stop)", training),
                           ("sd-scripts gen_img.py directly", direct),
                           ("through evaluate", wrapped),
                           ("  of which its gen_img child", inside)]:
        print(f"{label:44} {per_image(timings, 'wall'):13.2f} {per_image(timings, 'cpu'):12.2f}")
    for field in ("wall", "cpu"):
        own = paired(wrapped, inside, field, minus)
        share = [o / getattr(w, field) for o, w in zip(own, wrapped, strict=True)]
        ab = paired(wrapped, direct, field, ratio)
        vs_training = median(paired(wrapped, sampling, field, ratio))
        startup = median(paired(direct, sampling, field, minus))
        print(f"{field.upper():4}: wrapper's own cost (evaluate minus its gen_img child) {median(own):.2f} s = "
              f"{median(share) * 100:.1f} % of evaluate (target < 5 %); A/B evaluate vs gen_img directly "
              f"{(median(ab) - 1) * 100:+.1f} % (per repeat: {', '.join(f'{(r - 1) * 100:+.1f}' for r in ab)}); "
              f"evaluate vs sampling during training {vs_training:.2f}x per image; gen_img's whole run (start-up "
              f"included) minus sampling the same images in training {startup:+.1f} s")
    share_cpu = median([(w.cpu - g.cpu) / w.cpu for w, g in zip(wrapped, inside, strict=True)])
    print(f"verdict: the wrapper's own CPU time is {share_cpu * 100:.1f} % of evaluate's: "
          f"{'meets' if share_cpu < 0.05 else 'misses'} the < 5 % target")


if __name__ == "__main__":
    main()
