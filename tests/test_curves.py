"""evaluate/curves.py: scalars from TensorBoard event files without TensorFlow/torch, and from logs."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kohya_1to2.evaluate.curves import event_scalars, log_losses, tensorboard_scalars


def _varint(value: int) -> bytes:
    out = b""
    while True:
        byte, value = value & 0x7F, value >> 7
        out += bytes([byte | (0x80 if value else 0)])
        if not value:
            return out


def _field(number: int, wire: int, payload: bytes) -> bytes:
    key = _varint(number << 3 | wire)
    return key + (_varint(len(payload)) + payload if wire == 2 else payload)


def scalar_event(step: int, tag: str, value: float) -> bytes:
    """An Event{wall_time, step, summary{value{tag, simple_value}}} as TensorBoard writes it."""
    item = _field(1, 2, tag.encode()) + _field(2, 5, struct.pack("<f", value))
    return (_field(1, 1, struct.pack("<d", 1.5e9)) + _field(2, 0, _varint(step))
            + _field(5, 2, _field(1, 2, item)))


def write_events(path: Path, events: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        for data in [_field(3, 2, b"brain.Event:2"), *events]:
            fh.write(struct.pack("<Q", len(data)) + b"\0" * 4 + data + b"\0" * 4)  # CRCs are not checked


def test_hand_written_event_file(tmp_path: Path) -> None:
    path = tmp_path / "stage1" / "20260101" / "network_train" / "events.out.tfevents.1.host"
    write_events(path, [scalar_event(1, "loss/current", 0.5), scalar_event(2, "loss/current", 0.25),
                        scalar_event(2, "lr/unet", 1e-4)])
    assert event_scalars(path)["loss/current"] == [(1, 0.5), (2, 0.25)]
    assert set(tensorboard_scalars(tmp_path / "stage1")) == {"loss/current", "lr/unet"}
    assert tensorboard_scalars(tmp_path / "absent") == {}


def test_event_file_written_by_tensorboard_itself(tmp_path: Path) -> None:
    writer_module = pytest.importorskip("tensorboard.summary.writer.event_file_writer")
    from tensorboard.compat.proto import event_pb2, summary_pb2

    writer = writer_module.EventFileWriter(str(tmp_path))
    for step, loss in enumerate([0.9, 0.7, 0.4], 1):
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag="loss/average", simple_value=loss)])
        writer.add_event(event_pb2.Event(step=step, wall_time=1.0, summary=summary))
    writer.close()
    values = tensorboard_scalars(tmp_path)["loss/average"]
    assert [s for s, _ in values] == [1, 2, 3]
    assert [round(v, 4) for _, v in values] == [0.9, 0.7, 0.4]


def test_losses_from_a_training_log() -> None:
    log = ("steps:   0%|   | 0/2 [00:00<?, ?it/s]\rsteps:  50%|█ | 1/2 [00:03<00:03,  3.05s/it, avr_loss=0.1234]"
           "\rsteps: 100%|██| 2/2 [00:06<00:00,  3.01s/it, avr_loss=0.1]\n")
    assert log_losses(log) == {"loss/average (log)": [(1, 0.1234), (2, 0.1)]}
    assert log_losses("nothing here") == {}
