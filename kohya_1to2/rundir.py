"""The run directory: every path `prepare`, `check`, `plan` and `launch` use inside `--out`, named once.

Also here: the job file (`load_job`), the run's model family, ownership (the marker `prepare` leaves and the
paths it would write into a folder it does not own yet) and the writer lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from kohya_1to2.errors import UsageError
from kohya_1to2.fsutil import atomic_write_text, free_path, jsonl_records
from kohya_1to2.kohya import measured_seconds_per_step
from kohya_1to2.models import STAGES, Job, StageNumber, validation_message

MARKER_FORMAT = 1


def backup_stamp() -> str:
    """The UTC time that names the backups of one command (see `RunDir.backup_path`)."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


@dataclass(frozen=True)
class RunDir:
    """The layout of one run directory (docs/data.md, "The run directory")."""

    root: Path

    # ---------------------------------------------------------------- what the user reads and edits
    @property
    def job_file(self) -> Path:
        return self.root / "job.json"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.jsonl"

    @property
    def preview(self) -> Path:
        return self.root / "preview.png"

    @property
    def sample_prompts(self) -> Path:
        return self.root / "sample_prompts.txt"

    @property
    def composites(self) -> Path:
        return self.root / "composites"

    def composite_subset(self, repeats: int) -> Path:
        """The stage-2 subset folder; kohya reads the repeats from its `N_` prefix."""
        return self.composites / f"{repeats}_composite"

    @property
    def segmented_masks(self) -> Path:
        """`--segment`: the segmenter's masks, a tree mirroring the sources (N_name/<stem>.png); outside every
        subset folder, so sd-scripts never trains a mask as an image."""
        return self.root / "masks"

    @property
    def replay(self) -> Path:
        """`--mode replay`: one folder per character of the single images stage 2 sees again."""
        return self.root / "replay"

    @property
    def fixed_sources(self) -> Path:
        """Corrected copies of source folders written by `--fix-sources`."""
        return self.root / "sources"

    def train_toml(self, stage: int) -> Path:
        return self.root / f"stage{stage}.train.toml"

    def dataset_toml(self, stage: int) -> Path:
        return self.root / f"stage{stage}.dataset.toml"

    def output_dir(self, stage: int) -> Path:
        return self.root / "output" / f"stage{stage}"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def log(self, stage: int) -> Path:
        return self.logs / f"stage{stage}.log"

    def tensorboard(self, stage: int) -> Path:
        """The stage's TensorBoard `logging_dir` (sd-scripts adds <timestamp>/network_train/ below it)."""
        return self.logs / "tensorboard" / f"stage{stage}"

    # ---------------------------------------------------------------- `evaluate` and `report`
    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def eval_images(self) -> Path:
        """One folder per row (base, stage1, stage2-eNNNNNN) of generated images."""
        return self.eval_dir / "images"

    @property
    def eval_grids(self) -> Path:
        return self.eval_dir / "grids"

    @property
    def eval_metrics(self) -> Path:
        return self.eval_dir / "metrics.jsonl"

    @property
    def eval_logs(self) -> Path:
        return self.eval_dir / "logs"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def thumbnails(self) -> Path:
        """Small copies of the images the report shows."""
        return self.root / "report_files"

    # ---------------------------------------------------------------- records under .1to2/
    @property
    def state(self) -> Path:
        return self.root / ".1to2"

    @property
    def marker(self) -> Path:
        """Written by `prepare` when it takes a folder: the folder is a run directory from then on."""
        return self.state / "run.json"

    @property
    def lock_file(self) -> Path:
        return self.state / "lock"

    @property
    def generated(self) -> Path:
        """What the generator wrote last, the base of the three-way merge with hand edits."""
        return self.state / "generated"

    @property
    def backups(self) -> Path:
        return self.state / "backup"

    def backup_path(self, name: str, stamp: str) -> Path:
        """Where a backup of the run file `name` taken at `stamp` goes: `<name>.<stamp>`, numbered if taken."""
        return free_path(self.backups, f"{name}.{stamp}")

    @property
    def strays(self) -> Path:
        """Files found in a subset folder that the run did not write, moved out of training."""
        return self.state / "strays"

    @property
    def journal(self) -> Path:
        """Manifest lines of composites finished by an unfinished build."""
        return self.state / "composites.journal.jsonl"

    @property
    def spill(self) -> Path:
        """Decoded sources shared by build workers, only while a build runs."""
        return self.state / "decoded"

    @property
    def launch_dir(self) -> Path:
        return self.state / "launch"

    def effective_toml(self, stage: int) -> Path:
        """The training TOML launch passes to sd-scripts (the user's, plus visible substitutions)."""
        return self.launch_dir / f"stage{stage}.train.toml"

    def completion_record(self, stage: int) -> Path:
        return self.launch_dir / f"stage{stage}.complete.json"

    def attempt_record(self, stage: int) -> Path:
        """Written when a stage starts, removed when it completes: its presence means an interrupted attempt."""
        return self.launch_dir / f"stage{stage}.attempt.json"

    @property
    def hf_home(self) -> Path:
        return self.state / "hf_home"

    # ---------------------------------------------------------------- ownership
    def written_paths(self) -> tuple[Path, ...]:
        """Top-level files and folders a run writes; a foreign file at one of them would be overwritten."""
        return (
            self.job_file, self.manifest, self.preview, self.sample_prompts, self.composites, self.replay,
            self.fixed_sources,
            *(self.train_toml(s) for s in STAGES), *(self.dataset_toml(s) for s in STAGES),
            self.root / "output", self.logs, self.state,
        )

    def is_run_dir(self) -> bool:
        return self.marker.is_file()


