"""Job + preset -> the dataset and training TOML documents of both stages (pure: no disk access).

Stage 2's training TOML differs from stage 1's only in the keys listed in `STAGE_SPECIFIC_KEYS`; everything
else comes from the same template, so "all else identical" holds by construction. Its dataset TOML differs in
the subsets and in the resolution and bucket keys chosen for the composites (`--stage2-scale`).
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Literal

import tomlkit
from pydantic import BaseModel, ConfigDict
from tomlkit.items import Table

from kohya_1to2 import kohya
from kohya_1to2.configs.buckets import (
    COMMON_COMPOSITE_ASPECTS,
    MAX_CROP,
    STEPS_BY_FAMILY,
    Stage2Buckets,
    bucket_fits,
    choose_stage2_buckets,
)
from kohya_1to2.configs.presets import (
    PRESET_SECTION,
    Preset,
    effective_settings,
    key_comments,
    load_preset,
    resolved_family,
)
from kohya_1to2.dataset.compose import pad_row_to_aspect, row_layout
from kohya_1to2.dataset.scene import estimated_canvas
from kohya_1to2.errors import UsageError
from kohya_1to2.kohya import final_weights_path
from kohya_1to2.kohya import options as opt
from kohya_1to2.kohya.buckets import buckets_for, select_bucket
from kohya_1to2.models import Job, StageNumber
from kohya_1to2.rundir import RunDir

Stage = StageNumber
Role = Literal["character", "composites", "replay", "reg"]
"""What a subset holds: a character's folder, the composites, a character's replayed images, a reg class."""

STAGE_SPECIFIC_KEYS = frozenset(
    {opt.TRAIN_BATCH_SIZE, opt.NETWORK_WEIGHTS, opt.OUTPUT_DIR, opt.OUTPUT_NAME, opt.DATASET_CONFIG, opt.LOGGING_DIR}
)
"""The only keys whose flattened values differ between stage1.train.toml and stage2.train.toml."""

SAMPLING_KEYS = frozenset(
    {opt.SAMPLE_PROMPTS, kohya.SAMPLE_EVERY_N_EPOCHS, "sample_every_n_steps", kohya.SAMPLE_SAMPLER, "sample_at_first"}
)

_PLACEHOLDER = re.compile(r"\{(\w+)\}")

DATASET_KEY_COMMENTS: Mapping[str, str] = {
    opt.RESOLUTION: "Training resolution (--resolution); bucket areas are resolution squared.",
    opt.CAPTION_EXTENSION: "Caption files beside the images (sd-scripts' own default would be .caption).",
    opt.IMAGE_DIR: "Folder of images and same-stem captions (absolute: sd-scripts resolves paths from its cwd).",
    opt.NUM_REPEATS: "Times each image is seen per epoch (the N of the N_name folder).",
    opt.CAPTION_SEPARATOR: f"Tag separator of the captions (--caption-separator); shuffle and {opt.KEEP_TOKENS} "
                           "split on it.",
    opt.CAPTION_PREFIX: f"The captions lack the trigger: sd-scripts prepends it, so {opt.KEEP_TOKENS} = 1 keeps it "
                        "first.",
}


def subset_role(values: Mapping[str, Any]) -> Role:
    """A subset's role, from what the generator writes (a hand-added subset counts as a character)."""
    layout = RunDir(Path())
    image_dir = Path(str(values.get(opt.IMAGE_DIR, "")))
    if values.get(opt.IS_REG) is True:
        return "reg"
    if image_dir.parent.name == layout.composites.name:
        return "composites"
    if image_dir.parent.name == layout.replay.name:
        return "replay"
    return "character"


class SubsetSpec(BaseModel):
    """One dataset subset: a character folder, the composite folder, a replay folder or a reg class folder."""

    model_config = ConfigDict(frozen=True)

    name: str
    image_dir: Path
    num_repeats: int
    images: int
    caption_prefix: str | None = None
    role: Role = "character"
    alpha_mask: bool = False
    """Scene composites: their alpha channel is the loss weight (the union of the characters' masks)."""

    @property
    def is_reg(self) -> bool:
        return self.role == "reg"


