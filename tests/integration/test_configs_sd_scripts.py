"""The generated TOMLs as the REAL pinned sd-scripts reads them, and the lint snapshot against a fresh dump.

Runs sd-scripts in a subprocess (cwd = its root, a fake argv), because importing train_network configures
logging and needs torch. sd-scripts: vendor/sd-scripts, or $KOHYA_1TO2_SD_SCRIPTS.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import toml
from sd_scripts_child import REPO, SD_SCRIPTS, requires_sd_scripts, run_in_sd_scripts

from kohya_1to2.configs.generate import render_run_files
from kohya_1to2.configs.lint import SNAPSHOT
from kohya_1to2.configs.render import STAGE_SPECIFIC_KEYS
from kohya_1to2.models import Character, Job, SourceImage, SourceSettings, TrainingSettings

pytestmark = requires_sd_scripts()

READER = r"""
import json, sys
request = json.load(sys.stdin)
sys.path.insert(0, ".")
import train_network, sdxl_train_network
from library import config_util, train_util

def plain(value):
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)

out = {"training": [], "datasets": [], "rejected": []}
for script, path in request["training"]:
    module = sdxl_train_network if script.startswith("sdxl") else train_network
    parser = module.setup_parser()
    sys.argv = [script, "--config_file", path]
    args = train_util.read_config_from_file(parser.parse_args(), parser)
    out["training"].append({k: [type(v).__name__, plain(v)] for k, v in vars(args).items()})
    user = config_util.load_user_config(args.dataset_config)
    sanitizer = config_util.ConfigSanitizer(True, True, False, True)
    blueprint = config_util.BlueprintGenerator(sanitizer).generate(user, args)
    out["datasets"].append([
        {"dataset": {k: plain(v) for k, v in vars(d.params).items()},
         "subsets": [{k: plain(v) for k, v in vars(s.params).items()} for s in d.subsets]}
        for d in blueprint.dataset_group.datasets
    ])
for path in request["bad_datasets"]:
    try:
        config_util.ConfigSanitizer(True, True, False, True).sanitize_user_config(config_util.load_user_config(path))
        out["rejected"].append(None)
    except Exception as exc:
        out["rejected"].append(type(exc).__name__)
