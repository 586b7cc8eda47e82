"""A mode's blocks (`kohya_1to2.modes`) as [[datasets]] of every stage (pure), and the share options' effects:
joint's composite repeats (`--composite-share` of each epoch), replay's drawn singles (`dataset.replay`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from kohya_1to2 import kohya
from kohya_1to2.configs.render import DatasetSpec, SubsetSpec
from kohya_1to2.dataset.replay import plan_replay
from kohya_1to2.models import Character, Job, RegSet, ReplayPick, StageNumber
from kohya_1to2.modes import Block


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
    """Stage -> its [[datasets]] blocks, as the job's mode lists them."""
    blocks: dict[Block, DatasetSpec] = {
        "singles": DatasetSpec(kind="singles", subsets=(*character_subsets(characters), *reg_subsets(reg_sets))),
        "composites": DatasetSpec(kind="composites", subsets=(composites,)),
        "replayed": DatasetSpec(kind="singles", subsets=tuple(replay_subsets(replay, replay_root))),
    }
    return {stage: [blocks[kind] for kind in job.mode.stages[stage]] for stage in job.stages}


def mode_job(job: Job, characters: Sequence[Character], reg_sets: Sequence[RegSet], composites: int) -> Job:
    """The job the composite build and the configs use: where the mode says so (joint), the composites' repeats
    follow its share option (job.json keeps what the user gave)."""
    mode = job.mode
    if not (mode.composites_follow_share and mode.share_option):
        return job
    share = float(getattr(job.training, mode.share_option))
    repeats = joint_composite_repeats(characters, reg_sets, composites, share)
    return job.model_copy(update={"composites": job.composites.model_copy(update={"repeats": repeats})})


def mode_replay(job: Job, characters: Sequence[Character], composite_samples: int) -> list[ReplayPick]:
    """The single images a mode with a `replayed` block adds (none in the other modes)."""
    if not job.mode.replays:
        return []
    return plan_replay(characters, composite_samples, job.training.replay_share, job.composites.seed)


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