class DatasetSpec(BaseModel):
    """One [[datasets]] block: single-character images (with reg classes) or composites."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["singles", "composites"]
    subsets: tuple[SubsetSpec, ...]


def file_names(stage: Stage) -> tuple[str, str]:
    """(dataset TOML, training TOML) names of a stage inside the run directory."""
    layout = RunDir(Path())
    return layout.dataset_toml(stage).name, layout.train_toml(stage).name


SAMPLE_PROMPTS_FILE = RunDir(Path()).sample_prompts.name


def stage_output_dir(run_dir: Path, stage: Stage) -> Path:
    return RunDir(run_dir).output_dir(stage)


def stage_output_name(job: Job, stage: Stage) -> str:
    """The final stage's network carries the job's output name; an earlier stage's gets `_stage<N>`."""
    name = job.training.output_name
    return name if stage == job.stages[-1] else f"{name}_stage{stage}"


def stage1_weights(job: Job, run_dir: Path, save_model_as: str | None = None) -> Path:
    """Stage 1's final network, which stage 2 loads as network_weights."""
    return final_weights_path(stage_output_dir(run_dir, 1), stage_output_name(job, 1), save_model_as)


def training_context(job: Job, preset: Preset, stage: Stage, run_dir: Path) -> dict[str, Any]:
    """Values for the template's `"{name}"` placeholders in one stage."""
    settings = effective_settings(job, preset)
    family = settings.family
    save_as = _template_value(preset, opt.SAVE_MODEL_AS)
    dataset_name, _ = file_names(stage)
    return {
        "base_model": job.training.base_model or "",
        "v2": family == "sd2",
        kohya.V_PARAMETERIZATION: job.training.v_parameterization,
        "batch_size": settings.stage1_batch_size if stage == 1 else settings.stage2_batch_size,
        opt.OUTPUT_DIR: str(stage_output_dir(run_dir, stage)),
        opt.OUTPUT_NAME: stage_output_name(job, stage),
        opt.DATASET_CONFIG: str(run_dir / dataset_name),
        opt.LOGGING_DIR: str(RunDir(run_dir).tensorboard(stage)),
        opt.SAMPLE_PROMPTS: str(run_dir / SAMPLE_PROMPTS_FILE) if job.training.sample else None,
        opt.NETWORK_WEIGHTS: str(stage1_weights(job, run_dir, save_as)) if stage == 2 else None,
    }


def preset_value(preset: Preset, key: str) -> Any:
    """A key's value in the preset template's training sections (None when absent)."""
    return _template_value(preset, key)


def _template_value(preset: Preset, key: str) -> Any:
    for section, table in preset.document().unwrap().items():
        if section != PRESET_SECTION and isinstance(table, dict) and key in table:
            return table[key]
    return None


def fill_placeholder(value: Any, context: Mapping[str, Any], where: str) -> Any:
    """Replace `"{name}"` (whole value) or `"{name}/rest"` (a path under it); None/"" means "leave the key out"."""
    if not isinstance(value, str) or "{" not in value:
        return value
    names = _PLACEHOLDER.findall(value)
    for name in names:
        if name not in context:
            raise UsageError(
                f"template key {where}: unknown placeholder {{{name}}}",
                hint=f"known placeholders: {', '.join(sorted(context))}",
            )
    whole = _PLACEHOLDER.fullmatch(value)
    if whole:
        return context[whole.group(1)]
    prefixed = re.fullmatch(r"\{(\w+)\}[/\\](.*)", value)
    if prefixed:
        base = context[prefixed.group(1)]
        return str(PurePath(str(base)) / prefixed.group(2)) if base else None
    return _PLACEHOLDER.sub(lambda m: str(context[m.group(1)]), value)


def _add_commented(table: Any, key: str, value: Any, comment: str | None) -> None:
    for line in (comment or "").splitlines():
        table.add(tomlkit.comment(line))
    table.add(key, value)


