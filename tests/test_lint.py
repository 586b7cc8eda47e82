"""`check`: a corpus of mistakes sd-scripts accepts silently (or fails on cryptically), each reported with
file, key and fix; generated files pass; the cross-stage and data checks of a run directory."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import toml
from PIL import Image

from kohya_1to2.cli import main
from kohya_1to2.configs.generate import render_run_files, write_run_configs
from kohya_1to2.configs.lint import (
    ConfigProblem,
    lint_dataset,
    lint_file,
    lint_prediction,
    lint_run,
    lint_training,
    prediction_summary,
    value_fits,
)
from kohya_1to2.models import Character, Job, SourceImage, SourceSettings, TrainingSettings
from tests.fake_launch import write_safetensors_header

RUN = Path("/runs/example")


def chars(root: Path) -> list[Character]:
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        name = folder.name.split("_", 1)[1]
        images = tuple(SourceImage(path=p, character=name, tags=(name,)) for p in sorted(folder.glob("*.png")))
        out.append(Character(name=name, trigger=name, repeats=1, folder=folder, images=images))
    return out


def generated(name: str) -> str:
    job = Job(out=RUN, sources=SourceSettings(roots=[Path("/d")]), training=TrainingSettings(base_model="/m"))
    folder = Path("/d/1_alice")
    character = Character(name="alice", trigger="alice", repeats=1, folder=folder,
                          images=(SourceImage(path=folder / "a.png", character="alice"),))
    return render_run_files(job, [character], composite_dir=RUN / "c", composite_repeats=1, composite_count=1,
                            run_dir=RUN)[name]


def section_edit(text: str, section: str, line: str) -> str:
    return text.replace(f"[{section}]\n", f"[{section}]\n{line}\n", 1)


TRAINING_CORPUS: list[tuple[str, str, str, str]] = [
    # (section, inserted line, reported key, words of the fix)
    ("network", "netwrok_dim = 8", "network.netwrok_dim", "did you mean 'network_dim'"),
    ("optimizer", 'lerning_rate = 0.001', "optimizer.lerning_rate", "did you mean 'learning_rate'"),
    ("optimizer", 'unet_lr = "1e-4"', "optimizer.unet_lr", "without quotes"),
    ("training", 'train_batch_size = "2"', "training.train_batch_size", "without quotes"),
    ("network", "network_dim = 8.0", "network.network_dim", "network_dim = 8"),
    ("training", "max_train_epochs = 40.0", "training.max_train_epochs", "max_train_epochs = 40"),
    ("training", 'mixed_precision = "fp32"', "training.mixed_precision", '"bf16"'),
    ("saving", 'save_precision = "half"', "saving.save_precision", '"fp16"'),
    ("saving", 'save_model_as = "ckpt2"', "saving.save_model_as", '"safetensors"'),
    ("model", "max_token_length = 300", "model.max_token_length", "225"),
    ("sampling", 'sample_sampler = "euler_x"', "sampling.sample_sampler", '"k_euler_a"'),
    ("training", 'xformers = "true"', "training.xformers", "no quotes"),
    ("training", "cache_latents = 1", "training.cache_latents", "true or"),
    ("network", 'network_args = "algo=loha"', "network.network_args", '["algo=loha"]'),
    ("network", "network_args = [8, 4]", "network.network_args", "quote it"),
    ("training", "resolution = 512", "training.resolution", "dataset TOML"),
    ("model", "learning_rate = 0.001", "optimizer.learning_rate", "one section only"),
    ("training", "cache_text_encoder_outputs = true", "training.cache_text_encoder_outputs", "model family"),
    ("training", "num_repeats = 3", "training.num_repeats", "dataset TOML"),
    ("optimizer", "lr_scheduler_num_cycles = 1.5", "optimizer.lr_scheduler_num_cycles", "an integer"),
    ("optimizer", 'text_encoder_lr = "5e-4"', "optimizer.text_encoder_lr", "without quotes"),
    ("model", "clip_skip = [2]", "model.clip_skip", "an integer"),
    ("training", "seed = true", "training.seed", "an integer"),
]


def _single(problems: list[ConfigProblem], key: str) -> ConfigProblem:
    matching = [p for p in problems if p.key == key]
    assert matching, f"nothing reported for {key}: {[p.line for p in problems]}"
    return matching[0]


def training_variant(section: str, line: str) -> str:
    """The generated stage-1 training TOML with one line replaced (same key in that section) or inserted
    (also used by the integration test, which shows that sd-scripts accepts every variant silently)."""
    text = generated("stage1.train.toml")
    name = line.split(" = ")[0]
    if name in toml.loads(text).get(section, {}):
        start = text.index(f"\n{name} = ") + 1
        return text[:start] + line + text[text.index("\n", start):]
    return section_edit(text, section, line)


@pytest.mark.parametrize(("section", "line", "key", "fix"), TRAINING_CORPUS, ids=[c[1] for c in TRAINING_CORPUS])
def test_training_corpus_is_reported_with_file_key_and_fix(section: str, line: str, key: str, fix: str) -> None:
    text = training_variant(section, line)
    problems = lint_training(toml.loads(text), "train_network.py", "stage1.train.toml")
    problem = _single(problems, key)
    assert fix in problem.fix, problem.line
    assert problem.line.startswith(f"stage1.train.toml: {key}: ")


DATASET_CORPUS: list[tuple[str, str, str, str]] = [
    ("general", "cache_latents = true", "general.cache_latents", "training TOML"),
    ("general", "max_token_length = 225", "general.max_token_length", "training TOML"),
    ("datasets.subsets", "resolution = 512", "datasets[0].subsets[0].resolution", "[general] or [[datasets]]"),
    ("datasets.subsets", "batch_size = 2", "datasets[0].subsets[0].batch_size", "[general] or [[datasets]]"),
    ("datasets", "is_reg = true", "datasets[0].is_reg", "[[datasets.subsets]]"),
    ("datasets.subsets", "num_repeat = 2", "datasets[0].subsets[0].num_repeat", "did you mean 'num_repeats'"),
    ("general", "network_multiplier = 1", "general.network_multiplier", "network_multiplier = 1.0"),
    ("general", "validation_split = 0", "general.validation_split", "validation_split = 0.0"),
    ("general", "enable_bucket = 1", "general.enable_bucket", "enable_bucket = true"),
    ("general", 'resolution = "512"', "general.resolution", "resolution = 512"),
    ("general", 'keep_tokens = "1"', "general.keep_tokens", "keep_tokens = 1"),
    ("general", "caption_extension = 1", "general.caption_extension", 'caption_extension = "1"'),
    ("general", "face_crop_aug_range = [2, 3]", "general.face_crop_aug_range", "face_crop_aug_range"),
]


def dataset_variant(section: str, line: str) -> str:
    """The generated stage-1 dataset TOML with one line replaced or inserted (also used by the integration
    test, which feeds every variant to sd-scripts' own sanitizer)."""
    text = generated("stage1.dataset.toml")
    name = line.split(" = ")[0]
    if section == "general" and f"\n{name} = " in text:
        start = text.index(f"\n{name} = ") + 1
        return text[:start] + line + text[text.index("\n", start):]
    header = f"[[{section}]]\n" if section.startswith("datasets") else f"[{section}]\n"
    return text.replace(header, header + line + "\n", 1)


@pytest.mark.parametrize(("section", "line", "key", "fix"), DATASET_CORPUS, ids=[c[1] for c in DATASET_CORPUS])
def test_dataset_corpus_is_reported_with_file_key_and_fix(section: str, line: str, key: str, fix: str) -> None:
    text = dataset_variant(section, line)
    problem = _single(lint_dataset(toml.loads(text), "stage1.dataset.toml"), key)
    assert fix in problem.fix, problem.line


def test_dataset_structure_problems() -> None:
    problems = lint_dataset({"foo": 1, "datasets": [{"subsets": [{"num_repeats": 1}]}]}, "d.toml")
    keys = {p.key: p for p in problems}
    assert "top-level" in keys["foo"].problem
    assert keys["datasets[0].subsets[0].image_dir"].problem == "required key missing"
    assert lint_dataset({"datasets": {"a": 1}}, "d.toml")[0].fix.startswith("write each dataset as [[datasets]]")


def test_value_fits_mirrors_voluptuous_strictness() -> None:
    assert value_fits(1.0, "float") and not value_fits(1, "float")
    assert value_fits(2, "float|int") and value_fits([512, 768], "int|int[2]") and not value_fits([512], "int|int[2]")
    assert not value_fits(True, "int") and value_fits(True, "bool")


@pytest.mark.parametrize("name", ["stage1.train.toml", "stage2.train.toml", "stage1.dataset.toml",
                                  "stage2.dataset.toml"])
def test_generated_files_pass_the_lint(name: str) -> None:
    doc = toml.loads(generated(name))
    if "datasets" in doc:
        assert lint_dataset(doc, name) == []
    else:
        assert lint_training(doc, "train_network.py", name) == []


def test_gpu_only_options_are_not_flagged() -> None:
    doc = toml.loads(generated("stage1.train.toml"))
    flat = {k: v for t in doc.values() for k, v in t.items()}
    assert flat["optimizer_type"] == "AdamW8bit" and flat["xformers"] is True and flat["mixed_precision"] == "fp16"
    assert lint_training(doc, "train_network.py", "x") == []


# ------------------------------------------------------------------------------------------- run directory


@pytest.fixture
def run_dir(tmp_path: Path, kohya_dataset: Callable[..., Path]) -> Path:
    root = kohya_dataset({"alice": 2, "bob": 2})
    run = tmp_path / "run"
    composites = run / "composites" / "1_composite"
    composites.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (256, 128)).save(composites / f"{i:04d}.png")
        (composites / f"{i:04d}.txt").write_text("alice/bob/COMPOSITE, x, y\n")
    (run / "manifest.jsonl").write_text("".join(json.dumps({"file": f"composites/1_composite/{i:04d}.png"}) + "\n"
                                                for i in range(3)))
    model = tmp_path / "models" / "base.safetensors"
    model.parent.mkdir()
    model.write_bytes(b"not read by check")
    job = Job(out=run, sources=SourceSettings(roots=[root]), training=TrainingSettings(base_model=str(model)))
    write_run_configs(job, chars(root), composite_dir=composites, composite_repeats=1,
                      composite_sizes=[(256, 128)] * 3, run_dir=run)
    (run / "job.json").write_text(job.model_dump_json())
    return run