def foreign_files(run: RunDir) -> list[Path]:
    """Files at paths the run would write, in a folder that is not (yet) a run directory."""
    if not run.root.is_dir() or run.is_run_dir():
        return []
    found: list[Path] = []
    for path in run.written_paths():
        if path.is_file() or path.is_symlink():
            found.append(path)
        elif path.is_dir():
            found += sorted(p for p in path.rglob("*") if not p.is_dir() and p != run.lock_file)
    return found


def refuse_foreign_files(run: RunDir) -> None:
    """A folder that is not a run directory may not hold files the run would overwrite or train (listed)."""
    conflicts = foreign_files(run)
    if conflicts:
        shown = ", ".join(str(p.relative_to(run.root)) for p in conflicts[:8])
        more = f" and {len(conflicts) - 8} more" if len(conflicts) > 8 else ""
        raise UsageError(
            f"--out {run.root} is not a kohya-1to2 run directory and holds files the run would overwrite or "
            f"train: {shown}{more}",
            hint="choose an empty or new folder for --out, or move those files away",
        )


def claim(run: RunDir, command: str) -> None:
    """Make `run.root` (checked by `check_out_dir`) a run directory, unless it holds foreign files."""
    refuse_foreign_files(run)
    if run.is_run_dir():
        return
    try:
        atomic_write_text(run.marker, json.dumps({"format": MARKER_FORMAT, "created_by": command}) + "\n")
    except OSError as exc:
        raise UsageError(f"--out {run.root} is not writable: {exc.strerror or exc}",
                         hint="choose a folder you can write to") from None


