"""What a stage trains from, and whether (and why) it must run again.

`collect_inputs` reads the disk (the shell); `explain_changes` and `decide` are pure. `launch` and
`launch --dry-run` both decide through `decide`, so they never disagree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from kohya_1to2.fsutil import file_fingerprint, sha256_file
from kohya_1to2.imagefiles import list_images
from kohya_1to2.kohya import options as opt


class StageInputs(BaseModel):
    """Digests of everything one stage trains from, grouped so a change can be explained."""

    model_config = ConfigDict(frozen=True)

    config: dict[str, str]
    """"training TOML", "dataset TOML", "base model", "network module", "stage 1's weights" -> digest."""
    folders: dict[str, dict[str, str]]
    """image folder -> {file name: digest}; images by size + mtime, captions by content."""


def _text_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


def base_model_digest(value: str) -> str:
    """Path, size and mtime of the base model (every file of a diffusers folder); a hub id as written."""
    path = Path(value).expanduser()
    if path.is_file():
        return f"{path}:{file_fingerprint(path)}"
    if path.is_dir():
        parts = sorted(f"{p.relative_to(path)}:{file_fingerprint(p)}" for p in path.rglob("*") if p.is_file())
        return f"{path}:" + _text_digest("\n".join(parts).encode())
    return f"{value}:absent"


def folder_digests(image_dir: Path, caption_extension: str) -> dict[str, str]:
    """Each image sd-scripts would read from `image_dir` (size + mtime) and its caption (content)."""
    digests: dict[str, str] = {}
    for image in list_images(image_dir):
        digests[image.name] = "image " + file_fingerprint(image)
        caption = image.with_suffix(caption_extension)
        if caption.is_file():
            digests[caption.name] = "caption " + _text_digest(caption.read_bytes())
    return digests


def collect_inputs(
    *, effective_text: str, dataset_toml: Path, subsets: Sequence[Mapping[str, Any]], flat: Mapping[str, Any],
    network_version: str | None,
) -> StageInputs:
    """Read what a stage trains from (stage 2: including stage 1's weights, by content)."""
    config = {
        "training TOML": _text_digest(effective_text.encode("utf-8")),
        "dataset TOML": _text_digest(dataset_toml.read_bytes()) if dataset_toml.is_file() else "absent",
        "base model": base_model_digest(str(flat.get(opt.PRETRAINED_MODEL) or "")),
        "network module": f"{flat.get(opt.NETWORK_MODULE)} {network_version or ''}".strip(),
    }
    weights = flat.get(opt.NETWORK_WEIGHTS)
    if weights:
        path = Path(str(weights))
        config["stage 1's weights"] = sha256_file(path)[:20] if path.is_file() else "absent"
    folders: dict[str, dict[str, str]] = {}
    for subset in subsets:
        image_dir = str(subset.get(opt.IMAGE_DIR) or "")
        if image_dir:
            folders[image_dir] = folder_digests(Path(image_dir), str(subset.get(opt.CAPTION_EXTENSION)))
    return StageInputs(config=config, folders=folders)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def explain_changes(before: StageInputs, now: StageInputs) -> list[str]:
    """Why `now` differs from what the stage was trained from, one short phrase per kind of change."""
    reasons = [f"{key} changed" for key in sorted(set(before.config) | set(now.config))
               if before.config.get(key) != now.config.get(key)]
    for folder in sorted(set(before.folders) | set(now.folders)):
        name = Path(folder).name
        if folder not in before.folders:
            reasons.append(f"subset {name} added")
            continue
        if folder not in now.folders:
            reasons.append(f"subset {name} removed")
            continue
        old, new = before.folders[folder], now.folders[folder]
        changes: dict[str, int] = {}
        for file in set(old) | set(new):
            a, b = old.get(file), new.get(file)
            if a == b:
                continue
            kind = (a or b or "file").split(" ", 1)[0]
            verb = "added" if a is None else "removed" if b is None else "changed"
            changes[f"{kind} {verb}"] = changes.get(f"{kind} {verb}", 0) + 1
        reasons += [f"{_count(n, what.split()[0])} {what.split()[1]} in {name}" for what, n in sorted(changes.items())]
    return reasons


@dataclass(frozen=True)
class Decision:
    """Whether a stage runs, and the reason printed by `launch` and `launch --dry-run`."""

    stage: int
    runs: bool
    reason: str

    @property
    def line(self) -> str:
        return f"stage {self.stage}: {'runs' if self.runs else 'skipped'} ({self.reason})"


@dataclass(frozen=True)
class Record:
    """A finished stage as recorded in its completion record."""

    inputs: StageInputs
    finished: float


@dataclass(frozen=True)
class Attempt:
    """A started stage that never completed (the attempt record survived)."""

    started: float
    state_saved: bool


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


def decide(
    stage: int, now: StageInputs, record: Record | None, *, weights_exist: bool, force: bool,
    upstream_runs: bool, attempt: Attempt | None, resuming: bool,
) -> Decision:
    """Run a stage iff forced, its upstream runs, it never finished, or anything it trains from changed."""
    if force:
        return Decision(stage, True, "--force")
    if upstream_runs:
        return Decision(stage, True, "stage 1 runs first, so stage 2 starts from new weights")
    if attempt is not None:
        how = ("resuming from its saved state" if resuming else
               "restarting from scratch; `--resume` continues from its saved state" if attempt.state_saved else
               "restarting from scratch")
        return Decision(stage, True, f"the attempt started {_when(attempt.started)} was interrupted; {how}")
    if record is None:
        return Decision(stage, True, "never trained")
    if not weights_exist:
        return Decision(stage, True, "its final weights are missing")
    reasons = explain_changes(record.inputs, now)
    if reasons:
        return Decision(stage, True, "; ".join(reasons) + " since it was trained")
    return Decision(stage, False, f"unchanged since {_when(record.finished)}; --force re-runs it")
