"""The training modes, one object each: what every stage trains, and the options only that mode reads.

This is the one place a mode is defined. The job model validates `--mode` against `MODES`, the configs turn a
mode's blocks into [[datasets]] (`configs.modes`), `prepare` prints its summary, and evaluate and the report
name its stages from it. Adding a mode is adding an entry here (and its tests).

Block kinds, each its own [[datasets]] in sd-scripts (so each keeps its own buckets and batch size):
- `singles`: the single-character images (and the --reg classes);
- `composites`: the composite subset built by `prepare`;
- `replayed`: a share of the singles, drawn evenly per character (`--replay-share`) and mirrored under replay/.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Block = Literal["singles", "composites", "replayed"]


@dataclass(frozen=True)
class Mode:
    name: str
    summary: str
    """prepare's one line on what the run trains."""
    stages: Mapping[int, tuple[Block, ...]]
    """Stage number -> its [[datasets]] blocks, in order; the last stage's network is the run's result."""
    share_option: str | None = None
    """The TrainingSettings field only this mode reads (refused when set in another mode)."""
    composites_follow_share: bool = False
    """The composites' repeats are computed from `share_option` (so a --repeats of its own is refused)."""

    @property
    def stage_numbers(self) -> tuple[int, ...]:
        return tuple(self.stages)

    @property
    def replays(self) -> bool:
        return any("replayed" in blocks for blocks in self.stages.values())


SEQUENTIAL = Mode(
    "sequential", "sequential: stage 1 on the single-character images, stage 2 on the composites",
    {1: ("singles",), 2: ("composites",)},
)
JOINT = Mode(
    "joint", "joint: one stage on the single-character images and the composites together",
    {1: ("singles", "composites")}, share_option="composite_share", composites_follow_share=True,
)
REPLAY = Mode(
    "replay", "replay: stage 1 on the singles, stage 2 on the composites and a share of the singles",
    {1: ("singles",), 2: ("composites", "replayed")}, share_option="replay_share",
)

MODES: dict[str, Mode] = {mode.name: mode for mode in (SEQUENTIAL, JOINT, REPLAY)}
"""The registry, by `--mode` name; the first is the default."""

DEFAULT_MODE = SEQUENTIAL.name


def mode_named(name: str) -> Mode:
    """The registered mode; an unknown name is a ValueError listing the known ones (a validation message)."""
    try:
        return MODES[name]
    except KeyError:
        raise ValueError(f"mode {name!r} is not one of: {', '.join(MODES)}") from None
