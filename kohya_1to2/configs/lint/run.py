"""Rules across a run directory's files: the network, the stage chain, paths, captions and buckets."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kohya_1to2 import kohya
from kohya_1to2.configs.lint.problems import (
    MAX_COMPOSITE_CROP,
    NON_STRUCTURAL_NETWORK_ARGS,
    SD_SCRIPTS_CAPTION_DEFAULT,
    ConfigProblem,
    _literal,
    load_snapshot,
    parser_actions,
)
from kohya_1to2.configs.render import subset_role
from kohya_1to2.kohya import (
    LYCORIS_PIN,
    TRAINING_PATH_KEYS,
    TRAINING_TO_DATASET_KEYS,
    WRITTEN_PATH_KEYS,
    base_model_problem,
    final_weights_of,
    lycoris_sd1_problem,
)
from kohya_1to2.kohya import options as opt
from kohya_1to2.kohya.buckets import SD_BUCKET_DEFAULTS, BucketSettings, assign_buckets


def _network_arg_map(args: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for arg in args if isinstance(args, list) else []:
        key, _, value = str(arg).partition("=")
        out[key.strip()] = value.strip()
    return out


def _subset_values(dataset_doc: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"datasets[{i}].subsets[{j}]", values) for i, j, values in kohya.subset_scopes(dataset_doc)]


def lint_network(flat: Mapping[str, Any], file: str, family: str | None = None) -> list[ConfigProblem]:
    problems = []
    module = flat.get(opt.NETWORK_MODULE)
    if isinstance(module, str) and not module.startswith("networks."):
        top = module.split(".", 1)[0]
        if importlib.util.find_spec(top) is None:
            problems.append(ConfigProblem(file=file, key=opt.NETWORK_MODULE, problem=f"{module!r} is not importable",
                                    fix=f"pip install '{LYCORIS_PIN}' (or run `python -m kohya_1to2 setup`)"))
    if module == "lycoris.kohya":
        algo = _network_arg_map(flat.get(opt.NETWORK_ARGS)).get("algo", "lora")
        if algo != "loha":
            problems.append(ConfigProblem(file=file, key=opt.NETWORK_ARGS, severity="warning",
                                    problem=f"algo={algo}: the 1to2 method trains a LoHa",
                                    fix=f'put "algo=loha" in {opt.NETWORK_ARGS}'))
        args = flat.get(opt.NETWORK_ARGS)
        installed = kohya.installed_lycoris_version()
        broken = lycoris_sd1_problem(installed, family, args if isinstance(args, list) else None)
        if broken:
            message, _, fix = broken.partition("; fix: ")
            problems.append(ConfigProblem(file=file, key=opt.NETWORK_MODULE, problem=message, fix=fix))
    if not flat.get(opt.PRETRAINED_MODEL):
        problems.append(ConfigProblem(file=file, key=opt.PRETRAINED_MODEL, problem="no base model set",
                                fix="re-run prepare with --base-model PATH, or set it here"))
    return problems


def _same_path(a: Any, b: Path) -> bool:
    return bool(a) and Path(str(a)).expanduser().resolve() == b.expanduser().resolve()


def lint_stage_consistency(flat1: Mapping[str, Any], flat2: Mapping[str, Any], file2: str) -> list[ConfigProblem]:
    """Stage 2 must build the same network as stage 1: sd-scripts loads weights non-strictly and silently
    restarts modules whose keys do not match. network_args are compared as a mapping (order does not
    matter) without NON_STRUCTURAL_NETWORK_ARGS; this is the one rule `check` and `launch` both apply."""
    problems = []
    for key in (opt.NETWORK_MODULE, opt.NETWORK_DIM, opt.NETWORK_ALPHA):
        if flat1.get(key) != flat2.get(key):
            problems.append(ConfigProblem(file=file2, key=key,
                                    problem=f"{_literal(flat2.get(key))} differs from stage 1's "
                                            f"{_literal(flat1.get(key))}; stage-1 weights would not load",
                                    fix=f"set the same {key} in both stages"))
    args1 = {k: v for k, v in _network_arg_map(flat1.get(opt.NETWORK_ARGS)).items()
             if k not in NON_STRUCTURAL_NETWORK_ARGS}
    args2 = {k: v for k, v in _network_arg_map(flat2.get(opt.NETWORK_ARGS)).items()
             if k not in NON_STRUCTURAL_NETWORK_ARGS}
    if args1 != args2:
        diff = sorted(k for k in {*args1, *args2} if args1.get(k) != args2.get(k))
        problems.append(ConfigProblem(file=file2, key=opt.NETWORK_ARGS,
                                problem=f"structure-changing args differ from stage 1's ({', '.join(diff)})",
                                fix=f"use the same {opt.NETWORK_ARGS} in both stages"))
    return problems


def lint_stage_chain(flat1: Mapping[str, Any], flat2: Mapping[str, Any], file1: str, file2: str) -> list[ConfigProblem]:
    """Stage 2 continues from stage 1's final file with the same network (used by `check` and `launch`)."""
    stage1_final = final_weights_of(flat1)
    if stage1_final is None:
        return [ConfigProblem(file=file1, key=opt.OUTPUT_DIR, problem="not set; stage 2 cannot find stage 1's network",
                        fix=f'set {opt.OUTPUT_DIR} = "/absolute/path/output/stage1" in [saving]')]
    problems = lint_stage_consistency(flat1, flat2, file2)
    weights = flat2.get(opt.NETWORK_WEIGHTS)
    if not _same_path(weights, stage1_final):
        problems.append(ConfigProblem(file=file2, key=opt.NETWORK_WEIGHTS,
                                problem=f"{_literal(weights) if weights else 'not set'}: is not stage 1's final "
                                        f"network {stage1_final}",
                                fix=f"set {opt.NETWORK_WEIGHTS} = {_literal(str(stage1_final))}"))
    return problems


