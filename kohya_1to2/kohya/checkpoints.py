"""What a base model says it predicts (noise or v), read from its header or folder without torch.

A v-prediction model trained as epsilon (or the reverse) trains without any error and gives noise or washed-out
samples, so `check` compares this with the training TOML. Evidence, strongest first:
- a `.safetensors` header's `modelspec.prediction_type` ("v" or "epsilon": the SAI model spec, which sd-scripts
  itself writes, library/sai_model_spec.py PRED_TYPE_V / PRED_TYPE_EPSILON);
- a `v_pred` tensor key (NoobAI-XL v-pred and its merges carry empty `v_pred` and `ztsnr` tensors; ComfyUI's
  model detection reads the same keys);
- a diffusers folder's `scheduler/scheduler_config.json` (`prediction_type`, `rescale_betas_zero_snr`);
- the file or folder name (`vpred`, `v-pred`, `v_pred`, `v-prediction`).
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

PredictionKind = Literal["v", "epsilon"]

MODELSPEC_PREDICTION = "modelspec.prediction_type"
MODELSPEC_VALUES: dict[str, PredictionKind] = {"v": "v", "epsilon": "epsilon"}
V_PRED_KEY = "v_pred"
ZTSNR_KEY = "ztsnr"
DIFFUSERS_SCHEDULER = Path("scheduler") / "scheduler_config.json"
DIFFUSERS_VALUES: dict[str, PredictionKind] = {"v_prediction": "v", "epsilon": "epsilon"}
V_PRED_NAME = re.compile(r"v[-_ ]?pred", re.IGNORECASE)

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""A safetensors header is JSON of a few MB at most; a larger length field means this is not one."""


class Prediction(BaseModel):
    """A base model's prediction type as far as its files say, and what said so (for the message)."""

    model_config = ConfigDict(frozen=True)

    kind: PredictionKind | None = None
    evidence: str = "nothing in the model says"
    zero_terminal_snr: bool | None = None
    """True where the model says it was trained with zero terminal SNR (NoobAI's `ztsnr` key)."""


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a .safetensors file (tensor entries and `__metadata__`); {} for anything else."""
    try:
        with path.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if size > MAX_HEADER_BYTES:
                return {}
            header = json.loads(fh.read(size))
    except (OSError, struct.error, ValueError):
        return {}
    return header if isinstance(header, dict) else {}


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` of a .safetensors header (string to string), read without torch."""
    meta = safetensors_header(path).get("__metadata__")
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def _from_header(header: dict[str, Any]) -> Prediction | None:
    meta = header.get("__metadata__")
    meta = meta if isinstance(meta, dict) else {}
    ztsnr = True if ZTSNR_KEY in header else None
    said = str(meta.get(MODELSPEC_PREDICTION, "")).strip().lower()
    if said in MODELSPEC_VALUES:
        return Prediction(kind=MODELSPEC_VALUES[said], evidence=f"its metadata {MODELSPEC_PREDICTION} = {said!r}",
                          zero_terminal_snr=ztsnr)
    if V_PRED_KEY in header:
        return Prediction(kind="v", evidence=f"it carries a {V_PRED_KEY!r} key", zero_terminal_snr=ztsnr)
    return None


def _from_diffusers(folder: Path) -> Prediction | None:
    try:
        config = json.loads((folder / DIFFUSERS_SCHEDULER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    said = str(config.get("prediction_type", "")).strip().lower() if isinstance(config, dict) else ""
    if said not in DIFFUSERS_VALUES:
        return None
    ztsnr = config.get("rescale_betas_zero_snr")
    return Prediction(kind=DIFFUSERS_VALUES[said], evidence=f"{DIFFUSERS_SCHEDULER.as_posix()} prediction_type = "
                      f"{said!r}", zero_terminal_snr=ztsnr if isinstance(ztsnr, bool) else None)


def base_model_prediction(model: Path | str) -> Prediction:
    """What `model` (a file, a diffusers folder, or a name that does not exist here) says it predicts."""
    path = Path(str(model)).expanduser()
    found = None
    if path.is_file() and path.suffix.lower() == ".safetensors":
        found = _from_header(safetensors_header(path))
    elif path.is_dir():
        found = _from_diffusers(path)
    if found is not None:
        return found
    if V_PRED_NAME.search(path.name):
        return Prediction(kind="v", evidence=f"its name {path.name!r} says v-pred")
    return Prediction()
