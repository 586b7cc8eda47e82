"""What each `--mode` trains (pure): the [[datasets]] blocks of every stage, and joint's composite repeats.

- sequential: stage 1 = singles (+ reg classes), stage 2 = composites (the method).
- replay: the same, and stage 2 also has a block of replayed singles (`dataset.replay` draws them).
- joint: one stage with both blocks; the composites' repeats give them `--composite-share` of each epoch.
Each block is its own [[datasets]] in sd-scripts, so each keeps its own buckets and batch size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from kohya_1to2 import kohya
from kohya_1to2.configs.render import DatasetSpec, SubsetSpec
from kohya_1to2.models import Character, Job, RegSet, ReplayPick, StageNumber


def character_subsets(characters: Sequence[Character]) -> list[SubsetSpec]:
    return [SubsetSpec(name=c.name, image_dir=c.folder.expanduser().resolve(), num_repeats=c.repeats,
                       images=len(c.images), caption_prefix=c.caption_prefix) for c in characters]


def reg_subsets(reg_sets: Sequence[RegSet]) -> list[SubsetSpec]:
    return [SubsetSpec(name=r.name, image_dir=r.folder.expanduser().resolve(), num_repeats=r.repeats,
                       images=len(r.images), role="reg") for r in reg_sets]


def replay_subsets(picks: Sequence[ReplayPick], replay_root: Path) -> list[SubsetSpec]:
    return [SubsetSpec(name=p.character.name, image_dir=(replay_root / p.character.name).expanduser().resolve(),
                       num_repeats=p.repeats, images=len(p.images), caption_prefix=p.character.caption_prefix,
                       role="replay") for p in picks]


def stage_datasets(
    job: Job, characters: Sequence[Character], composites: SubsetSpec, *, reg_sets: Sequence[RegSet] = (),
    replay: Sequence[ReplayPick] = (), replay_root: Path = Path("replay"),
) -> Mapping[StageNumber, list[DatasetSpec]]:
    """Stage -> its [[datasets]] blocks, for the job's mode."""
    singles = DatasetSpec(kind="singles", subsets=(*character_subsets(characters), *reg_subsets(reg_sets)))
    composite_block = DatasetSpec(kind="composites", subsets=(composites,))
    if job.training.mode == "joint":
        return {1: [singles, composite_block]}
    stage2 = [composite_block]
    if job.training.mode == "replay":
        stage2.append(DatasetSpec(kind="singles", subsets=tuple(replay_subsets(replay, replay_root))))
    return {1: [singles], 2: stage2}


def singles_samples(characters: Sequence[Character], reg_sets: Sequence[RegSet]) -> int:
    """Single-character samples per epoch, regularisation images included as sd-scripts balances them."""
    train = sum(len(c.images) * c.repeats for c in characters)
    reg = sum(kohya.reg_repeats(train, [r.repeats for r in reg_sets for _ in r.images]))
    return train + reg


def joint_composite_repeats(characters: Sequence[Character], reg_sets: Sequence[RegSet], composite_count: int,
                            share: float) -> int:
    """Repeats of the composite subset that bring composites closest to `share` of a joint epoch (at least 1)."""
    if composite_count <= 0:
        return 1
    wanted = share / (1.0 - share) * singles_samples(characters, reg_sets) / composite_count
    return max(1, round(wanted))