def training_document(job: Job, preset: Preset, stage: Stage, run_dir: Path) -> tomlkit.TOMLDocument:
    """The stage's training TOML: the template's sections with placeholders filled and job choices applied."""
    context = training_context(job, preset, stage, run_dir)
    template = preset.document()
    doc = tomlkit.document()
    doc.add(tomlkit.comment(f"kohya-1to2 stage {stage} training config (preset {preset.name!r}), for "
                            "sd-scripts --config_file."))
    doc.add(tomlkit.comment("Edit freely: on regeneration your changed keys are kept (docs/configs.md, hand edits)."))
    doc.add(tomlkit.comment("`python -m kohya_1to2 check <run dir>` validates it against the pinned sd-scripts."))
    if stage == 2:
        doc.add(tomlkit.comment(f"Stage 2 = stage 1 with {opt.TRAIN_BATCH_SIZE}, {opt.NETWORK_WEIGHTS}, "
                                f"{opt.OUTPUT_DIR}, {opt.OUTPUT_NAME}"))
        doc.add(tomlkit.comment(f"and {opt.DATASET_CONFIG} changed; keep network settings equal to stage 1's."))
    for section, table in template.items():
        if section == PRESET_SECTION or not isinstance(table, Table):
            continue
        comments = key_comments(table)
        out = tomlkit.table()
        for key, item in table.items():
            value = fill_placeholder(_unwrap(item), context, f"{section}.{key}")
            if key == kohya.MAX_TRAIN_EPOCHS and job.training.epochs is not None:
                value = job.training.epochs
            if value is None or value == "" or (key in SAMPLING_KEYS and not job.training.sample):
                continue
            _add_commented(out, key, value, comments.get(key))
        if section == "training" and job.training.epochs is not None and kohya.MAX_TRAIN_EPOCHS not in out:
            _add_commented(out, kohya.MAX_TRAIN_EPOCHS, job.training.epochs, "Epochs per stage (--epochs).")
        if section == "training" and job.sources.reg and opt.PRIOR_LOSS_WEIGHT not in out:
            _add_commented(out, opt.PRIOR_LOSS_WEIGHT, job.training.prior_loss_weight,
                           "Loss weight of the regularisation images (--reg, --prior-loss-weight).")
        if len(out):
            doc.add(tomlkit.nl())
            doc.add(section, out)
    return doc


def _block_keys(job: Job, preset: Preset, block: DatasetSpec, resolution: int,
                aspects: Sequence[float]) -> dict[str, tuple[Any, str]]:
    """Key -> (value, comment) of a block's resolution and bucket keys: stage 2's choice for composites, the
    preset's (stage 1's) for single-character images."""
    if block.kind == "composites":
        return stage2_bucket_keys(job, preset, resolution, aspects)
    comments = key_comments(preset.document()[PRESET_SECTION]["dataset"])
    keys: dict[str, tuple[Any, str]] = {opt.RESOLUTION: (resolution, DATASET_KEY_COMMENTS[opt.RESOLUTION])}
    for key in BUCKET_KEYS:
        if key in preset.dataset:
            keys[key] = (preset.dataset[key], comments.get(key, ""))
    return keys


BUCKET_KEYS = (opt.MIN_BUCKET_RESO, opt.MAX_BUCKET_RESO, opt.BUCKET_RESO_STEPS)

_BLOCK_TITLES = {"singles": "single-character folders", "composites": "side-by-side composites"}