def _rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_prepared_run_has_no_errors(run_dir: Path) -> None:
    assert [p.line for p in lint_run(run_dir) if p.severity == "error"] == []


SEMANTIC_CASES: list[tuple[str, str, str, str, str]] = [
    ("stage2.train.toml", "network_dim = 8", "network_dim = 16", "network_dim", "same network_dim"),
    ("stage2.train.toml", '"conv_dim=0"', '"conv_dim=4"', "network_args", "same network_args"),
    ("stage2.train.toml", "1to2_stage1.safetensors", "other.safetensors", "network_weights", "1to2_stage1"),
    ("stage1.train.toml", '"algo=loha"', '"algo=lora"', "network_args", "algo=loha"),
    ("stage1.train.toml", '"lycoris.kohya"', '"lycoris_missing.kohya"', "network_module", "pip install"),
    ("stage1.dataset.toml", 'caption_extension = ".txt"', 'caption_extension = ".caption"',
     "datasets[0].subsets[0].caption_extension", 'caption_extension = ".txt"'),
    ("stage2.dataset.toml", "enable_bucket = true", "enable_bucket = false", "datasets[0].enable_bucket",
     "enable_bucket = true"),
    ("stage2.dataset.toml", "resolution = ", "resolution = 2048", "datasets[0].min_bucket_reso",
     "min_bucket_reso <= resolution"),
    ("stage1.dataset.toml", "bucket_reso_steps = 64", "bucket_reso_steps = 48", "datasets[0].bucket_reso_steps",
     "use 64"),
]


