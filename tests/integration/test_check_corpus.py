"""`check`'s start-up corpus against the REAL pinned sd-scripts: every case `check` calls an error crashes,
is ignored, or trains nothing there, and every generated file passes both.

One child Python (cwd = sd-scripts, as launch runs it) walks each case through the start of
`NetworkTrainer.train` with sd-scripts' own functions: the parser and `read_config_from_file` (with
`--dataset_config` on the command line, as launch passes it), `verify_training_args`, `prepare_dataset_args`,
`BlueprintGenerator` + `generate_dataset_group_by_blueprint` on real images, `assert_extra_args`, LyCORIS'
`create_network` argument parsing, `get_optimizer` on a tiny parameter and `get_scheduler_fix`. Loading the
base model is tried only for the base-model cases (it fails at once there); the others stop before it.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image
from sd_scripts_child import REPO, requires_sd_scripts, run_in_sd_scripts

from kohya_1to2 import kohya
from kohya_1to2.configs.generate import write_run_configs
from kohya_1to2.configs.lint import lint_run, startup_value_problem
from kohya_1to2.configs.presets import run_family
from kohya_1to2.models import Character, Job, SourceImage, SourceSettings, TrainingSettings

pytestmark = requires_sd_scripts()

STARTER = r"""
import importlib, json, math, sys, traceback
sys.path.insert(0, ".")
import torch
import train_network, sdxl_train_network
from library import config_util, train_util

def plain(value):
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)