def dataset_document(
    job: Job, preset: Preset, stage: Stage, blocks: Sequence[DatasetSpec], aspects: Sequence[float] = (),
) -> tomlkit.TOMLDocument:
    """The stage's dataset TOML: [general] from the preset, one [[datasets]] per block (singles, composites).

    With one block its resolution and bucket keys sit in [general]; with two (joint, replay) each [[datasets]]
    carries its own, and its own batch_size, so composites and single images each keep their buckets."""
    template = preset.document()
    comments = key_comments(template[PRESET_SECTION]["dataset"])
    settings = effective_settings(job, preset)
    resolution = settings.resolution
    separator = job.sources.caption_separator.strip()
    doc = tomlkit.document()
    what = " and ".join(_BLOCK_TITLES[b.kind] for b in blocks)
    if any(s.is_reg for b in blocks for s in b.subsets):
        what += ", with regularisation images"
    doc.add(tomlkit.comment(f"kohya-1to2 stage {stage} dataset config ({what}), "
                            f"for sd-scripts {opt.flag(opt.DATASET_CONFIG)}."))
    doc.add(tomlkit.comment("sd-scripts checks this file strictly: each key at an allowed level, with its type."))
    doc.add(tomlkit.nl())
    general = tomlkit.table()
    single = len(blocks) == 1
    own = _block_keys(job, preset, blocks[0], resolution, aspects) if single else {}
    if single:
        _add_commented(general, opt.RESOLUTION, *own[opt.RESOLUTION])
    for key, value in preset.dataset.items():
        if not single and key in BUCKET_KEYS:
            continue
        value, comment = own.get(key, (value, comments.get(key, "")))
        _add_commented(general, key, value, comment)
    _add_commented(general, opt.CAPTION_EXTENSION, job.sources.caption_extension,
                   DATASET_KEY_COMMENTS[opt.CAPTION_EXTENSION])
    if single and blocks[0].kind == "singles" and separator != ",":
        # singles are read from the sources; composite captions are always comma-joined
        _add_commented(general, opt.CAPTION_SEPARATOR, separator, DATASET_KEY_COMMENTS[opt.CAPTION_SEPARATOR])
    doc.add("general", general)
    datasets = tomlkit.aot()
    for block in blocks:
        dataset = tomlkit.table()
        if not single:
            dataset.add(tomlkit.comment(f"{_BLOCK_TITLES[block.kind]}: its own buckets and batch size"))
            for key, (value, comment) in _block_keys(job, preset, block, resolution, aspects).items():
                _add_commented(dataset, key, value, comment)
            batch = settings.stage2_batch_size if block.kind == "composites" else settings.stage1_batch_size
            _add_commented(dataset, opt.BATCH_SIZE, batch,
                           f"Batch size of this block ({'stage 2' if block.kind == 'composites' else 'stage 1'}'s).")
            if block.kind == "singles" and separator != ",":
                _add_commented(dataset, opt.CAPTION_SEPARATOR, separator,
                               DATASET_KEY_COMMENTS[opt.CAPTION_SEPARATOR])
        aot = tomlkit.aot()
        for spec in block.subsets:
            aot.append(_subset_table(spec))
        dataset.add("subsets", aot)
        datasets.append(dataset)
    doc.add("datasets", datasets)
    return doc


def _subset_table(spec: SubsetSpec) -> Table:
    subset = tomlkit.table()
    label = {"character": f"character {spec.name}", "composites": "composites",
             "replay": f"character {spec.name}, replayed", "reg": f"regularisation class {spec.name}"}[spec.role]
    subset.add(tomlkit.comment(f"{label}: {spec.images} images x {spec.num_repeats} repeats"))
    subset.add(opt.IMAGE_DIR, str(spec.image_dir))
    subset.add(opt.NUM_REPEATS, spec.num_repeats)
    if spec.caption_prefix:
        _add_commented(subset, opt.CAPTION_PREFIX, spec.caption_prefix, DATASET_KEY_COMMENTS[opt.CAPTION_PREFIX])
    if spec.alpha_mask:
        _add_commented(subset, opt.ALPHA_MASK, True, textwrap.fill(
            "Scene composites: each image's alpha channel weights the loss (the characters' union mask; "
            "--background-loss-weight elsewhere), so stage 2 trains where the characters are, not on the shared "
            "background.", 110))
    if spec.is_reg:
        _add_commented(subset, opt.IS_REG, True, "Regularisation images (--reg): balanced by sd-scripts to the "
                       f"training images' count, weighted by {opt.PRIOR_LOSS_WEIGHT}.")
        _add_commented(subset, opt.CLASS_TOKENS, spec.name, "The caption of class images without a caption file.")
    return subset


def stage2_bucket_choice(job: Job, preset: Preset, resolution: int, aspects: Sequence[float] = ()) -> Stage2Buckets:
    """Stage 2's resolution and bucket keys for the job's --stage2-scale (see buckets.choose_stage2_buckets);
    `aspects` are the run's composites (width / height), the common ones when empty."""
    dataset = preset.dataset
    low = dataset.get(opt.MIN_BUCKET_RESO, 256)
    high = max(preset.settings.stage2_max_bucket_reso, int(dataset.get(opt.MAX_BUCKET_RESO, 1024)))
    return choose_stage2_buckets(resolution, job.training.stage2_scale, aspects or COMMON_COMPOSITE_ASPECTS,
                                 steps=STEPS_BY_FAMILY[resolved_family(job, preset)],
                                 min_bucket_reso=int(low), max_bucket_reso=high, members=job.composites.group_size)


