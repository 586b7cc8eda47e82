"""Which two images make each composite (pure).

Balanced: every ordered character pair (A left of B, and B left of A) gets the same number of composites
(+-1), and within a character every image is used as evenly as possible (max - min uses <= 1). The plan
depends only on the seed and on the sorted contents, never on directory listing order, and its size is set
by a budget, so 100 characters x 100 images never explodes into all image pairs.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from kohya_1to2.errors import DatasetError
from kohya_1to2.models import Character, CompositePlan, SourceImage


def default_budget(characters: Sequence[Character]) -> int:
    """Default number of composites: one per source image, and at least one per ordered pair.

    Each composite uses two images, so every source appears about twice (once on each side): stage 2
    then sees every image in both positions, and its epoch has as many images as stage 1's.
    """
    n = len(characters)
    return max(sum(len(c.images) for c in characters), n * (n - 1))


def _image_stream(images: Sequence[SourceImage], rng: random.Random) -> Iterator[SourceImage]:
    """Endless draws that use every image once per cycle, in a fresh seeded order each cycle."""
    ordered = sorted(images, key=lambda image: (image.rel_key, str(image.path)))
    while True:
        cycle = list(ordered)
        rng.shuffle(cycle)
        yield from cycle


def plan_pairs(characters: Sequence[Character], budget: int | None = None, seed: int = 0) -> list[CompositePlan]:
    """The composites to build, in index order (interleaved over pairs, so any prefix is varied)."""
    usable = sorted((c for c in characters if c.images), key=lambda c: c.name)
    if len(usable) < 2:
        names = ", ".join(c.name for c in usable) or "none"
        raise DatasetError(
            f"need at least 2 characters with images to make composites, found {len(usable)} ({names})",
            hint="add another N_name/ character folder to the source root",
        )
    if len({c.name for c in usable}) != len(usable):
        raise DatasetError("two character folders share one name; rename one so triggers stay distinct")
    total = default_budget(usable) if budget is None else budget
    ordered_pairs = [(a, b) for a in usable for b in usable if a.name != b.name]

    rng = random.Random(f"1to2-pairing:{seed}")
    base, extra = divmod(total, len(ordered_pairs))
    lucky = set(rng.sample(range(len(ordered_pairs)), extra))
    counts = [base + (i in lucky) for i in range(len(ordered_pairs))]
    round_order = list(range(len(ordered_pairs)))
    rng.shuffle(round_order)

    streams = {c.name: _image_stream(c.images, random.Random(f"1to2-images:{seed}:{c.name}")) for c in usable}
    plans: list[CompositePlan] = []
    for round_index in range(max(counts, default=0)):
        for pair_index in round_order:
            if counts[pair_index] <= round_index:
                continue
            left, right = ordered_pairs[pair_index]
            plans.append(
                CompositePlan(index=len(plans), left=next(streams[left.name]), right=next(streams[right.name]))
            )
    return plans