def start(script, train, dataset, load_model):
    module = sdxl_train_network if script.startswith("sdxl") else train_network
    sdxl = module is sdxl_train_network
    trainer = sdxl_train_network.SdxlNetworkTrainer() if sdxl else train_network.NetworkTrainer()
    rec = {}
    try:
        rec["at"] = "parse"
        parser = module.setup_parser()
        sys.argv = [script, "--config_file", train, "--dataset_config", dataset]
        args = parser.parse_args()
        train_util.verify_command_line_training_args(args)
        args = train_util.read_config_from_file(args, parser)
        rec["at"] = "verify"
        train_util.verify_training_args(args)
        train_util.prepare_dataset_args(args, True)
        rec["dataset_config"] = plain(args.dataset_config)
        if load_model:
            rec["at"] = "model"
            train_util._load_target_model(args, torch.float32, "cpu")
        rec["at"] = "dataset"
        generator = config_util.BlueprintGenerator(config_util.ConfigSanitizer(True, True, args.masked_loss, True))
        blueprint = generator.generate(config_util.load_user_config(args.dataset_config), args)
        rec["blueprint"] = [{"dataset": {k: plain(v) for k, v in vars(d.params).items()},
                             "subsets": [{k: plain(v) for k, v in vars(s.params).items()} for s in d.subsets]}
                            for d in blueprint.dataset_group.datasets]
        group, val = config_util.generate_dataset_group_by_blueprint(blueprint.dataset_group)
        rec["batches"] = len(group)
        if len(group) == 0:
            return rec  # train_network: "No data found", exit 0 with nothing trained
        trainer.assert_extra_args(args, group, val)
        rec["at"] = "network"
        net_kwargs = {}
        for net_arg in args.network_args or []:
            key, value = net_arg.split("=", 1)  # as train_network.train does
            net_kwargs[key] = value
        network_module = importlib.import_module(args.network_module)
        try:
            network_module.create_network(1.0, args.network_dim, args.network_alpha, None, None, None, **net_kwargs)
        except (AttributeError, TypeError):
            pass  # past the argument parsing: it fails on the missing model, which this start does not load
        rec["at"] = "optimizer"
        if args.optimizer_type.lower() == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
            args.optimizer_type = "AdamW"  # launch's visible substitution on a machine without bitsandbytes
        _, _, optimizer = train_util.get_optimizer(args, [torch.nn.Parameter(torch.zeros(4, 4))])
        rec["optimizer"] = [type(optimizer).__name__, optimizer.param_groups[0]["lr"]]
        rec["at"] = "scheduler"
        if args.max_train_epochs is not None:  # train_network.train's step count (one process, no accumulation)
            args.max_train_steps = args.max_train_epochs * math.ceil(len(group) / args.gradient_accumulation_steps)
        rec["steps"] = args.max_train_steps
        rec["scheduler"] = type(train_util.get_scheduler_fix(args, optimizer, 1)).__name__
        rec["at"] = "started"
    except BaseException as exc:
        rec["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    return rec

out = [start(*job) for job in json.load(sys.stdin)]
print("@@" + json.dumps(out))
"""


def _start_with_sd_scripts(jobs: list[list[Any]]) -> list[dict[str, Any]]:
    return run_in_sd_scripts(STARTER, jobs)


def _corpus() -> Any:
    spec = importlib.util.spec_from_file_location("lint_corpus", REPO / "tests" / "test_lint.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _make_run(tmp_path: Path, kohya_dataset: Callable[..., Path], preset: str) -> Path:
    """A prepared-like run directory with real images: two characters, two composites, a manifest."""
    root = kohya_dataset({"alice": 2, "bob": 2}, root_name=f"src_{preset}")
    run = tmp_path / f"run_{preset}"
    composites = run / "composites" / "1_composite"
    composites.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (256, 128), (40 * i, 90, 160)).save(composites / f"{i:04d}.png")
        (composites / f"{i:04d}.txt").write_text("alice/bob/COMPOSITE, x, y\n")
    (run / "manifest.jsonl").write_text("".join(json.dumps({"file": f"composites/1_composite/{i:04d}.png"}) + "\n"
                                                for i in range(2)))
    model = tmp_path / "models" / "base.safetensors"
    model.parent.mkdir(exist_ok=True)
    model.write_bytes(b"a base model file; this start stops before loading it")
    characters = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        name = folder.name.split("_", 1)[1]
        images = tuple(SourceImage(path=p, character=name, tags=(name,)) for p in sorted(folder.glob("*.png")))
        characters.append(Character(name=name, trigger=name, repeats=1, folder=folder, images=images))
    job = Job(out=run, sources=SourceSettings(roots=[root]),
              training=TrainingSettings(preset=preset, base_model=str(model)))
    write_run_configs(job, characters, composite_dir=composites, composite_repeats=1,
                      composite_sizes=[(256, 128)] * 2, run_dir=run)
    (run / "job.json").write_text(job.model_dump_json())
    return run


def _job(run: Path, stage: int, load_model: bool = False) -> list[Any]:
    script = kohya.TRAINING_SCRIPTS[run_family(run)]  # sd1 where the run has no job.json
    return [script, str(run / f"stage{stage}.train.toml"), str(run / f"stage{stage}.dataset.toml"), load_model]


def _comparable(record: dict[str, Any], run: Path, case_run: Path) -> str:
    return json.dumps(record).replace(str(case_run), str(run))


def test_every_startup_case_check_refuses_crashes_or_is_ignored_or_trains_nothing_in_sd_scripts(
        tmp_path: Path, kohya_dataset: Callable[..., Path]) -> None:
    corpus = _corpus()
    base = _make_run(tmp_path, kohya_dataset, "seed")
    jobs = [_job(base, 1), _job(base, 2)]
    case_runs = []
    for i, (file, section, line, key, _, _) in enumerate(corpus.STARTUP_CORPUS):
        case_run = tmp_path / f"case{i:02d}" / base.name
        shutil.copytree(base, case_run)
        for name in ("stage1.train.toml", "stage2.train.toml", "stage1.dataset.toml", "stage2.dataset.toml"):
            path = case_run / name  # the copy's own paths, so only the case differs from the baseline
            path.write_text(path.read_text().replace(str(base), str(case_run)))
        corpus.edit_run(case_run, file, section, line)
        errors = [p.key for p in lint_run(case_run) if p.severity == "error"]
        assert key in errors, (line, errors)
        jobs.append(_job(case_run, int(file[5]), "pretrained_model_name_or_path" in line))
        case_runs.append(case_run)
    records = _start_with_sd_scripts(jobs)
    baseline = {1: records[0], 2: records[1]}
    assert "error" not in baseline[1] and "error" not in baseline[2], baseline
    assert baseline[1]["at"] == baseline[2]["at"] == "started"
    for (file, _, line, _, _, outcome), case_run, record in zip(corpus.STARTUP_CORPUS, case_runs, records[2:],
                                                                strict=True):
        stage = int(file[5])
        described = f"{file}: {line} -> {record}"
        if outcome == "crash":
            assert "error" in record, described
        elif outcome == "ignored":
            assert _comparable(record, base, case_run) == _comparable(baseline[stage], base, base), described
        elif outcome == "nothing":
            assert "error" not in record, described
            assert record["batches"] == 0 or record["steps"] <= 0 or record["optimizer"][1] == 0, described
        else:
            assert outcome == "flips"
            assert "error" not in record, described
            assert all(s["flip_aug"] for d in record["blueprint"] for s in d["subsets"]), described


def test_generated_files_of_every_preset_pass_check_and_start_in_sd_scripts(
        tmp_path: Path, kohya_dataset: Callable[..., Path]) -> None:
    presets = ("seed", "sdxl", "smoke", "illustrious", "noobai-vpred")
    runs = [_make_run(tmp_path, kohya_dataset, preset) for preset in presets]
    for run in runs:
        assert [p.line for p in lint_run(run) if p.severity == "error"] == []
    records = _start_with_sd_scripts([_job(run, stage) for run in runs for stage in (1, 2)])
    for run, record in zip([r for r in runs for _ in (1, 2)], records, strict=True):
        assert "error" not in record and record["at"] == "started", (run.name, record)


SCHEDULERS = r"""
import json, sys
sys.path.insert(0, ".")
import argparse, torch
import train_network
from library import train_util
from transformers.optimization import SchedulerType
from diffusers.optimization import SchedulerType as DiffusersSchedulerType

def builds(name, optimizer_type="AdamW", **settings):
    parser = train_network.setup_parser()
    args = parser.parse_args([])
    args.lr_scheduler, args.optimizer_type, args.max_train_steps = name, optimizer_type, 100
    for key, value in settings.items():
        setattr(args, key, value)
    param = torch.nn.Parameter(torch.zeros(4, 4))
    try:
        _, _, optimizer = train_util.get_optimizer(args, [param])
        train_util.get_scheduler_fix(args, optimizer, 1)
        return None
    except BaseException as exc:
        return type(exc).__name__

names = sorted({s.value for s in SchedulerType} | {s.value for s in DiffusersSchedulerType})
out = {"schedulers": {n: builds(n) for n in names}, "adafactor": builds("adafactor:0.001", "Adafactor"),
       "needs": {"cosine_with_min_lr": [builds("cosine_with_min_lr", lr_scheduler_min_lr_ratio=0.1),
                                        builds("cosine_with_min_lr", lr_scheduler_args=["min_lr=1e-6"])],
                 "piecewise_constant": [builds("piecewise_constant", lr_scheduler_args=["step_rules='1:10,0.1'"])]},
       "optimizers": {}}
for name in json.load(sys.stdin):
    args = train_network.setup_parser().parse_args([])
    args.optimizer_type = name
    try:
        train_util.get_optimizer(args, [torch.nn.Parameter(torch.zeros(4, 4))])
        out["optimizers"][name] = None
    except BaseException as exc:
        out["optimizers"][name] = type(exc).__name__
print("@@" + json.dumps(out))
"""


def test_scheduler_and_optimizer_facts_match_what_sd_scripts_builds() -> None:
    """kohya.LR_SCHEDULERS is exactly what get_scheduler_fix builds; every name check accepts builds or
    only lacks its optional package; every name check refuses fails in get_optimizer."""
    import torch.optim

    optional = {"Lion": "lion_pytorch", "DAdapt": "dadaptation", "Prodigy": "prodigyopt",
                "ScheduleFree": "schedulefree", "8bit": "bitsandbytes", "Paged": "bitsandbytes"}
    every_torch = [n for n, c in vars(torch.optim).items() if isinstance(c, type)
                   and issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer]
    refused = ["AdamW8bitt", "adam", "Adam8bit", "DAdaptAdamm", "torch.optim.Adamw", "no_such_package.Fast",
               "Lion9bit", "sgd"]
    names = [*kohya.NAMED_OPTIMIZERS, "adamw", "ADAFACTOR", "torch.optim.SGD", *every_torch, *refused]
    result = run_in_sd_scripts(SCHEDULERS, names)
    builds_plain = {n for n, err in result["schedulers"].items() if err is None}
    assert builds_plain == set(kohya.LR_SCHEDULERS) - set(kohya.SCHEDULER_NEEDS)
    assert {n for n in result["schedulers"] if kohya.scheduler_problem(n, "AdamW") is None} == builds_plain
    assert all(err is None for errs in result["needs"].values() for err in errs), result["needs"]
    assert kohya.scheduler_problem("cosine_with_min_lr", None, {"lr_scheduler_min_lr_ratio": 0.1}) is None
    assert kohya.scheduler_problem("cosine_with_min_lr", None, {"lr_scheduler_args": ["min_lr=1e-6"]}) is None
    assert kohya.scheduler_problem("piecewise_constant", None, {"lr_scheduler_args": ["step_rules='1:10,0.1'"]}) is None
    assert kohya.scheduler_problem("adafactor:0.001", "Adafactor") is None and result["adafactor"] is None
    for name, error in result["optimizers"].items():
        accepted = startup_value_problem("optimizer_type", name, {}) is None  # check's whole rule
        if name in refused:
            assert not accepted and error is not None, (name, error)
        elif accepted and error is not None:
            assert error in ("ImportError", "ModuleNotFoundError") and any(
                marker.lower() in name.lower() and importlib.util.find_spec(package) is None
                for marker, package in optional.items()), (name, error)
        elif not accepted:
            assert error is not None, f"check refuses {name!r}, which sd-scripts builds"