@dataclass(frozen=True)
class PlannedComposites:
    """The run's composites before the build: their natural sizes (side by side, `compose.pair_layout`), the
    bucket each is padded to where stage 2's buckets would crop it by more than MAX_CROP, and the sizes built."""

    natural: list[tuple[int, int]]
    pad_to: list[tuple[int, int] | None]
    sizes: list[tuple[int, int]]

    @property
    def aspects(self) -> list[float]:
        """What stage 2's bucket keys are chosen for: the natural aspects (so keys and padding agree)."""
        return [w / h for w, h in self.natural if h]


def plan_composites(job: Job, pairs: Sequence[Sequence[tuple[int, int]]]) -> PlannedComposites:
    """From each composite's members' upright source sizes (left to right): natural sizes, stage 2's bucket
    choice for their aspects, then a bucket to pad to for those the choice would crop by more than MAX_CROP."""
    gap, max_side = job.composites.gap, job.composites.max_side
    scene = job.composites.style == "scene"
    natural = [estimated_canvas(members, max_side) if scene else row_layout(members, gap, max_side).size
               for members in pairs]
    preset = load_preset(job.training.preset)
    resolution = effective_settings(job, preset).resolution
    choice = stage2_bucket_choice(job, preset, resolution, [w / h for w, h in natural if h])
    if scene:  # a scene's canvas is grown to its bucket's aspect in the build: every one lands uncropped
        buckets = [select_bucket(size, buckets_for(choice.settings))[0] for size in natural]
        return PlannedComposites(natural, list(buckets), list(buckets))
    pad_to = bucket_fits(natural, choice.settings)
    sizes = [pad_row_to_aspect(members, gap, max_side, bucket).size if bucket else size
             for members, size, bucket in zip(pairs, natural, pad_to, strict=True)]
    return PlannedComposites(natural, pad_to, sizes)


def stage2_bucket_keys(job: Job, preset: Preset, resolution: int,
                       aspects: Sequence[float] = ()) -> dict[str, tuple[Any, str]]:
    """Key -> (value, comment) of stage 2's resolution and bucket keys."""
    choice = stage2_bucket_choice(job, preset, resolution, aspects)
    settings = choice.settings
    width, height = settings.resolution
    landing = ", ".join(f"{aspect:g}:1 -> {w}x{h}" + (" (padded to its aspect)" if crop > MAX_CROP else "")
                        for aspect, (w, h), crop in choice.landing)
    if choice.scale == "character":
        k = job.composites.group_size
        why = (f"--stage2-scale character: each of a composite's {k} characters gets about stage 1's "
               f"{resolution}x{resolution} pixels, so a {k}:1 composite trains at {width}x{height}")
    else:
        why = (f"--stage2-scale area: a composite gets about stage 1's {resolution}x{resolution} pixels "
               "(the method's identical settings)")
    reso_value: Any = width if width == height else [width, height]
    reso_comment = textwrap.fill(f"{why}; chosen so composites land in buckets of their own aspect "
                                 f"({landing}, crop <= {MAX_CROP:.0%}).", 110)
    return {
        opt.RESOLUTION: (reso_value, reso_comment),
        opt.MIN_BUCKET_RESO: (settings.min_bucket_reso, "Smallest bucket side in stage 2 (chosen with resolution)."),
        opt.MAX_BUCKET_RESO: (settings.max_bucket_reso,
                            "Largest bucket side in stage 2: room for the widest composite bucket."),
        opt.BUCKET_RESO_STEPS: (settings.bucket_reso_steps,
                              "Bucket step in stage 2 (SD1/SD2: 64, sd-scripts asserts it; SDXL: 64 or 32, "
                              "whichever fits the composites)."),
    }


def _unwrap(item: Any) -> Any:
    return item.unwrap() if hasattr(item, "unwrap") else item
