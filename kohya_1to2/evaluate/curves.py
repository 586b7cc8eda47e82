"""Loss curves: scalars from TensorBoard event files (a tiny TFRecord + protobuf reader, no TensorFlow or
torch), or `avr_loss` from a stage's log when no event file exists."""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from pathlib import Path

Series = dict[str, list[tuple[int, float]]]
"""tag -> [(step, value)] in step order."""

_AVR_LOSS = re.compile(r"steps:\s+\d+%\|[^|]*\|\s*(?P<step>\d+)/\d+\s*\[[^\]]*?avr_loss=(?P<loss>[-+\d.eE]+)")


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    """(field number, wire type, value) of one protobuf message; values of wire types 1/5 as raw bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, wire, value
        elif wire == 1:
            yield number, wire, data[pos:pos + 8]
            pos += 8
        elif wire == 2:
            size, pos = _varint(data, pos)
            yield number, wire, data[pos:pos + size]
            pos += size
        elif wire == 5:
            yield number, wire, data[pos:pos + 4]
            pos += 4
        else:
            return  # groups (3/4) never occur in event files


def _tensor_value(data: bytes) -> float | None:
    """A scalar TensorProto: float_val (field 5) or 4-byte float tensor_content (field 4)."""
    for number, wire, value in _fields(data):
        if number == 5 and wire == 2 and isinstance(value, bytes) and len(value) >= 4:
            return float(struct.unpack("<f", value[:4])[0])
        if number == 5 and wire == 5 and isinstance(value, bytes):
            return float(struct.unpack("<f", value)[0])
        if number == 4 and isinstance(value, bytes) and len(value) == 4:
            return float(struct.unpack("<f", value)[0])
    return None


def records(path: Path) -> Iterator[bytes]:
    """The payloads of a TFRecord file: length (u64), its CRC (u32), data, data CRC (u32); a torn tail ends it."""
    data = path.read_bytes()
    pos = 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        start, end = pos + 12, pos + 12 + length
        if end + 4 > len(data):
            return
        yield data[start:end]
        pos = end + 4


def event_scalars(path: Path) -> Series:
    """Scalars of one event file: Event.step (2), Event.summary (5) -> Summary.value (1) -> tag (1),
    simple_value (2) or tensor (8)."""
    series: Series = {}
    for payload in records(path):
        step = 0
        summaries = []
        for number, _, value in _fields(payload):
            if number == 2 and isinstance(value, int):
                step = value
            elif number == 5 and isinstance(value, bytes):
                summaries.append(value)
        for summary in summaries:
            for number, _, item in _fields(summary):
                if number != 1 or not isinstance(item, bytes):
                    continue
                tag, scalar = None, None
                for field, wire, value in _fields(item):
                    if field == 1 and isinstance(value, bytes):
                        tag = value.decode("utf-8", "replace")
                    elif field == 2 and wire == 5 and isinstance(value, bytes):
                        scalar = float(struct.unpack("<f", value)[0])
                    elif field == 8 and isinstance(value, bytes):
                        scalar = _tensor_value(value)
                if tag is not None and scalar is not None:
                    series.setdefault(tag, []).append((step, scalar))
    return series


def tensorboard_scalars(folder: Path) -> Series:
    """Every scalar under a stage's TensorBoard folder (all launches), in step order."""
    merged: Series = {}
    for path in sorted(folder.rglob("events.out.tfevents.*")) if folder.is_dir() else []:
        for tag, points in event_scalars(path).items():
            merged.setdefault(tag, []).extend(points)
    return {tag: sorted(points) for tag, points in merged.items()}


def log_losses(text: str) -> Series:
    """`avr_loss` per step from train_network's progress lines (the last value printed for each step)."""
    by_step: dict[int, float] = {}
    for match in _AVR_LOSS.finditer(text.replace("\r", "\n")):
        by_step[int(match.group("step"))] = float(match.group("loss"))
    return {"loss/average (log)": sorted(by_step.items())} if by_step else {}
