"""Presets: the commented TOML templates in `templates/`, loaded into a validated `Preset`.

A template is the single source of every training default and of the comment shown beside each key in the
generated files; `[preset]` and `[preset.dataset]` are read by the generator, every other section is copied
into both stages' training TOMLs.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.exceptions
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kohya_1to2.errors import UsageError
from kohya_1to2.models import Family, Job, validation_message
from kohya_1to2.rundir import RunDir, load_job

PRESET_SECTION = "preset"
TEMPLATES_ENV = "KOHYA_1TO2_TEMPLATES"


class PresetSettings(BaseModel):
    """The generator's own settings from a template's `[preset]` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: Family
    resolution: int = Field(ge=64)
    stage1_batch_size: int = Field(ge=1)
    stage2_batch_size: int = Field(ge=1)
    stage2_max_bucket_reso: int = Field(ge=64)
    sample_width: int = Field(ge=64)
    sample_height: int = Field(ge=64)
    sample_steps: int = Field(ge=1, le=1000)
    sample_cfg_scale: float | None = Field(None, gt=0, le=30)
    """Guidance scale of sample and evaluate images (`--l`); None = sd-scripts' own default (7.5)."""
    sample_negative: str = ""
    sample_max_prompts: int = Field(0, ge=0)
    """0 = every prompt; else at most this many, alternating single and pair prompts (cheap CPU runs)."""


class Preset(BaseModel):
    """A loaded template: its settings, its dataset defaults and its text (for the per-key comments)."""

    model_config = ConfigDict(frozen=True)

    name: str
    path: Path
    settings: PresetSettings
    dataset: dict[str, Any]
    text: str

    def document(self) -> tomlkit.TOMLDocument:
        """A fresh comment-preserving parse of the template (callers may mutate it): a copy of the cached parse."""
        return copy.deepcopy(_parsed(self.text))


@functools.lru_cache(maxsize=16)
def _parsed(text: str) -> tomlkit.TOMLDocument:
    """tomlkit parses slowly and one run reads the same template many times: parse each text once (never handed
    out as is; callers get a deep copy or the unwrapped plain values)."""
    return tomlkit.parse(text)


def templates_dir() -> Path:
    """`templates/` at the repository root (the tool runs from a clone or an editable install)."""
    if env := os.environ.get(TEMPLATES_ENV):
        return Path(env)
    return Path(__file__).resolve().parents[2] / "templates"


def available_presets() -> list[str]:
    folder = templates_dir()
    return sorted(p.stem for p in folder.glob("*.toml")) if folder.is_dir() else []


def preset_path(name: str) -> Path:
    """A preset name (`seed`) or a path to a template file (`my/preset.toml`)."""
    if name.endswith(".toml") or "/" in name or "\\" in name:
        return Path(name).expanduser()
    return templates_dir() / f"{name}.toml"


def load_preset(name: str) -> Preset:
    """Read and validate a preset; a bad template is a one-line UsageError naming file and key."""
    path = preset_path(name)
    if not path.is_file():
        raise UsageError(
            f"preset {name!r} not found ({path})",
            hint=f"available presets: {', '.join(available_presets()) or 'none'}; or pass a .toml template path",
        )
    text = path.read_text(encoding="utf-8")
    return parse_preset(text, name=path.stem, path=path)


def parse_preset(text: str, *, name: str, path: Path) -> Preset:
    """Validate a template's text (pure)."""
    try:
        document = _parsed(text).unwrap()
    except tomlkit.exceptions.ParseError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}", hint="fix the template's syntax") from None
    meta = document.get(PRESET_SECTION)
    if not isinstance(meta, dict):
        raise UsageError(f"{path}: missing the [preset] table", hint="copy templates/seed.toml and edit it")
    meta = dict(meta)
    dataset = meta.pop("dataset", {})
    if not isinstance(dataset, dict):
        raise UsageError(f"{path}: preset.dataset must be a table", hint="write it as [preset.dataset]")
    try:
        settings = PresetSettings(**meta)
    except ValidationError as exc:
        raise UsageError(f"{path}: preset.{validation_message(exc)}", hint="compare with templates/seed.toml") from None
    for section, value in document.items():
        if section != PRESET_SECTION and not isinstance(value, dict):
            raise UsageError(
                f"{path}: top-level key {section!r} outside a section",
                hint="put training keys in a section such as [training]",
            )
    return Preset(name=name, path=path, settings=settings, dataset=dataset, text=text)


def key_comments(table: Any) -> dict[str, str]:
    """The comment lines directly above each key of a tomlkit table (joined), for re-use in rendered files."""
    comments: dict[str, str] = {}
    pending: list[str] = []
    for key, item in table.value.body:
        if key is None:
            if isinstance(item, tomlkit.items.Comment):
                pending.append(item.as_string().strip().lstrip("#").strip())
            elif isinstance(item, tomlkit.items.Whitespace):
                pending = []
            continue
        if pending:
            comments[key.key] = "\n".join(pending)
        pending = []
    return comments


def resolved_family(job: Job, preset: Preset) -> Family:
    """The job's family, defaulting to the preset's; SDXL and SD1/2 presets are not interchangeable."""
    family = job.training.family or preset.settings.family
    if (family == "sdxl") != (preset.settings.family == "sdxl"):
        wanted = "sdxl" if family == "sdxl" else "seed"
        raise UsageError(
            f"--family {family} does not fit preset {preset.name!r} (written for {preset.settings.family})",
            hint=f"use --preset {wanted}",
        )
    return family


def effective_settings(job: Job, preset: Preset) -> PresetSettings:
    """The preset's settings with the job's command-line choices applied: the one place of that precedence
    (command line > preset > model default; hand edits win later, in the three-way merge)."""
    settings = preset.settings
    update: dict[str, Any] = {"family": resolved_family(job, preset)}
    if job.training.stage1_batch_size:
        update["stage1_batch_size"] = job.training.stage1_batch_size
    wanted = job.training.resolution
    if wanted:
        update["resolution"] = wanted
        if (settings.sample_width, settings.sample_height) == (settings.resolution, settings.resolution):
            # samples follow --resolution when the preset samples at its own training resolution
            update.update(sample_width=wanted, sample_height=wanted)
    return settings.model_copy(update=update)


def run_family(root: Path) -> Family:
    """The model family of a prepared run (job.json's family, else its preset's); without job.json, SD1."""
    if not RunDir(root).job_file.is_file():
        return "sd1"
    job = load_job(root)
    return resolved_family(job, load_preset(job.training.preset))
