"""How config_util reads a training TOML and a dataset TOML: the flattening, and the dataset-scope merge."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def flatten_training_config(document: Mapping[str, Any]) -> dict[str, Any]:
    """Flatten a training TOML exactly as `read_config_from_file` does: one level of tables merged, last wins."""
    flat: dict[str, Any] = {}
    for key, value in document.items():
        if isinstance(value, Mapping):
            flat.update(value)
        else:
            flat[key] = value
    return flat


TRAINING_TO_DATASET_KEYS: Mapping[str, str] = {"train_batch_size": "batch_size", "dataset_repeats": "num_repeats",
                                               "caption_extention": "caption_extension"}
"""Training options that reach the dataset blueprint under another name (config_util's
ARGPARSE_OPTNAME_TO_CONFIG_OPTNAME, and prepare_dataset_args' old spelling caption_extention)."""


SUBSET_DEFAULTS: Mapping[str, Any] = {"caption_extension": ".caption", "num_repeats": 1}
"""config_util's BaseSubsetParams defaults that matter to us (a generated TOML sets both explicitly)."""


def resolved_subsets(dataset_document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each subset's values as config_util resolves them: defaults, then [general], [[datasets]], the subset."""
    general = dataset_document.get("general") or {}
    resolved: list[dict[str, Any]] = []
    for dataset in dataset_document.get("datasets") or []:
        scope = {**SUBSET_DEFAULTS, **general, **{k: v for k, v in dataset.items() if k != "subsets"}}
        resolved += [{**scope, **subset} for subset in dataset.get("subsets") or []]
    return resolved
