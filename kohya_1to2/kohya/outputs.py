"""Where sd-scripts writes a stage's outputs: final and per-epoch networks, samples, logs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def final_weights_path(output_dir: str | Path, output_name: str | None, save_model_as: str | None) -> Path:
    """Where sd-scripts writes a stage's final network (`<output_dir>/<output_name>.<ext>`, default "last")."""
    return Path(output_dir) / f"{output_name or 'last'}.{save_model_as or 'safetensors'}"


def final_weights_of(flat: Mapping[str, Any]) -> Path | None:
    """The final weights file named by a flattened training config, or None without an output_dir."""
    output_dir = flat.get("output_dir")
    if not output_dir:
        return None
    return final_weights_path(str(output_dir), flat.get("output_name"), flat.get("save_model_as"))


def network_output(flat: Mapping[str, Any]) -> tuple[Path, str, str]:
    """(output_dir, output_name, extension) of a flattened training config, with sd-scripts' defaults."""
    return (Path(str(flat.get("output_dir", ""))), str(flat.get("output_name") or "last"),
            str(flat.get("save_model_as") or "safetensors"))


EPOCH_FILE_NAME = "{name}-{epoch:06d}.{ext}"
"""A network saved at the end of an epoch (train_util.EPOCH_FILE_NAME); the last epoch is saved only under the
final name, `<output_name>.<ext>` (train_network.py:1694 saves epochs < num_train_epochs)."""

EPOCH_METADATA_KEY = "ss_epoch"
"""safetensors metadata of every saved network: the epoch it was saved in (train_network.py:1303, 1405)."""

SAMPLE_IMAGE = re.compile(r"^(?:(?P<name>.+)_)?e(?P<epoch>\d{6})_(?P<index>\d{2})_\d{14}(?:_\d+)?\.png$")
"""Training samples: `<output_name>_e<epoch:06d>_<i:02d>_<YYYYmmddHHMMSS>[_<seed>].png` in <output_dir>/sample
(train_util.py:6576)."""

TENSORBOARD_SUBFOLDER = "network_train"
"""TensorBoard events of a launch land in <logging_dir>/<timestamp>/network_train/ (train_network's tracker)."""


STATE_FOLDER_SUFFIX = "-state"
"""save_state writes `<output_name>[-<epoch or step>]-state/` beside the network (train_util.get_*_state_name)."""

TRAIN_STATE_FILE = "train_state.json"
"""Written into every state folder (train_util.save_and_remove_state_*); accelerate writes random_states_*.pkl
last, so a folder without them was cut off mid-save."""


def saved_state_dirs(folder: Path, output_name: str | None) -> list[Path]:
    """The complete state folders sd-scripts' save_state wrote for `output_name` in `folder`."""
    name = output_name or "last"
    return [p for p in folder.glob(f"{name}*{STATE_FOLDER_SUFFIX}") if p.is_dir() and (p / TRAIN_STATE_FILE).is_file()
            and any(p.glob("random_states_*.pkl"))]