def lint_paths(flat: Mapping[str, Any], file: str) -> list[ConfigProblem]:
    """Relative paths resolve inside sd-scripts' folder at run time, and the base model must be loadable."""
    problems = []
    for key in TRAINING_PATH_KEYS:
        value = flat.get(key)
        if not isinstance(value, str) or not value:
            continue
        if key == opt.PRETRAINED_MODEL:
            found = base_model_problem(value)
            if found:
                problems.append(ConfigProblem(file=file, key=key, problem=found,
                                        fix="point it at a .safetensors/.ckpt file or a diffusers folder "
                                            "(absolute path), or re-run prepare with --base-model PATH"))
                continue
        if Path(value).is_absolute():
            continue
        if key in (opt.PRETRAINED_MODEL, "vae") and not Path(value).exists():
            continue  # a Hugging Face model id such as "org/model"
        problems.append(ConfigProblem(file=file, key=key,
                                problem=f"{_literal(value)} is a relative path; sd-scripts runs inside its own "
                                        "folder and would look for it there",
                                fix=f"write an absolute path, e.g. {key} = {_literal(str(Path(value).resolve()))}"))
    return problems


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def lint_written_paths(flats: Mapping[int, Mapping[str, Any]], files: Mapping[int, str], run_dir: Path,
                       protected: Sequence[tuple[str, Path]]) -> list[ConfigProblem]:
    """Where sd-scripts (and launch) write: never into a source or regularisation tree (the next `prepare` would
    scan the networks, samples and states as that character's images), never stage 1's output from stage 2;
    outside the run directory is allowed but said. `protected`: (what, folder) pairs; paths are compared
    resolved (symlinks followed), as the kernel will."""
    run_dir = run_dir.resolve()
    problems: list[ConfigProblem] = []
    outputs: dict[int, Path] = {}
    for stage, flat in sorted(flats.items()):
        for key in WRITTEN_PATH_KEYS:
            value = flat.get(key)
            if not isinstance(value, str) or not value or not Path(value).is_absolute():
                continue  # unset, or relative: lint_paths reports it
            path = Path(value).resolve()
            if key == opt.OUTPUT_DIR:
                outputs[stage] = path
            hit = next(((what, folder) for what, folder in protected if _inside(path, folder.resolve())), None)
            if hit is not None:
                problems.append(ConfigProblem(
                    file=files[stage], key=key,
                    problem=f"{_literal(value)} is inside the {hit[0]} {hit[1]}: sd-scripts would write into your "
                            "data, and the next prepare would take what it wrote for images",
                    fix=f"point it into the run directory {run_dir}, where prepare writes it (re-run prepare "
                        "with --overwrite-edits to get the generated value back)"))
            elif not _inside(path, run_dir):
                problems.append(ConfigProblem(
                    file=files[stage], key=key, severity="warning",
                    problem=f"{_literal(value)} is outside the run directory {run_dir}",
                    fix="fine if intended; report, evaluate and a moved run directory only see what is inside it"))
    if 1 in outputs and 2 in outputs and (_inside(outputs[2], outputs[1]) or _inside(outputs[1], outputs[2])):
        problems.append(ConfigProblem(
            file=files[2], key=opt.OUTPUT_DIR,
            problem=f"{outputs[2]} shares stage 1's output folder {outputs[1]}: stage 2's epochs, samples and states "
                    "would mix with (and rotate away) stage 1's",
            fix=f"set {opt.OUTPUT_DIR} = {_literal(str(run_dir / 'output' / 'stage2'))}"))
    return problems


