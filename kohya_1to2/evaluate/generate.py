"""Run gen_img.py once per row (imperative shell): prompt files, reuse of unchanged images, progress bar.

An image is reused when the inputs that made it are unchanged: its prompt line, the generation options, the
row's weights (content hash) and the base model (file sizes and times). The keys live in
`eval/images/<row>/inputs.json`; anything else in a row folder that we did not ask for is left alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text

from kohya_1to2 import kohya
from kohya_1to2.errors import TrainingError
from kohya_1to2.evaluate.argv import GenerateCommand
from kohya_1to2.evaluate.prompts import EvalPrompt, image_name, prompt_line
from kohya_1to2.evaluate.rows import Row
from kohya_1to2.fsutil import atomic_write_text, file_fingerprint, sha256_file
from kohya_1to2.launch.run import run_child

INPUTS_FILE = "inputs.json"
PROMPT_FILE = "prompts.txt"


@dataclass(frozen=True)
class Job:
    """One row's work: its command and the (file name, prompt line, reuse key) of every cell."""

    row: Row
    folder: Path
    command: GenerateCommand
    cells: tuple[tuple[str, str, str], ...]


def model_fingerprint(path: Path) -> str:
    """Cheap identity of a base model file or diffusers folder: names, sizes and modification times."""
    entries = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
    digest = hashlib.sha256(str(path).encode())
    for entry in entries:
        digest.update(f"{entry.relative_to(path) if entry != path else ''}:{file_fingerprint(entry)}".encode())
    return digest.hexdigest()


def cell_key(line: str, options: Sequence[str], weights_hash: str, model_hash: str) -> str:
    payload = json.dumps({"line": line, "options": list(options), "weights": weights_hash, "model": model_hash})
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def generation_options(argv: Sequence[str]) -> list[str]:
    """The argv items that shape an image (not the script, prompt file or output folder paths)."""
    skip = {kohya.flag(kohya.GEN_IMG_FROM_FILE), kohya.flag(kohya.GEN_IMG_OUTDIR)}
    kept: list[str] = []
    items = list(argv[2:])
    i = 0
    while i < len(items):
        if items[i] in skip:
            i += 2
            continue
        kept.append(items[i])
        i += 1
    return kept


def plan_row(row: Row, folder: Path, command: GenerateCommand, prompts: Sequence[EvalPrompt], seeds: Sequence[int],
             steps: int, model_hash: str) -> Job:
    weights_hash = sha256_file(row.weights) if row.weights is not None else "none"
    options = generation_options(command.argv)
    cells = []
    for prompt in prompts:
        for seed in seeds:
            line = prompt_line(prompt, seed, steps)
            cells.append((image_name(prompt, seed), line, cell_key(line, options, weights_hash, model_hash)))
    return Job(row=row, folder=folder, command=command, cells=tuple(cells))


def _recorded(folder: Path) -> dict[str, str]:
    try:
        data = json.loads((folder / INPUTS_FILE).read_text(encoding="utf-8"))
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def stale_cells(job: Job) -> list[tuple[str, str, str]]:
    """Cells whose image is missing or was made from other inputs."""
    recorded = _recorded(job.folder)
    return [cell for cell in job.cells if recorded.get(cell[0]) != cell[2] or not (job.folder / cell[0]).is_file()]


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} images/s" if speed else "-- images/s")


def run_rows(jobs: Sequence[Job], console: Console, logs: Path, hold: tuple[int, ...] = ()) -> tuple[int, int]:
    """Generate every stale cell of every row; returns (generated, reused). `hold`: see `run_child`."""
    todo = {job.row.id: stale_cells(job) for job in jobs}
    total = sum(len(job.cells) for job in jobs)
    reused = total - sum(len(cells) for cells in todo.values())
    generated = 0
    columns = (TextColumn("[bold]evaluate[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
               _RateColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("", total=total, completed=reused)
        for job in jobs:
            cells = todo[job.row.id]
            if not cells:
                continue
            job.folder.mkdir(parents=True, exist_ok=True)
            for name, _, _ in cells:
                (job.folder / name).unlink(missing_ok=True)
            atomic_write_text(job.folder / PROMPT_FILE, "\n".join(line for _, line, _ in cells) + "\n")
            names = {name for name, _, _ in cells}
            seen: set[str] = set()
            progress.update(bar, description=job.row.label)

            def count(_line: str, names: set[str] = names, seen: set[str] = seen, folder: Path = job.folder) -> None:
                """Advance the bar by the row's images that appeared since the last output line."""
                done = {n for n in os.listdir(folder) if n in names} - seen
                if done:
                    seen.update(done)
                    progress.advance(bar, len(done))

            def check(line: str, count: Callable[[str], None] = count) -> str | None:
                count(line)
                return None

            with open(os.devnull, "wb") as quiet:
                result = run_child(job.command.argv, cwd=job.command.cwd, env=job.command.env,
                                   log_path=logs / f"{job.row.id}.log", check=check,
                                   echo=quiet, hold=hold)
            count("")
            missing = sorted(names - {n for n in os.listdir(job.folder) if n in names})
            recorded = _recorded(job.folder)
            recorded.update({name: key for name, _, key in cells if name not in missing})
            atomic_write_text(job.folder / INPUTS_FILE, json.dumps(recorded, indent=1, sort_keys=True) + "\n")
            if result.returncode != 0 or missing:
                tail = "; ".join(line for line in result.tail[-3:] if line.strip())
                raise TrainingError(
                    f"{kohya.GEN_IMG_SCRIPT} for row '{job.row.label}' failed (exit {result.returncode}, "
                    f"{len(missing)} image(s) missing): {tail}",
                    hint=f"see {logs / (job.row.id + '.log')}",
                )
            generated += len(cells)
    return generated, reused