@pytest.mark.parametrize(("name", "old", "new", "key", "fix"), SEMANTIC_CASES, ids=[c[2] for c in SEMANTIC_CASES])
def test_semantic_checks_of_a_run(run_dir: Path, name: str, old: str, new: str, key: str, fix: str) -> None:
    if old.endswith(" = "):
        edit_run(run_dir, name, "general", new)  # whatever value was generated
    else:
        _rewrite(run_dir / name, old, new)
    problems = [p for p in lint_run(run_dir) if p.file == str(run_dir / name)]
    problem = _single(problems, key)
    assert fix in problem.fix, problem.line


def test_buckets_too_narrow_for_composites_are_reported(run_dir: Path) -> None:
    edit_run(run_dir, "stage2.dataset.toml", "general", "resolution = 512")
    edit_run(run_dir, "stage2.dataset.toml", "general", "min_bucket_reso = 512")
    edit_run(run_dir, "stage2.dataset.toml", "general", "max_bucket_reso = 512")
    problem = _single(lint_run(run_dir), "datasets[0].max_bucket_reso")
    assert "cropping" in problem.problem and "raise max_bucket_reso" in problem.fix


def test_empty_subset_folder_is_an_error(run_dir: Path) -> None:
    for image in (run_dir / "composites" / "1_composite").glob("*.png"):
        image.unlink()
    problem = _single(lint_run(run_dir), "datasets[0].subsets[0].image_dir")
    assert "has no images" in problem.problem