def _dataset_sets_everywhere(dataset_doc: Mapping[str, Any], name: str, subset_level: bool) -> bool | None:
    """Does the dataset TOML set `name` for every subset (or dataset)? None when it has no datasets."""
    if not kohya.dataset_scopes(dataset_doc):
        return None
    scopes = [values for _, _, values in kohya.subset_scopes(dataset_doc)] if subset_level \
        else [values for _, values in kohya.dataset_scopes(dataset_doc)]
    return bool(scopes) and all(scope.get(name) is not None for scope in scopes)


def lint_dataset_keys_in_training(train_doc: Mapping[str, Any], dataset_doc: Mapping[str, Any], train_file: str,
                                  dataset_file: str, script: str,
                                  snapshot: Mapping[str, Any] | None = None) -> list[ConfigProblem]:
    """A dataset option in the training TOML is only a fallback for subsets that do not set it: where the
    dataset TOML sets it everywhere, sd-scripts ignores it (config_util's BlueprintGenerator fallbacks)."""
    schema = (snapshot or load_snapshot())["dataset_schema"]
    actions = parser_actions(script, snapshot)
    problems = []
    for section, table in train_doc.items():
        for key in (table if isinstance(table, dict) else {section: table}):
            where = f"{section}.{key}" if isinstance(table, dict) else key
            name = TRAINING_TO_DATASET_KEYS.get(key, key)
            if key == opt.TRAIN_BATCH_SIZE or key not in actions or not any(name in lv for lv in schema.values()):
                continue
            everywhere = _dataset_sets_everywhere(dataset_doc, name, name in schema["subset"])
            if everywhere is None:
                continue
            if everywhere:
                problems.append(ConfigProblem(file=train_file, key=where,
                                        problem=f"is a dataset option and {dataset_file} sets {name} for every "
                                                "subset, so sd-scripts ignores it here",
                                        fix=f"remove it here; change {name} in {dataset_file}"))
            else:
                problems.append(ConfigProblem(file=train_file, key=where, severity="warning",
                                        problem=f"is a dataset option: sd-scripts uses it only where {dataset_file} "
                                                f"does not set {name}",
                                        fix=f"move it to {dataset_file}"))
    return problems


def lint_composite_subsets(dataset_doc: Mapping[str, Any], train_flat: Mapping[str, Any],
                           file: str) -> list[ConfigProblem]:
    """flip_aug on the composites mirrors which character stands left, contradicting the CharLeft/CharRight
    caption (a training-TOML flip_aug applies where the dataset TOML does not set it)."""
    problems = []
    for where, values in _subset_values(dataset_doc):
        if subset_role(values) != "composites":
            continue
        flip = values.get("flip_aug")
        if flip is True or (flip is None and train_flat.get("flip_aug") is True):
            problems.append(ConfigProblem(file=file, key=f"{where}.flip_aug",
                                    problem="mirrors composites: the left character would be trained as right",
                                    fix="set flip_aug = false (and remove flip_aug from the training TOML)"))
    return problems


