"""The pinned release, its scripts, the packages it needs, and what its start-up accepts (optimizers, schedulers,
base models): facts `check`, `doctor` and `setup` judge a run by."""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from kohya_1to2.models import Family

SD_SCRIPTS_TAG = "v0.10.1"
SD_SCRIPTS_COMMIT = "ae72efb92babe89ff8e70f057e42db68440e8d61"
SD_SCRIPTS_URL = "https://github.com/kohya-ss/sd-scripts"
ARCHIVE_TOP_FOLDER = "sd-scripts"
"""An archive of the pinned tree has one top folder with this name (it has no .git)."""

PIN_FILE_SHA256: Mapping[str, str] = {
    # An archive carries no .git, so the pin is verified by the content of the files we depend on.
    "train_network.py": "802e0a57a19ed8c89b989f6af404825b34a334f3ab6178db0873b74d7d7ab68c",
    "sdxl_train_network.py": "6f018d2b63734fc50bd7588f69f65e1febfed8e90071193631da2eabf82f8641",
    "library/train_util.py": "a9b23be6e6e1d2724248fa4110051a1d8be740cf8ff513421987ea203968eef0",
    "library/config_util.py": "e137c8dd7ddc5fe50b5b28d165993015b91ecd00039e4ddbd17062407c04804d",
    "setup.py": "8c595f8a3baba56d76c32473a33e444defdfd71a591fe98fd7f8a69f27867fa0",
    "requirements.txt": "5babf2adf054825a610d183ebb5a7657d0a492c164fadf0e1f08c48ec253a53e",
}

TRAINING_SCRIPTS: Mapping[str, str] = {
    "sd1": "train_network.py",
    "sd2": "train_network.py",
    "sdxl": "sdxl_train_network.py",
}

REQUIREMENTS_FILE = "requirements.txt"
"""The pinned tree's pip requirements (its last line, `-e .`, installs sd-scripts' own `library` package)."""

ARCHIVE_NAME = f"sd-scripts-{SD_SCRIPTS_TAG}.tar.gz"
"""The file name we suggest for an offline copy of the pinned tree."""

PARSER_SNAPSHOT = Path(__file__).resolve().parents[1] / "data" / f"kohya_{SD_SCRIPTS_TAG}.json"
"""The argparse snapshot of the pinned scripts (tools/snapshot_kohya_parser.py), so lint never imports torch."""

DEFAULT_MAX_TRAIN_STEPS = 1600
"""train_util's `--max_train_steps` default: used when neither it nor max_train_epochs is set."""


CUDA_ONLY_REQUIREMENTS = ("bitsandbytes",)
"""Requirements that only install (and work) with CUDA: left out on a CPU machine."""


def requirement_lines(requirements_text: str) -> list[str]:
    """sd-scripts' requirements.txt without comments and without its `-e .` (installed --no-deps instead)."""
    lines = []
    for raw in requirements_text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-e"):
            continue
        lines.append(line)
    return lines


def install_requirements(tree: Path, *, cuda: bool) -> list[str]:
    """The pinned tree's requirements as pip arguments, CUDA-only ones left out without CUDA."""
    requirements = requirement_lines((tree / REQUIREMENTS_FILE).read_text(encoding="utf-8"))
    if not cuda:
        requirements = [r for r in requirements if not r.lower().startswith(CUDA_ONLY_REQUIREMENTS)]
    return requirements


BUCKET_STEP_UNIT: Mapping[str, int] = {"sd1": 64, "sd2": 64, "sdxl": 32}
"""bucket_reso_steps must be a multiple of this: train_network.py calls verify_bucket_reso_steps(64),
sdxl_train_network.py verify_bucket_reso_steps(32)."""

NON_STRUCTURAL_NETWORK_ARGS = frozenset({"dropout", "rank_dropout", "module_dropout", "train_norm"})
"""network_args that do not change which modules/weights exist (everything else must match across stages)."""


def is_sd_scripts_tree(path: Path) -> bool:
    """Whether `path` holds an sd-scripts tree (its SD1 training script), pinned or not."""
    return (path / TRAINING_SCRIPTS["sd1"]).is_file()


LYCORIS_PIN = "lycoris-lora==3.4.0"
"""4.0.0-4.1.3 crash SD1 under sd-scripts (`duplicated lora name: lora_unet_time_embedding_linear_1`)."""