def test_check_command_exit_codes_and_output(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(run_dir)]) == 0
    _rewrite(run_dir / "stage1.train.toml", "network_dim = 8", "netwrok_dim = 8")
    assert main(["check", str(run_dir)]) == 4
    out = capsys.readouterr()
    assert f"{run_dir / 'stage1.train.toml'}: network.netwrok_dim: unknown option" in out.out.replace("\n", "")
    assert "problem(s)" in out.err
    assert main(["check", str(run_dir / "stage2.dataset.toml")]) == 0
    (run_dir / "bad.toml").write_text("[general\n")
    assert main(["check", str(run_dir / "bad.toml")]) == 4


def test_single_file_in_an_sdxl_run_is_checked_against_the_sdxl_parser(run_dir: Path) -> None:
    job = json.loads((run_dir / "job.json").read_text())
    job["training"]["preset"] = "sdxl"
    (run_dir / "job.json").write_text(json.dumps(job))
    _rewrite(run_dir / "stage1.train.toml", "[training]\n", "[training]\ncache_text_encoder_outputs = false\n")
    _rewrite(run_dir / "stage1.train.toml", "max_train_epochs = 40", "max_train_epoch = 40")
    assert [p.key for p in lint_file(run_dir / "stage1.train.toml")] == ["training.max_train_epoch"]