print("@@" + json.dumps(out))
"""


def _read_with_sd_scripts(request: dict[str, Any]) -> dict[str, Any]:
    return run_in_sd_scripts(READER, request)


def _characters(root: Path) -> list[Character]:
    out = []
    for name in ("alice", "bob"):
        folder = root / f"3_{name}"
        images = (SourceImage(path=folder / "a.png", character=name, tags=(name,)),)
        out.append(Character(name=name, trigger=name, repeats=3, folder=folder, images=images))
    return out


def _write_run(tmp_path: Path, preset: str) -> Path:
    run = tmp_path / f"run {preset} é'q"
    job = Job(out=run, sources=SourceSettings(roots=[tmp_path / "src"]),
              training=TrainingSettings(preset=preset, base_model=str(tmp_path / "models" / "base model")))
    files = render_run_files(job, _characters(tmp_path / "src dir"), composite_dir=run / "composites" / "2_composite",
                             composite_repeats=2, composite_count=3, run_dir=run)
    run.mkdir(parents=True)
    for name, text in files.items():
        (run / name).write_text(text, encoding="utf-8")
    return run


def test_snapshot_matches_a_fresh_dump_of_the_real_parser() -> None:
    env = {**os.environ, "KOHYA_1TO2_SD_SCRIPTS": str(SD_SCRIPTS)}
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "snapshot_kohya_parser.py"), "--stdout"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads(proc.stdout) == json.loads(SNAPSHOT.read_text(encoding="utf-8")), (
        "the committed snapshot is stale: run tools/snapshot_kohya_parser.py")


def test_generated_tomls_read_by_sd_scripts_carry_the_intended_values(tmp_path: Path) -> None:
    runs = {preset: _write_run(tmp_path, preset) for preset in ("seed", "sdxl", "smoke", "illustrious", "noobai-vpred")}
    scripts = {"seed": "train_network.py", "sdxl": "sdxl_train_network.py", "smoke": "train_network.py",
               "illustrious": "sdxl_train_network.py", "noobai-vpred": "sdxl_train_network.py"}
    request = {"training": [[scripts[p], str(run / f"stage{s}.train.toml")] for p, run in runs.items()
                            for s in (1, 2)], "bad_datasets": []}
    result = _read_with_sd_scripts(request)
    pairs = zip(result["training"], result["datasets"], strict=True)
    by_file = dict(zip([t[1] for t in request["training"]], pairs, strict=True))

    seed1, seed1_data = by_file[str(runs["seed"] / "stage1.train.toml")]
    seed2, seed2_data = by_file[str(runs["seed"] / "stage2.train.toml")]
    assert seed1["network_args"] == ["list", ["conv_dim=0", "conv_alpha=16", "algo=loha"]]
    assert seed1["clip_skip"] == ["int", 2] and seed1["max_token_length"] == ["int", 225]
    assert seed1["network_alpha"] == ["float", 1.0] and seed1["learning_rate"] == ["float", 0.0005]
    assert seed1["train_batch_size"] == ["int", 4] and seed2["train_batch_size"] == ["int", 2]
    assert seed1["xformers"] == ["bool", True] and seed1["mixed_precision"] == ["str", "fp16"]
    assert seed1["resolution"] == ["NoneType", None], "resolution lives in the dataset TOML"
    base = str(tmp_path / "models" / "base model")
    assert seed1["pretrained_model_name_or_path"] == ["str", base]
    assert seed2["network_weights"] == ["str", str(runs["seed"] / "output" / "stage1" / "1to2_stage1.safetensors")]
    assert seed2["output_dir"] == ["str", str(runs["seed"] / "output" / "stage2")]
    assert seed2["output_name"] == ["str", "1to2"]
    same = {k for k in seed1 if seed1[k] == seed2[k]}
    # "all else identical", read back through sd-scripts' own parser (config_file is the file itself)
    assert set(seed1) - same <= STAGE_SPECIFIC_KEYS | {"config_file"}

    [stage1] = seed1_data
    assert [Path(s["image_dir"]).name for s in stage1["subsets"]] == ["3_alice", "3_bob"]
    assert all(s["num_repeats"] == 3 and s["keep_tokens"] == 1 and s["caption_extension"] == ".txt"
               and s["shuffle_caption"] is True for s in stage1["subsets"])
    assert stage1["dataset"]["resolution"] == [512, 512] and stage1["dataset"]["enable_bucket"] is True
    [stage2] = seed2_data
    assert stage2["subsets"][0]["image_dir"] == str(runs["seed"] / "composites" / "2_composite")
    assert stage2["subsets"][0]["num_repeats"] == 2 and stage2["dataset"]["batch_size"] == 2

    sdxl1, sdxl_data = by_file[str(runs["sdxl"] / "stage2.train.toml")]
    # stage 2's resolution and buckets are chosen for the composites (--stage2-scale); sd-scripts reads them as written
    chosen = toml.load(runs["sdxl"] / "stage2.dataset.toml")["general"]
    assert sdxl_data[0]["dataset"]["resolution"] == [chosen["resolution"]] * 2 != [1024, 1024]
    assert sdxl_data[0]["dataset"]["max_bucket_reso"] == chosen["max_bucket_reso"]
    assert sdxl1["no_half_vae"] == ["bool", True]

    smoke1, _ = by_file[str(runs["smoke"] / "stage1.train.toml")]
    assert smoke1["max_train_steps"] == ["int", 2] and smoke1["max_train_epochs"] == ["NoneType", None]
    assert smoke1["tokenizer_cache_dir"] == ["str", str(Path(base) / "tokenizer_cache")]
    assert smoke1["optimizer_type"] == ["str", "AdamW"] and smoke1["sdpa"] == ["bool", True]

    for preset, vpred, sampler in (("illustrious", False, "k_euler_a"), ("noobai-vpred", True, "euler")):
        for stage in (1, 2):
            args, _ = by_file[str(runs[preset] / f"stage{stage}.train.toml")]
            assert args["v_parameterization"] == ["bool", vpred], (preset, stage)
            assert args["zero_terminal_snr"] == ["bool", vpred], (preset, stage)
            assert args["sample_sampler"] == ["str", sampler] and args["no_half_vae"] == ["bool", True]


def test_dataset_mistakes_the_lint_reports_are_really_rejected_by_sd_scripts(tmp_path: Path) -> None:
    """The lint's dataset corpus, fed to sd-scripts' own sanitizer: each one fails there (cryptically)."""
    spec = importlib.util.spec_from_file_location("corpus", REPO / "tests" / "test_lint.py")
    assert spec and spec.loader
    corpus = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(corpus)
    variants = [corpus.dataset_variant(section, line) for section, line, _, _ in corpus.DATASET_CORPUS]
    paths = []
    for i, text in enumerate(variants):
        path = tmp_path / f"bad{i}.toml"
        path.write_text(text, encoding="utf-8")
        toml.loads(text)
        paths.append(str(path))
    result = _read_with_sd_scripts({"training": [], "bad_datasets": paths})
    assert all(r == "MultipleInvalid" for r in result["rejected"]), result["rejected"]


BUCKETS = r"""
import json, sys
sys.path.insert(0, ".")
from library.train_util import BucketManager
request = json.load(sys.stdin)
out = []
for (res, low, high, steps), sizes in request:
    manager = BucketManager(False, (res, res), low, high, steps)
    manager.make_buckets()
    out.append([[list(manager.select_bucket(w, h)[0]), list(manager.select_bucket(w, h)[1])] for w, h in sizes])