TORCH_PAIR = ("torch==2.14.1", "torchvision==0.29.1")
"""A matching pair; a mismatch fails at the first model import with `operator torchvision::nms does not exist`."""


def training_script(family: Family) -> str:
    """The sd-scripts entry point for a model family."""
    return TRAINING_SCRIPTS[family]


def installed_lycoris_version() -> str | None:
    """lycoris-lora's version from package metadata (no import)."""
    try:
        return metadata.version("lycoris-lora")
    except metadata.PackageNotFoundError:
        return None


def lycoris_sd1_problem(lycoris_version: str | None, family: str | None, network_args: list[str] | None = None,
                        ) -> str | None:
    """One-line explanation when this lycoris-lora cannot train this family, else None."""
    if not lycoris_version or family not in {"sd1", "sd2"}:
        return None
    major = lycoris_version.split(".", 1)[0]
    if not major.isdigit() or int(major) < 4:
        return None
    if any(str(arg).startswith("preset=") for arg in network_args or []):
        return None  # a custom preset can avoid the duplicated time-embedding target
    return (
        f"lycoris-lora {lycoris_version} crashes on SD1/SD2 under sd-scripts "
        "('duplicated lora name: lora_unet_time_embedding_linear_1'); "
        f"fix: pip install '{LYCORIS_PIN}' (or run `python -m kohya_1to2 setup`)"
    )


# ------------------------------------------------------------------ start-up facts (verified by
# tests/integration/test_check_corpus.py against the real get_scheduler_fix / get_optimizer / config_util)

LR_SCHEDULERS: tuple[str, ...] = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt",
    "cosine_with_min_lr", "warmup_stable_decay", "piecewise_constant",
)
"""lr_scheduler names `train_util.get_scheduler_fix` builds: transformers' SchedulerType (pinned transformers)
plus diffusers' piecewise_constant (two of them need a setting: SCHEDULER_NEEDS). `reduce_lr_on_plateau` and
`cosine_warmup_with_min_lr` are SchedulerType values too, but sd-scripts passes them arguments they reject."""

ADAFACTOR_SCHEDULER_PREFIX = "adafactor:"
"""`adafactor:<initial lr>` is sd-scripts' own scheduler form; it needs optimizer_type = "Adafactor"."""

NAMED_OPTIMIZERS: tuple[str, ...] = (
    "AdamW", "AdamW8bit", "SGDNesterov8bit", "Lion8bit", "PagedAdamW8bit", "PagedLion8bit", "PagedAdamW",
    "PagedAdamW32bit", "Lion", "SGDNesterov", "DAdaptation", "DAdaptAdamPreprint", "DAdaptAdaGrad", "DAdaptAdam",
    "DAdaptAdan", "DAdaptAdanIP", "DAdaptLion", "DAdaptSGD", "Prodigy", "Adafactor", "RAdamScheduleFree",
    "AdamWScheduleFree", "SGDScheduleFree",
)
"""optimizer_type names `train_util.get_optimizer` knows itself; it compares them case-insensitively."""

TORCH_OPTIMIZERS: tuple[str, ...] = (
    "ASGD", "Adadelta", "Adagrad", "Adam", "Adamax", "LBFGS", "Muon", "NAdam", "RAdam", "RMSprop", "Rprop", "SGD",
    "SparseAdam",
)
"""Other names get_optimizer looks up in torch.optim, case-sensitively (`getattr(torch.optim, name)`)."""

INTERCEPTED_OPTIMIZER_SUFFIXES = ("8bit", "schedulefree")
"""A name ending so (any case) is taken by get_optimizer's own branches: unknown ones never reach torch.optim."""

BNB_OPTIMIZER_FALLBACK: Mapping[str, str] = {
    "adamw8bit": "AdamW",
    "pagedadamw8bit": "AdamW",
    "pagedadamw32bit": "AdamW",
    "lion8bit": "Lion",
    "pagedlion8bit": "Lion",
    "sgdnesterov8bit": "SGDNesterov",
}
"""bitsandbytes optimizers (lower-cased, as get_optimizer compares) and the plain one sd-scripts offers without it."""

SCHEDULEFREE_SUFFIX = "schedulefree"
"""With a schedule-free optimizer sd-scripts uses a dummy scheduler: lr_scheduler is then ignored."""

