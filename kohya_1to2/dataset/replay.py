"""`--mode replay`: which single-character images stage 2 sees again, and their folders in the run directory.

`plan_replay` is pure: the share of stage 2's images that are singles is turned into per-character image counts
(drawn evenly per character, seeded) and repeats. `write_replay` mirrors the picks into `<run>/replay/<name>/`
(hard links when possible), removing what an earlier plan picked and this one does not; sd-scripts trains a
whole folder, so the drawn images need one of their own.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Sequence
from pathlib import Path

from kohya_1to2.fsutil import link_or_copy
from kohya_1to2.models import Character, ReplayPick


def replay_target(composite_samples: int, share: float) -> float:
    """Single-image samples per epoch that make `share` of stage 2 (singles / (singles + composites))."""
    return share / (1.0 - share) * composite_samples


def plan_replay(characters: Sequence[Character], composite_samples: int, share: float, seed: int) -> list[ReplayPick]:
    """The target's samples split as evenly as whole numbers allow (characters in name order get the remainder,
    at least one each); per character the fewest images that reach its part (all of them when it has fewer),
    repeated as often as needed. Images are drawn with the pairing seed: the same job draws the same images."""
    if not characters:
        return []
    total = max(len(characters), round(replay_target(composite_samples, share)))
    base, extra = divmod(total, len(characters))
    picks = []
    for index, character in enumerate(sorted(characters, key=lambda c: c.name)):
        wanted = base + (1 if index < extra else 0)
        pool = sorted(character.images, key=lambda image: image.rel_key)
        count = max(1, min(len(pool), wanted))
        repeats = max(1, round(wanted / count))
        drawn = random.Random(f"{seed}:{character.name}").sample(pool, count)
        picks.append(ReplayPick(character=character, images=tuple(sorted(drawn, key=lambda i: i.rel_key)),
                                repeats=repeats))
    return picks


def replay_share(picks: Sequence[ReplayPick], composite_samples: int) -> float:
    """The share of stage 2's samples that the picks make (what `plan` states)."""
    singles = sum(pick.samples for pick in picks)
    return singles / (singles + composite_samples) if singles + composite_samples else 0.0


def _same_file(source: Path, target: Path) -> bool:
    try:
        a, b = source.stat(), target.stat()
    except OSError:
        return False
    return (a.st_ino == b.st_ino and a.st_dev == b.st_dev) or (a.st_size == b.st_size and
                                                               int(a.st_mtime) == int(b.st_mtime))


def write_replay(picks: Sequence[ReplayPick], root: Path) -> int:
    """Make `root/<name>/` hold exactly each character's picked images and captions, and nothing else be under
    `root`; returns how many files were linked or copied."""
    written = 0
    names = {pick.character.name for pick in picks}
    if root.is_dir():
        for stale in root.iterdir():
            if stale.name not in names:
                shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() else stale.unlink()
    for pick in picks:
        folder = root / pick.character.name
        folder.mkdir(parents=True, exist_ok=True)
        wanted: dict[str, Path] = {}
        for image in pick.images:
            wanted[image.path.name] = image.path
            if image.caption_path is not None:
                wanted[image.caption_path.name] = image.caption_path
        for existing in folder.iterdir():
            if existing.name not in wanted or not _same_file(wanted[existing.name], existing):
                existing.unlink()
        for name, source in wanted.items():
            target = folder / name
            if not target.exists():
                link_or_copy(source, target)
                written += 1
    return written
