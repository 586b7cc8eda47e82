"""Pydantic models of a 1to2 job: the single source of defaults.

The CLI builds a `Job` from flags, every value is validated here before any image is touched, and the
resolved job is saved in the run directory (`job.json`) so later commands (`plan`, `check`, `launch`,
regeneration) work from exactly what `prepare` used.
"""

from __future__ import annotations

import codecs
import difflib
import os
import re
import string
import unicodedata
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from kohya_1to2.modes import DEFAULT_MODE, MODES, Mode, mode_named

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
"""Image suffixes sd-scripts trains on that we read (compared case-insensitively)."""

DEFAULT_TEMPLATE = "{left}/{right}/{tag}, {left_tags}, {right_tags}"
"""The method's caption, literally: `CharLeft/CharRight/COMPOSITE, TagsLeft, TagsRight`."""

GROUP_SIZES = (2, 3, 4)
"""Characters per composite (`--group-size`): the method's pairs, or groups of three or four."""

_HEX_COLOUR = re.compile(r"^#?([0-9a-fA-F]{6})$")


class Strict(BaseModel):
    """Unknown keys are errors everywhere: a typo in a job file must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSettings(Strict):
    """Where the single-character kohya folders are and how their captions are read."""

    roots: list[Path] = Field(min_length=1, description="kohya dataset roots holding N_name/ folders")
    caption_extension: str = Field(".txt", description="caption file suffix, as sd-scripts' caption_extension")
    caption_encoding: str = Field(
        "utf-8", description="encoding of caption files that are not valid UTF-8 (UTF-8 is tried first, per file)"
    )
    caption_separator: str = Field(",", description="tag separator in captions (whitespace around it is trimmed)")
    trigger_from: Literal["caption", "folder"] = Field(
        "caption", description="trigger = first caption tag, or the folder's name part"
    )
    strict: bool = Field(False, description="treat warnings (e.g. an image without caption) as errors")
    fix_sources: bool = Field(
        False, description="write corrected copies of problem sources into the run dir and train stage 1 on them"
    )
    reg: list[Path] = Field(
        default_factory=list, description="kohya regularisation root holding N_class/ folders of class images "
        "(regularisation subsets of stage 1, or of the joint stage); repeat the flag for several",
    )

    @field_validator("caption_extension")
    @classmethod
    def _dotted(cls, value: str) -> str:
        if not value or value == ".":
            raise ValueError("caption_extension must name a suffix such as '.txt'")
        if not value.startswith("."):
            # sd-scripts appends it to the image path without its suffix: "txt" would look for "atxt"
            raise ValueError(f"caption_extension {value!r} has no leading dot: sd-scripts appends it to the image "
                             f"name as given (a.png -> 'a{value}'); write '.{value}'")
        if problem := free_text_problem(value) or ("contains a path separator" if "/" in value or "\\" in value
                                                   else None):
            raise ValueError(f"caption_extension {value!r} {problem}")
        return value

    @field_validator("caption_encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError as exc:
            raise ValueError(f"unknown text encoding {value!r}; use e.g. 'utf-8' or 'cp1252'") from exc
        return value

    @field_validator("caption_separator")
    @classmethod
    def _separator(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("caption_separator must contain a visible character, e.g. ','")
        if problem := free_text_problem(value):
            raise ValueError(f"caption_separator {value!r} {problem}")
        return value


class CaptionRules(Strict):
    """How a composite's caption is built; opt-in tag rules are off so the default is the method verbatim."""

    template: str = Field(DEFAULT_TEMPLATE, description="caption template")
    composite_tag: str = Field("COMPOSITE", description="tag marking composites; put it in the negative prompt")
    drop_solo: bool = Field(False, description="drop the 'solo' tag from both sides")
    merge_count_tags: bool = Field(False, description="merge count tags, e.g. 1girl + 1girl -> 2girls")
    dedupe_shared: bool = Field(False, description="keep a tag present on both sides only once")
    max_tags_per_side: int | None = Field(
        None, ge=1, description="keep at most this many tags per side (the first ones), so composites fit the "
        "token limit"
    )

    @field_validator("template")
    @classmethod
    def _template_keeps_group_first(cls, value: str) -> str:
        allowed = {"left", "right", "tag", "left_tags", "right_tags"}
        if problem := free_text_problem(value):
            raise ValueError(f"template {problem}")
        try:
            fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(value)
                      if name is not None]
        except ValueError as exc:  # a lone "{" or "}"
            raise ValueError(f"template {value!r}: {exc} (write {{{{ or }}}} for a literal brace)") from None
        if odd := sorted({"{" + name + (f"!{c}" if c else "") + (f":{s}" if s else "") + "}"
                          for name, s, c in fields if not name.isidentifier() or s or c}):
            raise ValueError(f"template field(s) {', '.join(odd)}: only plain names such as {{left}} are allowed "
                             "(no attribute, index, conversion or format spec)")
        names = {name for name, _, _ in fields}
        if unknown := names - allowed:
            raise ValueError(f"unknown template field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        if not {"left", "right"} <= names:
            raise ValueError("template must contain {left} and {right}")
        first = value.split(",", 1)[0]
        if "{left_tags}" in first or "{right_tags}" in first:
            raise ValueError(
                "the character group must be the first comma-separated token (keep_tokens = 1 keeps it); "
                "move {left_tags}/{right_tags} after the first comma"
            )
        return value

    @field_validator("composite_tag")
    @classmethod
    def _composite_tag_is_one_tag(cls, value: str, info: ValidationInfo) -> str:
        # template is declared first, so it is validated (or failed) by now
        if problem := name_problem(value, group_separators(info.data.get("template", DEFAULT_TEMPLATE))):
            raise ValueError(f"composite_tag {value!r} {problem}")
        if quotes := sorted(ch for ch in set(value) if ch in "\"'`"):
            raise ValueError(f"composite_tag {value!r} contains {' '.join(map(repr, quotes))}: a tag is plain text, "
                             "and a quote would be part of it in every caption and negative prompt")
        return value


def group_joins(template: str) -> tuple[str, str | None] | str:
    """How a template names more than two characters: (the text between `{left}` and `{right}`, the text
    between `{left_tags}` and `{right_tags}` or None where it names no tags), or why it cannot.

    `{left}` is the first character and `{right}` the last; the ones between are joined in with the same text,
    so `{left}/{right}/{tag}` reads `A/B/C/COMPOSITE` and its tags `tagsA, tagsB, tagsC`.
    """
    fields = [(literal, name) for literal, name, _, _ in string.Formatter().parse(template)]
    names = [name for _, name in fields if name is not None]
    joins: list[str] = []
    for first, last in (("left", "right"), ("left_tags", "right_tags")):
        if first not in names and last not in names:
            continue
        if names.count(first) != 1 or names.count(last) != 1:
            return f"name {{{first}}} and {{{last}}} once each (or, for the tags, neither)"
        at = names.index(first)
        if at + 1 >= len(names) or names[at + 1] != last:
            return f"{{{last}}} must follow {{{first}}} with only text between them"
        joins.append(fields[[name for _, name in fields].index(last)][0])
    if not joins[0].strip():
        return "the text between {left} and {right} must hold a visible character (e.g. '/') to join more names"
    return joins[0], joins[1] if len(joins) > 1 else None


def group_separators(template: str) -> frozenset[str]:
    """Characters that join the character group of a template (`/` in `{left}/{right}/{tag}`), and `,`."""
    first = re.sub(r"{\w*}", "", template.split(",", 1)[0])
    return frozenset(ch for ch in first if not ch.isspace()) | {",", "/"}


def free_text_problem(text: str) -> str | None:
    """Why text that ends up in a caption, a TOML or a prompt line would not survive there, or None: sd-scripts
    reads only a caption's first line and one prompt per line, so a line break (or any control character)
    silently cuts what follows."""
    if bad := sorted({ch for ch in text if unicodedata.category(ch) == "Cc"}):
        return f"contains the control character(s) {' '.join(repr(ch) for ch in bad)} (a line break cuts the text)"
    return None


def name_problem(name: str, forbidden: frozenset[str]) -> str | None:
    """Why a trigger or composite tag would break the `Left/Right/COMPOSITE` group, or None."""
    if not name.strip():
        return "is empty"
    if problem := free_text_problem(name):
        return problem
    if bad := sorted(ch for ch in set(name) if ch in forbidden):
        shown = " ".join(repr(ch) for ch in bad)
        return f"contains {shown}, which splits the caption's character group (Left/Right/COMPOSITE)"
    return None


class CompositeSettings(Strict):
    """The stage-2 composite dataset: how many, which pairs, how they look."""

    budget: int | None = Field(
        None,
        ge=1,
        description="number of composites; default = number of source images (each used ~twice), "
        "at least one per ordered character pair",
    )
    seed: int = Field(0, description="pairing seed; same seed + same sources = same composites")
    group_size: int = Field(
        2, ge=min(GROUP_SIZES), le=max(GROUP_SIZES),
        description="characters per composite: 2 = the method's pairs; 3 or 4 = groups side by side, captioned "
        "A/B/C/COMPOSITE, tagsA, tagsB, tagsC")
    style: Literal["side-by-side", "scene"] = Field(
        "side-by-side", json_schema_extra={"flag": "composite-style"},
        description="side-by-side: two images joined (the method as published); scene: the characters cut out "
        "by their masks and placed on one background, loss only where they are")
    layout: Literal["horizontal"] = Field("horizontal", description="side by side, left then right")
    background: str = Field("#ffffff", description="colour behind transparency and in the gap (#rrggbb)")
    gap: int = Field(0, ge=0, le=512, description="pixels between the two halves")
    format: Literal["png", "jpg", "webp"] = Field("png", description="output image format")
    quality: int = Field(95, ge=1, le=100, description="JPEG/WebP quality")
    max_side: int | None = Field(2048, ge=64, description="cap on the composite's long side (None = no cap)")
    repeats: int = Field(1, ge=1, description="kohya repeats of the composite subset (N in N_composite/)")
    workers: int | None = Field(None, ge=1, description="worker processes; default = all cores")
    masks: Path | None = Field(None, description="scene: a tree of mask images mirroring the sources, "
                               "N_name/<stem>.png, white = character (images with an alpha channel need none)")
    scene_background: Literal["flat", "gradient"] = Field(
        "flat", description="scene: the shared background, flat --background or a gradient from it")
    backgrounds: Path | None = Field(None, description="scene: a folder of background images (one per scene, "
                                     "seeded; overrides --scene-background)")
    max_overlap: float = Field(0.1, ge=0, le=0.5, description="scene: how much two characters' boxes may "
                               "overlap, as a share of the smaller one")
    flip: bool = Field(False, description="scene: mirror cut-outs at random (off: asymmetric features stay put)")
    segment: bool = Field(False, description="scene: masks for the images with neither alpha nor --masks file from "
                          "the optional segmenter (pip install '.[segment]': dghs-imgutils' isnetis, offline)")
    background_loss_weight: float = Field(0.0, ge=0, le=1, description="scene: loss weight where no character "
                                          "is (0 = masked out)")
    captions: CaptionRules = Field(default_factory=CaptionRules)

    @field_validator("background")
    @classmethod
    def _colour(cls, value: str) -> str:
        match = _HEX_COLOUR.match(value.strip())
        if not match:
            raise ValueError(f"background {value!r} is not a #rrggbb colour, e.g. '#ffffff'")
        return "#" + match.group(1).lower()

    @model_validator(mode="after")
    def _template_names_the_group(self) -> CompositeSettings:
        if self.group_size > 2 and isinstance(problem := group_joins(self.captions.template), str):
            raise ValueError(f"group_size {self.group_size}: the caption template {self.captions.template!r} "
                             f"cannot name more than two characters: {problem}")
        return self

    @model_validator(mode="after")
    def _scene_keeps_alpha(self) -> CompositeSettings:
        if self.style == "scene" and self.format == "jpg":
            raise ValueError("scene composites carry their loss mask as alpha: use --format png or webp")
        return self

    @property
    def background_rgb(self) -> tuple[int, int, int]:
        hex6 = self.background[1:]
        return (int(hex6[0:2], 16), int(hex6[2:4], 16), int(hex6[4:6], 16))

    @property
    def worker_count(self) -> int:
        """The one default for pre-flight and build workers: --workers, else every core this process may use."""
        if self.workers:
            return self.workers
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            return max(1, os.cpu_count() or 1)


Family = Literal["sd1", "sd2", "sdxl"]

Stage2Scale = Literal["area", "character"]

StageNumber = Literal[1, 2]

STAGES: tuple[StageNumber, ...] = (1, 2)
"""Every stage the tool knows, in order; a run trains those of its mode (`modes.MODES`)."""


class TrainingSettings(Strict):
    """User choices for both stages; `None` means "the preset's value"."""

    preset: str = Field("seed", description="preset in templates/ (seed, sdxl, illustrious, noobai-vpred, smoke) "
                        "or a path to your own template")
    base_model: str | None = Field(None, description="base model checkpoint or diffusers folder")
    family: Family | None = Field(None, description="model family; default from the preset")
    v_parameterization: bool = Field(False, description="v-prediction base model (SD2 768-v, v-pred SDXL)")
    resolution: int | None = Field(None, ge=64, description="training resolution; default from the preset")
    epochs: int | None = Field(None, ge=1, description="epochs per stage; default from the preset")
    output_name: str = Field("1to2", description="file name stem of the trained network")
    stage1_batch_size: int | None = Field(None, ge=1, description="stage-1 batch size; default from preset")
    stage2_scale: Stage2Scale = Field(
        "area", description="stage-2 composite size: 'area' = stage 1's pixels per image (the method's identical "
        "settings), 'character' = stage 1's pixels per character (2:1 composite at twice the area, a group of k "
        "at k times)",
    )
    mode: str = Field(
        DEFAULT_MODE, json_schema_extra={"choices": MODES},  # type: ignore[dict-item]  # flags reads the registry
        description="; ".join(mode.summary for mode in MODES.values()),
    )
    composite_share: float = Field(
        0.5, gt=0, lt=1, description="joint mode: share of each epoch's images that are composites"
    )
    replay_share: float = Field(
        0.25, gt=0, lt=1, description="replay mode: share of stage 2's images that are single-character images, "
        "drawn evenly per character",
    )
    prior_loss_weight: float = Field(1.0, gt=0, description="loss weight of the regularisation images (--reg)")
    sample: bool = Field(True, description="sample images every epoch")
    sample_pairs: Literal["rotate", "all"] = Field(
        "rotate", description="pair samples per epoch: a rotating round of N ordered pairs, or all N(N-1)"
    )
    sample_pair_size: str | None = Field(
        None, description="pair sample canvas WIDTHxHEIGHT; default landscape (SD1 768x512, SDXL 1216x832)"
    )

    @field_validator("sample_pair_size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\d+x\d+", value.strip().lower()):
            raise ValueError(f"sample_pair_size {value!r} must be WIDTHxHEIGHT, e.g. 768x512")
        return None if value is None else value.strip().lower()

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, value: str) -> str:
        return mode_named(value).name

    @model_validator(mode="after")
    def _share_fits_mode(self) -> TrainingSettings:
        for mode in MODES.values():
            key = mode.share_option
            if key and getattr(self, key) != type(self).model_fields[key].default and self.mode != mode.name:
                raise ValueError(f"{key} applies to mode {mode.name!r} only; this job's mode is {self.mode!r}")
        return self

    @field_validator("output_name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not value or any(ch in value for ch in '/\\:*?"<>|') or value.startswith("."):
            raise ValueError(f"output_name {value!r} must be a plain file name stem, e.g. '1to2'")
        return value


class Job(Strict):
    """Everything `prepare` needs; saved as `job.json` in the run directory."""

    out: Path = Field(description="run directory")
    sources: SourceSettings
    composites: CompositeSettings = Field(default_factory=CompositeSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)

    @property
    def mode(self) -> Mode:
        return mode_named(self.training.mode)

    @property
    def stages(self) -> tuple[StageNumber, ...]:
        """The stages this job trains (its mode's); `stages[-1]` makes the final network."""
        return tuple(n for n in STAGES if n in self.mode.stages)

    @model_validator(mode="after")
    def _repeats_fit_mode(self) -> Job:
        mode = self.mode
        if mode.composites_follow_share and self.composites.repeats != 1:
            raise ValueError(f"repeats: in {mode.name} mode the composites' repeats follow {mode.share_option}; "
                             f"set --{(mode.share_option or '').replace('_', '-')} instead")
        return self

    @model_validator(mode="after")
    def _out_outside_sources(self) -> Job:
        out = self.out.expanduser().resolve()
        for what, roots in (("source tree", self.sources.roots), ("regularisation tree", self.sources.reg)):
            for root in roots:
                src = root.expanduser().resolve()
                if out == src or src in out.parents:
                    raise ValueError(
                        f"--out {self.out} is inside the {what} {root}; choose a directory outside it "
                        "so sources are never modified"
                    )
                if out in src.parents:
                    raise ValueError(
                        f"--out {self.out} contains the {what} {root}: the run directory would hold your data "
                        "(and a later clean-up of it would take the data too); choose a directory beside it"
                    )
        return self



# ---------------------------------------------------------------- scanned data (produced by dataset.scan)


class SourceImage(Strict):
    """One training image of one character, with its caption's tags (trigger first)."""

    path: Path
    character: str
    tags: tuple[str, ...] = ()
    caption_path: Path | None = None

    @property
    def rel_key(self) -> str:
        """Listing-order-independent sort key (folder name + file name)."""
        return f"{self.path.parent.name}/{self.path.name}"


class Character(Strict):
    """One `N_name/` folder: a character with its trigger, repeats and images."""

    name: str
    trigger: str
    repeats: int
    folder: Path
    images: tuple[SourceImage, ...]
    caption_prefix: str | None = None
    """Written as the stage-1 subset's caption_prefix when the captions do not start with the trigger."""


class RegSet(Strict):
    """One `N_class/` folder of regularisation images (`--reg`): trained as an `is_reg` subset."""

    name: str
    """The class (folder name after `N_`): sd-scripts' class_tokens, the caption of images without one."""
    repeats: int
    folder: Path
    images: tuple[SourceImage, ...]


class ReplayPick(Strict):
    """`--mode replay`: the images of one character that stage 2 sees again, and their repeats per epoch."""

    character: Character
    images: tuple[SourceImage, ...]
    repeats: int

    @property
    def samples(self) -> int:
        return len(self.images) * self.repeats


class CompositePlan(Strict):
    """One composite to build: its index and its sources in order, left to right (the one record of which
    images make it, whatever the style); the file name follows from them. `left=`/`right=` build a pair."""

    index: int
    members: tuple[SourceImage, ...] = Field(min_length=2, max_length=max(GROUP_SIZES))

    @model_validator(mode="before")
    @classmethod
    def _pair_as_members(cls, data: object) -> object:
        if isinstance(data, dict) and "members" not in data and {"left", "right"} <= data.keys():
            data = {key: value for key, value in data.items() if key not in ("left", "right")} | {
                "members": (data["left"], data["right"])}
        return data

    @property
    def left(self) -> SourceImage:
        return self.members[0]

    @property
    def right(self) -> SourceImage:
        """The last member (the right one of a pair)."""
        return self.members[-1]


def validation_message(exc: Exception, *, as_flags: bool = False) -> str:
    """One line naming the offending key(s) of a pydantic ValidationError (as `--flag` names for the CLI)."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if as_flags and loc:
            where = "--" + loc[-1].replace("_", "-")
        else:
            where = ".".join(loc) or "job"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden" and loc:
            msg = "unknown key" + _did_you_mean(loc[-1])
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def _did_you_mean(key: str) -> str:
    """A spelling suggestion for an unknown key, from every field of the job models."""
    fields = {name for model in Strict.__subclasses__() for name in model.model_fields}
    close = difflib.get_close_matches(key, sorted(fields), n=1)
    return f"; did you mean '{close[0]}'?" if close else "; check its spelling or remove it"