MODEL_FILE_SUFFIXES = (".safetensors", ".ckpt")
"""A single-file base model sd-scripts loads (anything else is read as a diffusers folder or a Hub id)."""


def optimizer_problem(name: str) -> str | None:
    """Why get_optimizer cannot build `name` (None when it can, as far as names go).

    A `module.Class` name is importable or not only on the machine that trains; only its form is judged here.
    """
    if not name:
        return None  # sd-scripts' default, AdamW
    lower = name.lower()
    if lower in {n.lower() for n in NAMED_OPTIMIZERS}:
        return None
    if "." in name:
        module, _, cls = name.rpartition(".")
        if not module or not cls or not all(part.isidentifier() for part in name.split(".")):
            return f"{name!r} is not a module.Class name"
        if module == "torch.optim" and cls not in TORCH_OPTIMIZERS:
            return f"torch.optim has no optimizer {cls!r}"
        return None
    if lower.endswith(INTERCEPTED_OPTIMIZER_SUFFIXES) or lower.startswith("dadapt"):
        return f"{name!r} is not one of sd-scripts' optimizers"
    if name in TORCH_OPTIMIZERS:
        return None
    return f"{name!r} is neither one of sd-scripts' optimizers nor a torch.optim class"


SCHEDULER_NEEDS: Mapping[str, tuple[str | None, str]] = {
    "cosine_with_min_lr": ("lr_scheduler_min_lr_ratio", "min_lr"),
    "piecewise_constant": (None, "step_rules"),
}
"""Schedulers that crash without a setting: (training option, or key=value in lr_scheduler_args)."""


def scheduler_problem(name: str, optimizer_type: str | None, settings: Mapping[str, Any] | None = None) -> str | None:
    """Why get_scheduler_fix cannot build lr_scheduler `name` with these (flattened) settings, else None."""
    settings = settings or {}
    if name in SCHEDULER_NEEDS:
        option, arg = SCHEDULER_NEEDS[name]
        given = [str(a).split("=", 1)[0] for a in settings.get("lr_scheduler_args") or []]
        if (option is None or settings.get(option) is None) and arg not in given:
            wanted = f"{option} or " if option else ""
            return f"{name!r} needs {wanted}lr_scheduler_args = [\"{arg}=...\"]"
        return None
    if name in LR_SCHEDULERS:
        return None
    if name.startswith(ADAFACTOR_SCHEDULER_PREFIX):
        try:
            float(name[len(ADAFACTOR_SCHEDULER_PREFIX):])
        except ValueError:
            return f"{name!r}: the adafactor scheduler is written adafactor:<initial learning rate>"
        if (optimizer_type or "").lower() != "adafactor":
            return f"{name!r} needs optimizer_type = \"Adafactor\""
        return None
    return f"{name!r} is not a scheduler sd-scripts can build"


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def base_model_problem(path: Path | str) -> str | None:
    """Why sd-scripts cannot load this base model, else None: it must be an existing .safetensors/.ckpt file,
    a diffusers folder (model_index.json or unet/), or a relative `org/name` Hugging Face id."""
    text = str(path)
    if not text:
        return "no base model set"
    model = Path(text).expanduser()
    if not model.exists():
        if not model.is_absolute() and _HUB_ID.match(text) and model.suffix.lower() not in MODEL_FILE_SUFFIXES:
            return None  # a Hub id (org/name): diffusers downloads it
        return f"base model {text} does not exist"
    if model.is_file():
        if model.suffix.lower() not in MODEL_FILE_SUFFIXES:
            return f"base model {text} is neither a .safetensors nor a .ckpt file"
        return None
    if (model / "model_index.json").is_file() or (model / "unet").is_dir():
        return None
    return f"base model folder {text} is not a diffusers model (no model_index.json or unet/)"

TRAINING_PATH_KEYS = ("pretrained_model_name_or_path", "tokenizer_cache_dir", "network_weights", "output_dir",
                      "sample_prompts", "dataset_config", "vae", "logging_dir", "resume")
"""Training keys holding paths: sd-scripts runs with cwd = its own root, so relative ones resolve there."""

WRITTEN_PATH_KEYS = ("output_dir", "logging_dir", "sample_prompts")
"""Training keys naming where a run writes: networks, `sample/` and `*-state/` folders go under output_dir,
TensorBoard events under logging_dir, and `launch` rewrites the sample_prompts file each epoch (pair rounds)."""
