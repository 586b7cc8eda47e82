"""The prediction type a training TOML trains against what its base model says it is.

sd-scripts takes `v_parameterization` on trust: an epsilon loss on a v-prediction base (NoobAI-XL v-pred,
SD2 768-v) or the reverse trains to the end without an error and gives grey or burnt samples. So `check`
warns both ways, and `plan` and `doctor` show both sides.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kohya_1to2.configs.lint.problems import ConfigProblem
from kohya_1to2.kohya import Prediction, PredictionKind, base_model_prediction
from kohya_1to2.kohya import options as opt

VPRED_PRESET = "noobai-vpred"
EPSILON_PRESET = "illustrious"


def toml_prediction(flat: Mapping[str, Any]) -> tuple[PredictionKind, bool]:
    """What a flattened training config trains: (kind, zero terminal SNR)."""
    kind: PredictionKind = "v" if flat.get(opt.V_PARAMETERIZATION) is True else "epsilon"
    return kind, flat.get(opt.ZERO_TERMINAL_SNR) is True


def prediction_text(kind: PredictionKind | None, zero_terminal_snr: bool | None = False) -> str:
    if kind is None:
        return "unknown"
    text = "v-prediction" if kind == "v" else "epsilon (noise) prediction"
    return text + (" with zero terminal SNR" if zero_terminal_snr else "")


def base_prediction_line(model: str) -> str:
    """`v-prediction (its metadata modelspec.prediction_type = 'v')`, for plan and doctor."""
    said = base_model_prediction(model)
    return f"{prediction_text(said.kind, said.zero_terminal_snr)} ({said.evidence})"


def prediction_summary(flat: Mapping[str, Any]) -> str:
    """One line: what the TOML trains, and what its base model says."""
    kind, ztsnr = toml_prediction(flat)
    model = str(flat.get(opt.PRETRAINED_MODEL) or "")
    return f"trains {prediction_text(kind, ztsnr)}; base model: {base_prediction_line(model) if model else 'not set'}"


def _mismatch(said: Prediction, kind: PredictionKind, model: str, file: str) -> ConfigProblem:
    trains = prediction_text(kind)
    if said.kind == "v":
        fix = (f"set {opt.V_PARAMETERIZATION} = true and {opt.ZERO_TERMINAL_SNR} = true in [model], "
               f"or prepare with --preset {VPRED_PRESET}")
    else:
        fix = (f"set {opt.V_PARAMETERIZATION} = false (and drop {opt.ZERO_TERMINAL_SNR}) in [model], "
               f"or prepare with --preset {EPSILON_PRESET} (SDXL) / seed (SD1)")
    return ConfigProblem(
        file=file, key=opt.V_PARAMETERIZATION, severity="warning",
        problem=f"base model {model} is {prediction_text(said.kind)} ({said.evidence}), but this file trains "
                f"{trains}: sd-scripts would train the wrong loss without an error", fix=fix)


def lint_prediction(flat: Mapping[str, Any], file: str) -> list[ConfigProblem]:
    """v_parameterization / zero_terminal_snr against the base model's own word, and against each other."""
    kind, ztsnr = toml_prediction(flat)
    problems = []
    if ztsnr and kind != "v":
        problems.append(ConfigProblem(
            file=file, key=opt.ZERO_TERMINAL_SNR, severity="warning",
            problem=f"is on without {opt.V_PARAMETERIZATION} (sd-scripts only logs that training will be unexpected)",
            fix=f"set {opt.V_PARAMETERIZATION} = true for a v-prediction base, else drop {opt.ZERO_TERMINAL_SNR}"))
    model = flat.get(opt.PRETRAINED_MODEL)
    if not isinstance(model, str) or not model:
        return problems
    said = base_model_prediction(model)
    if said.kind is not None and said.kind != kind:
        problems.append(_mismatch(said, kind, model, file))
    elif said.kind == "v" and said.zero_terminal_snr and not ztsnr:
        problems.append(ConfigProblem(
            file=file, key=opt.ZERO_TERMINAL_SNR, severity="warning",
            problem=f"base model {model} was trained with zero terminal SNR ({said.evidence} and a 'ztsnr' key), "
                    "but this file does not train with it",
            fix=f"set {opt.ZERO_TERMINAL_SNR} = true in [model]"))
    return problems
