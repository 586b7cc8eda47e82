"""Random source-size mixes and the composites `prepare` plans for them (issue 19: no composite cropped > 2%).

Shared by the unit property test (the project's bucket port) and the integration test (sd-scripts' own
BucketManager): both check the same planned sizes against the same generated stage-2 dataset keys."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import toml

from kohya_1to2.configs.buckets import BucketSettings
from kohya_1to2.configs.generate import render_run_files
from kohya_1to2.configs.render import PlannedComposites, plan_composites
from kohya_1to2.models import Character, Job, SourceImage, SourceSettings, TrainingSettings

Size = tuple[int, int]


def random_mix(rng: random.Random, max_sources: int = 6) -> list[Size]:
    """2..max_sources source sizes: portrait, square and landscape, aspects from 1:4 to 4:1, 64 to 2400 px."""
    sizes = []
    for _ in range(rng.randint(2, max_sources)):
        aspect = 4 ** rng.uniform(-1, 1)
        long_side = rng.randint(64, 2400)
        sizes.append((long_side, max(16, round(long_side / aspect))) if aspect >= 1
                     else (max(16, round(long_side * aspect)), long_side))
    return sizes


def pairs_of(sizes: list[Size]) -> list[tuple[Size, Size]]:
    """Every ordered pair of two different sources, as `prepare` pairs images of two characters."""
    return [(a, b) for a, b in itertools.permutations(sizes, 2)]


def planned_run(tmp: Path, preset: str, scale: str, sizes: list[Size]) -> tuple[BucketSettings, PlannedComposites]:
    """The composites `prepare` would build for this mix, and the stage-2 bucket keys it writes for them."""
    job = Job(out=tmp / "run", sources=SourceSettings(roots=[tmp / "src"]),
              training=TrainingSettings(preset=preset, stage2_scale=scale))  # type: ignore[arg-type]
    planned = plan_composites(job, pairs_of(sizes))
    folder = tmp / "src" / "1_alice"
    image = SourceImage(path=folder / "a.png", character="alice", tags=("alice",))
    character = Character(name="alice", trigger="alice", repeats=1, folder=folder, images=(image,))
    files = render_run_files(job, [character], composite_dir=tmp / "run" / "1_composite", composite_repeats=1,
                             composite_count=len(planned.sizes), run_dir=tmp / "run",
                             composite_aspects=planned.aspects)
    general: dict[str, Any] = toml.loads(files["stage2.dataset.toml"])["general"]
    res = general["resolution"]
    settings = BucketSettings(resolution=(res, res) if isinstance(res, int) else (res[0], res[1]),
                              min_bucket_reso=general["min_bucket_reso"], max_bucket_reso=general["max_bucket_reso"],
                              bucket_reso_steps=general["bucket_reso_steps"])
    return settings, planned