print("@@" + json.dumps(out))
"""


def test_bucket_preview_matches_sd_scripts_bucket_manager() -> None:
    from kohya_1to2.configs.buckets import BucketSettings, buckets_for, select_bucket

    settings = [(512, 256, 1024, 64), (1024, 512, 1536, 64), (256, 128, 512, 64), (128, 64, 1024, 64),
                (768, 256, 1024, 64), (1024, 256, 2048, 32)]
    sizes = [(1024, 512), (2048, 1024), (192, 128), (96, 128), (1500, 600), (640, 480), (512, 512), (300, 900)]
    request = [[s, sizes] for s in settings]
    real = run_in_sd_scripts(BUCKETS, request)
    for (res, low, high, steps), results in zip(settings, real, strict=True):
        resos = buckets_for(BucketSettings(resolution=(res, res), min_bucket_reso=low, max_bucket_reso=high,
                                           bucket_reso_steps=steps))
        ours = [select_bucket(size, resos) for size in sizes]
        assert [list(o[0]) for o in ours] == [r[0] for r in results], f"resolution {res}, range {low}..{high}"
        real_crops = [1 - (b[0] * b[1]) / (r[0] * r[1]) for b, r in results]
        assert [round(o[1], 6) for o in ours] == [round(max(0.0, c), 6) for c in real_crops]


SILENT = r"""
import json, sys
sys.path.insert(0, ".")
import train_network
from library import train_util
out = []
for path in json.load(sys.stdin):
    parser = train_network.setup_parser()
    sys.argv = ["train_network.py", "--config_file", path]
    try:
        train_util.read_config_from_file(parser.parse_args(), parser)
        out.append("accepted")
    except BaseException as exc:
        out.append(type(exc).__name__)
print("@@" + json.dumps(out))
"""


def test_training_mistakes_the_lint_reports_pass_sd_scripts_silently(tmp_path: Path) -> None:
    """Why the lint exists: sd-scripts' own config reader accepts every case of the training corpus."""
    spec = importlib.util.spec_from_file_location("corpus", REPO / "tests" / "test_lint.py")
    assert spec and spec.loader
    corpus = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(corpus)
    paths = []
    for i, (section, line, _, _) in enumerate(corpus.TRAINING_CORPUS):
        path = tmp_path / f"train{i}.toml"
        path.write_text(corpus.training_variant(section, line), encoding="utf-8")
        paths.append(str(path))
    results = run_in_sd_scripts(SILENT, paths)
    assert results == ["accepted"] * len(paths)