def check_out_dir(path: Path) -> None:
    """`--out` problems found before any work: a file in the way, or a folder that cannot be created or written."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {path} is a file, not a directory", hint="choose a directory for --out")
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise UsageError(f"--out {path}: {existing} is not a directory", hint="choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out {path} is not writable ({existing} belongs to someone else or is read-only)",
                         hint="choose a folder you can write to")


# ---------------------------------------------------------------- job and family


def load_job(root: Path) -> Job:
    """The job `prepare` saved in the run directory."""
    path = RunDir(root).job_file
    if not path.is_file():
        raise UsageError(f"{path}: not found", hint="run `python -m kohya_1to2 prepare ... --out <run dir>` first")
    try:
        return Job.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON ({exc})", hint="re-run prepare to rewrite it") from None
    except ValidationError as exc:
        raise UsageError(f"{path}: {validation_message(exc)}", hint="re-run prepare to rewrite it") from None


def require_run_dir(root: Path) -> Path:
    """`root`, resolved, if it is a prepared run directory (job.json, or a hand-assembled one: a stage TOML);
    else the one-line usage error every command that reads a run gives."""
    root = root.expanduser().resolve()
    if not root.is_dir():
        raise UsageError(f"run directory {root} not found", hint="create it with `python -m kohya_1to2 prepare`")
    layout = RunDir(root)
    if not layout.job_file.is_file() and not any(layout.train_toml(s).is_file() for s in STAGES):
        raise UsageError(f"{root} is not a prepared run directory (no job.json, no stage TOML)",
                         hint="run `python -m kohya_1to2 prepare ... --out <run dir>` first")
    return root


def run_stages(root: Path) -> tuple[StageNumber, ...]:
    """The stages a prepared run trains (its job's mode); both without job.json (a hand-assembled run)."""
    return load_job(root).stages if RunDir(root).job_file.is_file() else STAGES


def measured_steps(root: Path) -> dict[int, tuple[float, int]]:
    """Stage -> (mean s/step, steps) of every stage whose log shows a training step (sd-scripts' progress bar)."""
    run = RunDir(root)
    measured: dict[int, tuple[float, int]] = {}
    for stage in run_stages(root):
        log = run.log(stage)
        if log.is_file():
            found = measured_seconds_per_step(log.read_text(encoding="utf-8", errors="replace"))
            if found:
                measured[stage] = found
    return measured


# ---------------------------------------------------------------- the writer lock


def _holder(handle: IO[str]) -> str:
    handle.seek(0)
    try:
        info: dict[str, Any] = json.loads(handle.read() or "{}")
    except ValueError:
        return "another process"
    since = datetime.fromtimestamp(float(info.get("since", 0))).strftime("%H:%M")
    return f"{info.get('command', 'another command')} (pid {info.get('pid', '?')}, since {since})"


@contextmanager
def writer_lock(run: RunDir, command: str) -> Iterator[int]:
    """Hold the run directory's exclusive lock for a whole command; yields its descriptor, which a child's
    watchdog keeps open (launch.run): the kernel drops the lock when the last process holding it is gone."""
    run.state.mkdir(parents=True, exist_ok=True)
    handle = run.lock_file.open("a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                f"run dir in use by {_holder(handle)}: {run.root}",
                hint="wait for it to finish (or stop it), then run this again",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"command": command, "pid": os.getpid(), "since": time.time()}))
        handle.flush()
        yield handle.fileno()
    finally:
        handle.close()  # closing the descriptor releases the lock


def current_writer(run: RunDir) -> str | None:
    """Who holds the writer lock now, for readers (`check`, `plan`) to warn; None when nobody does."""
    if not run.lock_file.is_file():
        return None
    with run.lock_file.open("r", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(handle)
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def manifest_records(run: RunDir) -> list[dict[str, Any]]:
    """The manifest's lines as plain records, for readers that need a field or two (report, ownership, plan);
    lines that are not JSON objects are skipped. The build reads it typed (dataset.build.read_manifest)."""
    return jsonl_records(run.manifest.read_text(encoding="utf-8")) if run.manifest.is_file() else []


def unowned_subset_files(run: RunDir, caption_extension: str) -> list[Path]:
    """Files in the composite subset folders that the manifest does not list: sd-scripts would train them."""
    owned: set[Path] = set()
    for record in manifest_records(run):
        if isinstance(record.get("file"), str):
            image = run.root / record["file"]
            owned.update((image, image.with_suffix(caption_extension)))
    if not run.composites.is_dir():
        return []
    return sorted(p for folder in run.composites.iterdir() if folder.is_dir()
                  for p in folder.iterdir() if p not in owned)