def lint_captions(dataset_doc: Mapping[str, Any], file: str, image_suffixes: Sequence[str]) -> list[ConfigProblem]:
    problems = []
    for where, values in _subset_values(dataset_doc):
        image_dir = Path(str(values.get(opt.IMAGE_DIR, "")))
        if not image_dir.is_dir():
            problems.append(ConfigProblem(file=file, key=f"{where}.{opt.IMAGE_DIR}",
                                          problem=f"folder {image_dir} not found",
                                    fix="fix the path (absolute) or re-run prepare"))
            continue
        images = [p for p in image_dir.iterdir() if p.suffix.lower() in image_suffixes]
        if not images:
            problems.append(ConfigProblem(file=file, key=f"{where}.{opt.IMAGE_DIR}",
                                          problem=f"{image_dir} has no images",
                                    fix="add images or remove the subset (sd-scripts would train on nothing)"))
            continue
        ext = values.get(opt.CAPTION_EXTENSION, SD_SCRIPTS_CAPTION_DEFAULT)
        if not isinstance(ext, str) or values.get(opt.CLASS_TOKENS):
            continue  # class_tokens caption the images that have no caption file
        if not any(p.with_suffix(ext).is_file() for p in images):
            others = sorted({q.suffix for p in images for q in image_dir.glob(p.stem + ".*")
                             if q.suffix.lower() not in image_suffixes})
            fix = f"set {opt.CAPTION_EXTENSION} = {_literal(others[0])}" if others else "add caption files"
            problems.append(ConfigProblem(file=file, key=f"{where}.{opt.CAPTION_EXTENSION}",
                                    problem=f"no image in {image_dir} has a {ext} caption", fix=fix))
    return problems


def lint_buckets(dataset_doc: Mapping[str, Any], file: str, family: str,
                 composite_sizes: Mapping[int, Sequence[tuple[int, int]]]) -> list[ConfigProblem]:
    """Bucket range and step of every [[datasets]] block; for a block of composites (index in `composite_sizes`,
    with their sizes) also bucketing on and a bucket wide enough."""
    problems = []
    scopes = kohya.dataset_scopes(dataset_doc)
    for i, scope in scopes or [(0, kohya.general_scope(dataset_doc))]:
        composites, image_sizes = i in composite_sizes, composite_sizes.get(i, ())
        where = f"datasets[{i}]" if scopes else "general"
        res = scope.get(opt.RESOLUTION)
        reso = (res, res) if isinstance(res, int) else tuple(res) if isinstance(res, list) and len(res) == 2 else None
        low = scope.get(opt.MIN_BUCKET_RESO, SD_BUCKET_DEFAULTS.min_bucket_reso)
        high = scope.get(opt.MAX_BUCKET_RESO, SD_BUCKET_DEFAULTS.max_bucket_reso)
        steps = scope.get(opt.BUCKET_RESO_STEPS, SD_BUCKET_DEFAULTS.bucket_reso_steps)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high, steps)):
            continue  # reported by the schema check
        step_unit = kohya.BUCKET_STEP_UNIT[family]
        if steps % step_unit:
            problems.append(ConfigProblem(file=file, key=f"{where}.{opt.BUCKET_RESO_STEPS}",
                                    problem=f"{steps} is not a multiple of {step_unit}, which {family} requires",
                                    fix=f"use {step_unit}"))
        if reso and all(isinstance(v, int) for v in reso) and (min(reso) < low or max(reso) > high):
            problems.append(ConfigProblem(file=file, key=f"{where}.{opt.MIN_BUCKET_RESO}",
                                    problem=f"resolution {reso[0]}x{reso[1]} is outside the bucket range "
                                            f"{low}..{high}; sd-scripts stops with an assertion",
                                    fix=f"make {opt.MIN_BUCKET_RESO} <= resolution <= {opt.MAX_BUCKET_RESO}"))
            continue
        if not composites:
            continue
        if scope.get(opt.ENABLE_BUCKET) is not True:
            problems.append(ConfigProblem(file=file, key=f"{where}.{opt.ENABLE_BUCKET}",
                                    problem="bucketing is off: 2:1 composites are centre-cropped to a square, "
                                            "losing half of each character",
                                    fix=f"set {opt.ENABLE_BUCKET} = true"))
            continue
        if reso and image_sizes and all(isinstance(v, int) for v in reso):
            settings = BucketSettings(resolution=(int(reso[0]), int(reso[1])), min_bucket_reso=low,
                                      max_bucket_reso=high, bucket_reso_steps=steps)
            buckets = assign_buckets(image_sizes, settings)
            crop = sum(b.mean_crop * b.images for b in buckets) / max(1, sum(b.images for b in buckets))
            if crop > MAX_COMPOSITE_CROP:
                problems.append(ConfigProblem(file=file, key=f"{where}.{opt.MAX_BUCKET_RESO}",
                                        problem=f"composites lose {crop:.0%} of their pixels to cropping: no bucket "
                                                "is wide enough",
                                        fix=f"raise {opt.MAX_BUCKET_RESO} (e.g. 1536 for SDXL)"))
    return problems
