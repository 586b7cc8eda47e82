"""A base model's prediction type, read from its header, its diffusers config or its name (no torch)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from kohya_1to2.kohya import base_model_prediction, safetensors_metadata
from tests.fake_launch import write_safetensors_header


def test_modelspec_metadata_says_v_or_epsilon(tmp_path: Path) -> None:
    v = base_model_prediction(write_safetensors_header(tmp_path / "a.safetensors", metadata={
        "modelspec.prediction_type": "v"}))
    assert (v.kind, v.zero_terminal_snr) == ("v", None) and "modelspec.prediction_type" in v.evidence
    eps = base_model_prediction(write_safetensors_header(tmp_path / "b.safetensors", metadata={
        "modelspec.prediction_type": "epsilon"}))
    assert eps.kind == "epsilon"


def test_metadata_wins_over_a_misleading_name(tmp_path: Path) -> None:
    said = base_model_prediction(write_safetensors_header(tmp_path / "merge_vpred_fixed.safetensors", metadata={
        "modelspec.prediction_type": "epsilon"}))
    assert said.kind == "epsilon"


def test_noobai_keys_say_v_and_zero_terminal_snr(tmp_path: Path) -> None:
    base = write_safetensors_header(tmp_path / "model.safetensors", keys=("v_pred", "ztsnr", "x"))
    said = base_model_prediction(base)
    assert (said.kind, said.zero_terminal_snr) == ("v", True) and "'v_pred'" in said.evidence


@pytest.mark.parametrize("name", ["noobaiXLVpred10.safetensors", "model-v-pred.ckpt", "NOOB_V_PRED"])
def test_a_v_pred_name_is_the_last_resort(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"not a safetensors header at all")
    said = base_model_prediction(path)
    assert said.kind == "v" and "name" in said.evidence


def test_diffusers_folder_reads_its_scheduler_config(tmp_path: Path) -> None:
    (tmp_path / "scheduler").mkdir()
    config = tmp_path / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({"prediction_type": "v_prediction", "rescale_betas_zero_snr": True}))
    assert base_model_prediction(tmp_path).model_dump(include={"kind", "zero_terminal_snr"}) == {
        "kind": "v", "zero_terminal_snr": True}
    config.write_text(json.dumps({"prediction_type": "epsilon"}))
    assert base_model_prediction(tmp_path).kind == "epsilon"


def test_silence_is_unknown_not_epsilon(tmp_path: Path) -> None:
    plain = write_safetensors_header(tmp_path / "illustriousXL.safetensors", keys=("x",), metadata={"a": "b"})
    assert base_model_prediction(plain).kind is None
    assert base_model_prediction(tmp_path / "missing.safetensors").kind is None
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    assert base_model_prediction(huge).kind is None and safetensors_metadata(huge) == {}


def test_metadata_is_strings(tmp_path: Path) -> None:
    path = write_safetensors_header(tmp_path / "n.safetensors", metadata={"ss_epoch": "3"})
    assert safetensors_metadata(path) == {"ss_epoch": "3"}
