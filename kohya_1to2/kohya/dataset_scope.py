"""How config_util reads a training TOML and a dataset TOML: the flattening, and the dataset-scope merge."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def table_of_key(document: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    """The table holding `key` as read_config_from_file sees it (flattened one level: the last occurrence wins),
    so an edit lands where sd-scripts reads it."""
    found: Mapping[str, Any] | None = document if key in document and not isinstance(document[key], Mapping) \
        else None
    for value in document.values():
        if isinstance(value, Mapping) and key in value:
            found = value
    return found


TRAINING_TO_DATASET_KEYS: Mapping[str, str] = {"train_batch_size": "batch_size", "dataset_repeats": "num_repeats",
                                               "caption_extention": "caption_extension"}
"""Training options that reach the dataset blueprint under another name (config_util's
ARGPARSE_OPTNAME_TO_CONFIG_OPTNAME, and prepare_dataset_args' old spelling caption_extention)."""


SUBSET_DEFAULTS: Mapping[str, Any] = {"caption_extension": ".caption", "num_repeats": 1}
"""config_util's BaseSubsetParams defaults that matter to us (a generated TOML sets both explicitly)."""


def general_scope(dataset_document: Mapping[str, Any]) -> dict[str, Any]:
    """The [general] table (empty when missing or not a table)."""
    general = dataset_document.get("general")
    return dict(general) if isinstance(general, Mapping) else {}


def dataset_scopes(dataset_document: Mapping[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """(index, values) of each [[datasets]] table as config_util merges it: [general], then the dataset's own
    keys (its subsets left out). Entries that are not tables are skipped: the schema check reports them."""
    general = general_scope(dataset_document)
    return [(i, {**general, **{k: v for k, v in dataset.items() if k != "subsets"}})
            for i, dataset in enumerate(dataset_document.get("datasets") or []) if isinstance(dataset, Mapping)]


def subset_scopes(dataset_document: Mapping[str, Any]) -> list[tuple[int, int, dict[str, Any]]]:
    """(dataset index, subset index, values) of each subset: [general], then [[datasets]], then the subset."""
    datasets = dataset_document.get("datasets") or []
    return [(i, j, {**scope, **subset}) for i, scope in dataset_scopes(dataset_document)
            for j, subset in enumerate(datasets[i].get("subsets") or []) if isinstance(subset, Mapping)]


def resolved_subsets(dataset_document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each subset's values as config_util resolves them: defaults, then [general], [[datasets]], the subset."""
    return [{**SUBSET_DEFAULTS, **values} for _, _, values in subset_scopes(dataset_document)]


def reg_repeats(train_samples: int, reg_repeats_per_image: Sequence[int]) -> list[int]:
    """How often each regularisation image is seen per epoch, as DreamBoothDataset balances them: reg images
    (subsets in order, each image once with its repeats) are registered until they reach the number of training
    samples, then each gets one more repeat in turn until they do; the rest are not used (0). All 0
    without training samples."""
    counts = [0] * len(reg_repeats_per_image)
    if not reg_repeats_per_image:
        return counts
    seen, first_loop = 0, True
    while seen < train_samples:
        for index, repeats in enumerate(reg_repeats_per_image):
            if first_loop:
                counts[index] = repeats
                seen += repeats
            else:
                counts[index] += 1
                seen += 1
            if seen >= train_samples:
                break
        first_loop = False
    return counts