def test_single_file_lint_tells_dataset_from_training(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text('[general]\ncache_latents = true\n')
    assert lint_file(path)[0].key == "general.cache_latents"
    path.write_text('[t]\nnetwrok_dim = 1\n')
    assert lint_file(path)[0].key == "t.netwrok_dim"


def test_lycoris_4_on_sd1_is_reported_by_check(monkeypatch) -> None:
    import kohya_1to2.kohya as kohya
    from kohya_1to2.configs.lint import lint_network

    flat = {"network_module": "lycoris.kohya", "network_args": ["algo=loha"], "pretrained_model_name_or_path": "m"}
    monkeypatch.setattr(kohya, "installed_lycoris_version", lambda: "4.1.3")
    problems = lint_network(flat, "stage1.train.toml", "sd1")
    assert [p.key for p in problems] == ["network_module"]
    assert "duplicated lora name" in problems[0].problem and "lycoris-lora==3.4.0" in problems[0].fix
    assert lint_network(flat, "stage1.train.toml", "sdxl") == []
    monkeypatch.setattr(kohya, "installed_lycoris_version", lambda: "3.4.0")
    assert lint_network(flat, "stage1.train.toml", "sd1") == []


# ------------------------------------------------------------------------------------------- start-up corpus
# Settings sd-scripts accepts when it parses the TOML but crashes on (or ignores, or trains nothing with) at
# start-up. Each is an error of `check` here; tests/integration/test_check_corpus.py runs every case through
# the real sd-scripts start-up code and asserts the stated outcome.

STARTUP_CORPUS: list[tuple[str, str, str, str, str, str]] = [
    # (file, section, line, reported key, words of the fix, what sd-scripts does)
    ("stage2.train.toml", "optimizer", 'lr_scheduler = "cosine_with_restart"', "optimizer.lr_scheduler",
     '"cosine_with_restarts"', "crash"),
    ("stage1.train.toml", "optimizer", 'lr_scheduler = "Cosine"', "optimizer.lr_scheduler", '"cosine"', "crash"),
    ("stage1.train.toml", "optimizer", 'lr_scheduler = "reduce_lr_on_plateau"', "optimizer.lr_scheduler",
     "lr_scheduler = ", "crash"),
    ("stage1.train.toml", "optimizer", 'lr_scheduler = "cosine_warmup_with_min_lr"', "optimizer.lr_scheduler",
     "lr_scheduler = ", "crash"),
    ("stage1.train.toml", "optimizer", 'lr_scheduler = "adafactor:0.001"', "optimizer.lr_scheduler",
     "lr_scheduler = ", "crash"),
    ("stage1.train.toml", "optimizer", 'lr_scheduler = "cosine_with_min_lr"', "optimizer.lr_scheduler",
     "lr_scheduler_min_lr_ratio = 0.1", "crash"),
    ("stage1.train.toml", "optimizer", 'lr_scheduler = "piecewise_constant"', "optimizer.lr_scheduler",
     "step_rules=", "crash"),
    ("stage2.train.toml", "optimizer", 'optimizer_type = "AdamW8bitt"', "optimizer.optimizer_type", '"AdamW8bit"',
     "crash"),
    ("stage1.train.toml", "optimizer", 'optimizer_type = "adam"', "optimizer.optimizer_type", '"Adam"', "crash"),
    ("stage1.train.toml", "optimizer", 'optimizer_type = "Adam8bit"', "optimizer.optimizer_type", '"AdamW8bit"',
     "crash"),
    ("stage1.train.toml", "optimizer", 'optimizer_type = "DAdaptAdamm"', "optimizer.optimizer_type",
     '"DAdaptAdam"', "crash"),
    ("stage1.train.toml", "optimizer", 'optimizer_type = "torch.optim.Adamw"', "optimizer.optimizer_type",
     "optimizer_type = ", "crash"),
    ("stage1.train.toml", "optimizer", 'optimizer_type = "no_such_package.Fast"', "optimizer.optimizer_type",
     "optimizer_type = ", "crash"),
    ("stage2.train.toml", "training", "train_batch_size = 0", "training.train_batch_size", "train_batch_size = 1",
     "crash"),
    ("stage1.train.toml", "training", "max_train_epochs = 0", "training.max_train_epochs", "max_train_epochs = 1",
     "nothing"),
    ("stage1.train.toml", "optimizer", "learning_rate = -0.0005", "optimizer.learning_rate", "learning_rate = 0.0001",
     "crash"),
    ("stage1.train.toml", "optimizer", "learning_rate = 0.0", "optimizer.learning_rate", "learning_rate = 0.0001",
     "nothing"),
    ("stage1.train.toml", "training", "keep_tokens = 2", "training.keep_tokens", "change keep_tokens in", "ignored"),
    ("stage1.train.toml", "training", 'caption_extention = ".caption"', "training.caption_extention",
     "change caption_extension in", "ignored"),
    ("stage1.train.toml", "training", "shuffle_caption = false", "training.shuffle_caption",
     "change shuffle_caption in", "ignored"),
    ("stage1.train.toml", "training", 'resolution = "1024"', "training.resolution", "change resolution in",
     "ignored"),
    ("stage1.train.toml", "training", 'resolution = "big"', "training.resolution", "dataset TOML", "crash"),
    ("stage1.train.toml", "training", 'resolution = "512,512,512"', "training.resolution", "dataset TOML", "crash"),
    ("stage1.train.toml", "training", 'dataset_config = "/elsewhere/other.dataset.toml"', "dataset_config",
     "stage1.dataset.toml", "ignored"),
    ("stage1.train.toml", "network", 'network_args = ["conv_dim=0 conv_alpha=16 algo=loha"]', "network.network_args",
     'network_args = ["conv_dim=0", "conv_alpha=16", "algo=loha"]', "crash"),
    ("stage1.train.toml", "network", 'network_args = ["conv_dim=0", "conv_alpha=16", "loha"]', "network.network_args",
     "one key=value per entry", "crash"),
    ("stage1.dataset.toml", "datasets.subsets", "num_repeats = 0", "datasets[0].subsets[0].num_repeats",
     "num_repeats = 1", "nothing"),
    ("stage2.dataset.toml", "general", "flip_aug = true", "datasets[0].subsets[0].flip_aug", "flip_aug = false",
     "flips"),
    ("stage2.train.toml", "training", "flip_aug = true", "datasets[0].subsets[0].flip_aug", "flip_aug = false",
     "flips"),
    ("stage1.train.toml", "model", 'pretrained_model_name_or_path = "/nonexistent/base.safetensors"',
     "pretrained_model_name_or_path", "--base-model", "crash"),
    ("stage1.train.toml", "model", "pretrained_model_name_or_path = {empty_folder}",
     "pretrained_model_name_or_path", "diffusers folder", "crash"),
]


def edit_run(run: Path, file: str, section: str, line: str) -> None:
    """Replace every `key = ...` line of `file` with `line`, or insert it under `[section]` (also used by the
    integration test on its own run directory)."""
    path = run / file
    text = path.read_text(encoding="utf-8")
    line = line.replace("{empty_folder}", json.dumps(str(run / "empty model")))
    (run / "empty model").mkdir(exist_ok=True)
    name = line.split(" = ")[0]
    lines = text.split("\n")
    if any(x.startswith(f"{name} = ") for x in lines):
        text = "\n".join(line if x.startswith(f"{name} = ") else x for x in lines)
    else:
        header = f"[[{section}]]\n" if section.startswith("datasets") else f"[{section}]\n"
        assert header in text, (file, header)
        text = text.replace(header, header + line + "\n", 1)
    path.write_text(text, encoding="utf-8")


@pytest.mark.parametrize(("file", "section", "line", "key", "fix", "outcome"), STARTUP_CORPUS,
                         ids=[f"{c[0]}:{c[2]}" for c in STARTUP_CORPUS])
def test_startup_corpus_is_an_error_with_file_key_and_fix(run_dir: Path, file: str, section: str, line: str,
                                                          key: str, fix: str, outcome: str) -> None:
    edit_run(run_dir, file, section, line)
    problems = [p for p in lint_run(run_dir) if p.severity == "error"]
    matching = [p for p in problems if p.key == key]
    assert matching, f"nothing reported for {key}: {[p.line for p in problems]}"
    problem = matching[0]
    assert fix in problem.fix, problem.line
    assert problem.file.startswith(str(run_dir)), problem.line


def _fix_assignment(fix: str) -> str | None:
    """The `key = value` a fix tells the user to write, if it names one."""
    for lead in ("write one key=value per entry: ", "write a positive value, e.g. ", "write ", "set "):
        if fix.startswith(lead):
            candidate = fix[len(lead):].split(" (")[0]
            return candidate if " = " in candidate else None
    return None


@pytest.mark.parametrize(("file", "section", "line", "key", "fix", "outcome"), STARTUP_CORPUS,
                         ids=[f"{c[0]}:{c[2]}" for c in STARTUP_CORPUS])
def test_the_suggested_fix_itself_passes_check(run_dir: Path, file: str, section: str, line: str, key: str,
                                               fix: str, outcome: str) -> None:
    edit_run(run_dir, file, section, line)
    name = line.split(" = ")[0]
    problem = next(p for p in lint_run(run_dir) if p.severity == "error" and p.key == key)
    assignment = _fix_assignment(problem.fix)
    if problem.fix.startswith("point it at"):  # the user's own model file
        assignment = f"{name} = {json.dumps(str(run_dir.parent / 'models' / 'base.safetensors'))}"
    fixed_file = Path(problem.file).name
    if assignment is None:  # "remove it here ..."
        assert problem.fix.startswith("remove it"), problem.line
        path = run_dir / file
        path.write_text("\n".join(x for x in path.read_text().split("\n") if not x.startswith(f"{name} = ")))
    else:
        if fixed_file != file:
            path = run_dir / file  # a fix in another file also needs the offending line gone (e.g. flip_aug)
            path.write_text("\n".join(x for x in path.read_text().split("\n") if not x.startswith(f"{name} = ")))
        edit_run(run_dir, fixed_file, section if fixed_file == file else "general", assignment)
    left = [p.line for p in lint_run(run_dir) if p.severity == "error" and p.key == key]
    assert left == []


def launch_errors(run_dir: Path) -> list[str]:
    """The lines launch refuses the run for (launch.session.require_checked, as launch calls it); [] if it starts."""
    from rich.console import Console

    from kohya_1to2.errors import CheckError
    from kohya_1to2.launch.session import require_checked

    console = Console(record=True, width=1000, file=io.StringIO())
    try:
        require_checked(run_dir, console=console)
    except CheckError:
        return [line.removeprefix("error: ") for line in console.export_text().splitlines() if line]
    return []


def test_the_stage2_network_rule_ignores_order_and_dropout_in_check_and_launch(run_dir: Path) -> None:
    """Why 6: launch's only rule book is check's (launch.session.require_checked runs lint_run)."""
    _rewrite(run_dir / "stage2.train.toml", '["conv_dim=0", "conv_alpha=16", "algo=loha"]',
             '["algo=loha", "dropout=0.1", "conv_alpha=16", "conv_dim=0"]')
    assert [p.line for p in lint_run(run_dir) if p.key == "network_args"] == []
    assert [line for line in launch_errors(run_dir) if "network_args" in line] == []
    _rewrite(run_dir / "stage2.train.toml", '"conv_alpha=16"', '"conv_alpha=8"')
    [problem] = [p for p in lint_run(run_dir) if p.key == "network_args"]
    assert "conv_alpha" in problem.problem
    assert [line for line in launch_errors(run_dir) if "network_args" in line] == [problem.line]


def test_launch_refuses_what_check_refuses_in_the_stage_chain(run_dir: Path) -> None:
    _rewrite(run_dir / "stage2.train.toml", "1to2_stage1.safetensors", "other.safetensors")
    assert [p.key for p in lint_run(run_dir) if p.file.endswith("stage2.train.toml")] == ["network_weights"]
    assert [line for line in launch_errors(run_dir) if "network_weights" in line] != []


def test_relative_paths_in_a_training_toml_are_errors(run_dir: Path) -> None:
    _rewrite(run_dir / "stage1.train.toml", f'logging_dir = "{run_dir / "logs" / "tensorboard" / "stage1"}"',
             'logging_dir = "logs/tb"')
    [problem] = [p for p in lint_run(run_dir) if p.key == "logging_dir"]
    assert "relative path" in problem.problem and "absolute" in problem.fix


def test_dataset_option_in_the_training_toml_that_the_dataset_toml_lacks_is_a_warning(run_dir: Path) -> None:
    _rewrite(run_dir / "stage1.train.toml", "[training]\n", "[training]\ncolor_aug = true\n")
    [problem] = [p for p in lint_run(run_dir) if p.key == "training.color_aug"]
    assert problem.severity == "warning" and "only where" in problem.problem


def test_network_args_as_one_string_gets_a_fix_of_separate_tokens() -> None:
    """Why 5: the old fix `["conv_dim=0 conv_alpha=16 algo=loha"]` crashed LyCORIS."""
    text = training_variant("network", 'network_args = "conv_dim=0 conv_alpha=16 algo=loha"')
    [problem] = [p for p in lint_training(toml.loads(text), "train_network.py", "t") if p.key == "network.network_args"]
    assert problem.fix == 'write an array, e.g. network_args = ["conv_dim=0", "conv_alpha=16", "algo=loha"]'
    fixed = training_variant("network", problem.fix.split("e.g. ")[1])
    assert lint_training(toml.loads(fixed), "train_network.py", "t") == []


@pytest.mark.parametrize(("value", "ok"), [("AdamW", True), ("adamw8bit", True), ("SGD", True), ("sgd", False),
                                           ("Prodigy", True), ("torch.optim.SGD", True), ("bitsandbytes..x", False),
                                           ("Lion9bit", False), ("", True)])
def test_optimizer_names_as_get_optimizer_resolves_them(value: str, ok: bool) -> None:
    from kohya_1to2.kohya import optimizer_problem

    assert (optimizer_problem(value) is None) is ok


def test_scheduler_names_and_the_adafactor_form() -> None:
    from kohya_1to2.kohya import scheduler_problem

    assert scheduler_problem("cosine_with_restarts", None) is None
    assert scheduler_problem("adafactor:1e-3", "Adafactor") is None
    assert "Adafactor" in str(scheduler_problem("adafactor:1e-3", "AdamW"))
    assert scheduler_problem("adafactor:x", "Adafactor") is not None
    flat = {"lr_scheduler": "nonsense", "lr_scheduler_type": "CosineAnnealingLR"}
    assert lint_training({"o": flat}, "train_network.py", "t") == []  # sd-scripts ignores lr_scheduler then


def test_check_command_refuses_the_issue_cases(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _rewrite(run_dir / "stage2.train.toml", 'lr_scheduler = "cosine"', 'lr_scheduler = "cosine_with_restart"')
    assert main(["check", str(run_dir)]) == 4
    out = capsys.readouterr().out.replace("\n", "")
    assert f"{run_dir / 'stage2.train.toml'}: optimizer.lr_scheduler: 'cosine_with_restart' is not a scheduler" in out


# ---------------------------------------------------------------- issue 19: where a run writes


def _set_line(path: Path, key: str, value: str) -> None:
    import re

    text, count = re.subn(rf"(?m)^{key} = .*$", lambda _: f"{key} = {json.dumps(value)}", path.read_text())
    assert count == 1, key
    path.write_text(text)


@pytest.mark.parametrize(("file", "key", "target"), [
    ("stage1.train.toml", "output_dir", "source character"),
    ("stage1.train.toml", "logging_dir", "source root"),
    ("stage2.train.toml", "sample_prompts", "source caption"),
    ("stage2.train.toml", "output_dir", "source root"),
])
def test_a_written_path_into_the_sources_is_refused_by_check_and_launch(run_dir: Path, file: str, key: str,
                                                                       target: str) -> None:
    from kohya_1to2.rundir import load_job

    root = load_job(run_dir).sources.roots[0]
    value = {"source character": root / "1_alice", "source root": root,
             "source caption": root / "1_alice" / "alice_00.txt"}[target]
    _set_line(run_dir / file, key, str(value))
    [problem] = [p for p in lint_run(run_dir) if p.key == key and p.severity == "error"]
    assert f"inside the source root {root}" in problem.problem and problem.file.endswith(file)
    assert main(["check", str(run_dir)]) == 4
    assert any(f"{key}:" in line for line in launch_errors(run_dir)), "launch (and --dry-run) refuse it too"


def test_regularisation_roots_are_protected_like_sources(run_dir: Path, tmp_path: Path) -> None:
    from kohya_1to2.rundir import load_job

    reg = tmp_path / "reg"
    (reg / "1_person").mkdir(parents=True)
    job = load_job(run_dir)
    (run_dir / "job.json").write_text(job.model_copy(update={"sources": job.sources.model_copy(
        update={"reg": [reg]})}).model_dump_json())
    _set_line(run_dir / "stage1.train.toml", "output_dir", str(reg / "1_person"))
    [problem] = [p for p in lint_run(run_dir) if p.key == "output_dir" and p.severity == "error"]
    assert "inside the regularisation root" in problem.problem


def test_stage_2_writing_into_stage_1_output_is_refused(run_dir: Path) -> None:
    _set_line(run_dir / "stage2.train.toml", "output_dir", str(run_dir / "output" / "stage1"))
    [problem] = [p for p in lint_run(run_dir) if p.key == "output_dir" and p.severity == "error"]
    assert "shares stage 1's output folder" in problem.problem and problem.file.endswith("stage2.train.toml")


def test_a_written_path_outside_the_run_directory_is_only_a_warning(run_dir: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    _set_line(run_dir / "stage1.train.toml", "logging_dir", str(tmp_path / "elsewhere" / "tb"))
    [problem] = [p for p in lint_run(run_dir) if p.key == "logging_dir"]
    assert problem.severity == "warning" and "outside the run directory" in problem.problem
    assert main(["check", str(run_dir)]) == 0


# ------------------------------------------------------------------------------------- prediction type

V_BASE = {"modelspec.prediction_type": "v"}
EPS_BASE = {"modelspec.prediction_type": "epsilon"}


@pytest.mark.parametrize(("metadata", "keys", "flat", "expected"), [
    (V_BASE, (), {}, [("v_parameterization", "set v_parameterization = true and zero_terminal_snr = true")]),
    (EPS_BASE, (), {"v_parameterization": True, "zero_terminal_snr": True},
     [("v_parameterization", "set v_parameterization = false")]),
    (None, ("v_pred", "ztsnr"), {"v_parameterization": True}, [("zero_terminal_snr", "zero_terminal_snr = true")]),
    (None, (), {"zero_terminal_snr": True}, [("zero_terminal_snr", "set v_parameterization = true")]),
    (V_BASE, (), {"v_parameterization": True, "zero_terminal_snr": True}, []),
    (EPS_BASE, (), {}, []),
    ({}, (), {"v_parameterization": True}, []),  # the base says nothing: nothing to compare
], ids=["v-base-eps-toml", "eps-base-v-toml", "ztsnr-base-without-ztsnr", "ztsnr-without-v", "v-match",
        "eps-match", "silent-base"])
def test_prediction_type_is_checked_against_the_base_model(
        tmp_path: Path, metadata: dict[str, str] | None, keys: tuple[str, ...], flat: dict[str, object],
        expected: list[tuple[str, str]]) -> None:
    base = write_safetensors_header(tmp_path / "base.safetensors", keys, metadata)
    problems = lint_prediction({"pretrained_model_name_or_path": str(base), **flat}, "t.toml")
    assert [(p.key, p.severity) for p in problems] == [(key, "warning") for key, _ in expected]
    assert all(fix in p.fix for p, (_, fix) in zip(problems, expected, strict=True))


def test_check_warns_of_a_v_pred_base_trained_as_epsilon_in_both_stages(
        run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = Path(json.loads((run_dir / "job.json").read_text())["training"]["base_model"])
    write_safetensors_header(base, ("v_pred", "ztsnr"))
    assert main(["check", str(run_dir)]) == 0  # a warning: the user may know better
    out = capsys.readouterr().out.replace("\n", "")
    for stage in (1, 2):
        assert f"warning: {run_dir / f'stage{stage}.train.toml'}: v_parameterization: base model" in out
    assert "carries a 'v_pred' key" in out and "--preset noobai-vpred" in out


def test_plan_line_shows_both_sides() -> None:
    assert prediction_summary({"v_parameterization": True, "zero_terminal_snr": True,
                               "pretrained_model_name_or_path": "/m/noobai-vpred-1.0.safetensors"}) == (
        "trains v-prediction with zero terminal SNR; base model: v-prediction (its name "
        "'noobai-vpred-1.0.safetensors' says v-pred)")
    assert prediction_summary({}).startswith("trains epsilon (noise) prediction; base model: not set")
