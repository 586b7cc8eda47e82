"""Which images make each composite (pure): pairs, or groups of three or four characters.

Pairs (the method's) are balanced over ordered pairs: every ordered pair (A left of B, and B left of A) gets the
same number of composites (+-1). Groups of k > 2 are balanced over unordered groups (each the same count +-1),
over characters (each in as many composites as any other, +-1) and over positions (within a group each member
takes each place in turn). Within a character every image is used as evenly as possible (max - min uses <= 1).
The plan depends only on the seed and on the sorted contents, never on directory listing order, and its size is
set by a budget, so 100 characters x 100 images never explodes into all image pairs (or groups).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Sequence
from itertools import combinations, permutations
from math import comb

from kohya_1to2.errors import DatasetError
from kohya_1to2.models import Character, CompositePlan, SourceImage

Group = tuple[int, ...]
"""Characters of a group by their index in name order (ascending: the unordered group)."""


def default_budget(characters: Sequence[Character], group_size: int = 2) -> int:
    """Default number of composites: one per source image, and at least one per ordered pair (pairs) or per
    unordered group (groups, at most as many as the pairs' floor).

    Each composite uses k images, so every source appears about k times (once in each position) and stage 2's
    epoch has as many images as stage 1's. Groups outnumber pairs fast (30 characters: 870 ordered pairs, 27,405
    groups of four), so their floor stops at the pairs' n(n - 1): beyond it, balance picks which groups meet.
    """
    n = len(characters)
    images = sum(len(c.images) for c in characters)
    if group_size == 2:
        return max(images, n * (n - 1))
    return max(images, min(comb(n, group_size), n * (n - 1)))


def _image_stream(images: Sequence[SourceImage], rng: random.Random) -> Iterator[SourceImage]:
    """Endless draws that use every image once per cycle, in a fresh seeded order each cycle."""
    ordered = sorted(images, key=lambda image: (image.rel_key, str(image.path)))
    while True:
        cycle = list(ordered)
        rng.shuffle(cycle)
        yield from cycle


def _usable(characters: Sequence[Character], group_size: int) -> list[Character]:
    """Characters with images in name order; fewer than a group of them is a DatasetError."""
    usable = sorted((c for c in characters if c.images), key=lambda c: c.name)
    if len(usable) < group_size:
        names = ", ".join(c.name for c in usable) or "none"
        of = "" if group_size == 2 else f" of {group_size} (--group-size {group_size})"
        raise DatasetError(
            f"need at least {group_size} characters with images to make composites{of}, found {len(usable)} "
            f"({names})",
            hint="add another N_name/ character folder to the source root"
            + ("" if group_size == 2 else ", or lower --group-size"),
        )
    if len({c.name for c in usable}) != len(usable):
        raise DatasetError("two character folders share one name; rename one so triggers stay distinct")
    return usable


def plan_pairs(characters: Sequence[Character], budget: int | None = None, seed: int = 0) -> list[CompositePlan]:
    """The composites to build, in index order (interleaved over pairs, so any prefix is varied)."""
    usable = _usable(characters, 2)
    total = default_budget(usable) if budget is None else budget
    ordered_pairs = [(a, b) for a in usable for b in usable if a.name != b.name]

    rng = random.Random(f"1to2-pairing:{seed}")
    base, extra = divmod(total, len(ordered_pairs))
    lucky = set(rng.sample(range(len(ordered_pairs)), extra))
    counts = [base + (i in lucky) for i in range(len(ordered_pairs))]
    round_order = list(range(len(ordered_pairs)))
    rng.shuffle(round_order)

    streams = _streams(usable, seed)
    plans: list[CompositePlan] = []
    for round_index in range(max(counts, default=0)):
        for pair_index in round_order:
            if counts[pair_index] <= round_index:
                continue
            left, right = ordered_pairs[pair_index]
            plans.append(
                CompositePlan(index=len(plans), members=(next(streams[left.name]), next(streams[right.name])))
            )
    return plans


def plan_groups(characters: Sequence[Character], group_size: int = 2, budget: int | None = None,
                seed: int = 0) -> list[CompositePlan]:
    """The composites of `group_size` different characters each, in index order (interleaved over groups, so
    any prefix is varied); a group size of 2 is `plan_pairs`, exactly."""
    if group_size == 2:
        return plan_pairs(characters, budget, seed)
    if group_size < 2:
        raise ValueError(f"a composite needs at least 2 characters, not {group_size}")
    usable = _usable(characters, group_size)
    total = default_budget(usable, group_size) if budget is None else budget
    rng = random.Random(f"1to2-groups:{group_size}:{seed}")
    counts = group_counts(len(usable), group_size, total, rng)
    round_order = sorted(counts)
    rng.shuffle(round_order)

    streams = _streams(usable, seed)
    seats = _Seats(len(usable), group_size, rng)
    plans: list[CompositePlan] = []
    for round_index in range(max(counts.values(), default=0)):
        for group in round_order:
            if counts[group] <= round_index:
                continue
            order = seats.order(group, round_index, counts[group])
            plans.append(CompositePlan(index=len(plans),
                                       members=tuple(next(streams[usable[c].name]) for c in order)))
    return plans


def _streams(usable: Sequence[Character], seed: int) -> dict[str, Iterator[SourceImage]]:
    return {c.name: _image_stream(c.images, random.Random(f"1to2-images:{seed}:{c.name}")) for c in usable}


SEARCH_STEPS = 20_000
"""Backtracking steps when dealing the remainder; past them the greedy deal stands (not seen in practice)."""


def group_counts(n: int, k: int, total: int, rng: random.Random) -> Counter[Group]:
    """Composites per unordered group of k of n characters: every group `total // C(n, k)`, and the remainder
    one each to distinct groups chosen so every character stays within one use of any other.

    The remainder is dealt by the least-used characters first (ties broken by the seed), backtracking where a
    small cast runs out of undealt groups; only the groups that can still be dealt are enumerated, never all
    C(n, k) of a large cast when the budget is smaller."""
    base, extra = divmod(total, comb(n, k))
    counts: Counter[Group] = Counter({group: base for group in combinations(range(n), k)} if base else {})
    for group in _deal(n, k, extra, rng):
        counts[group] += 1
    return counts


def _deal(n: int, k: int, extra: int, rng: random.Random) -> list[Group]:
    """`extra` distinct groups whose characters' uses differ by at most one (depth-first, least used first)."""
    uses = [0] * n
    dealt: list[Group] = []
    taken: set[Group] = set()
    stack = [_candidates(uses, k, taken, rng)]
    steps = 0
    while len(dealt) < extra:
        group = next(stack[-1], None)
        steps += 1
        if group is None and steps < SEARCH_STEPS and dealt:  # a dead end: take back the last group
            stack.pop()
            _take(dealt.pop(), uses, taken, -1)
            continue
        if group is None:  # out of steps: the least-used group left, balance or not
            group = min((g for g in combinations(range(n), k) if g not in taken),
                        key=lambda g: (sum(uses[c] for c in g), g))
        dealt.append(group)
        _take(group, uses, taken, +1)
        stack.append(_candidates(uses, k, taken, rng))
    return dealt


def _take(group: Group, uses: list[int], taken: set[Group], step: int) -> None:
    for c in group:
        uses[c] += step
    (taken.add if step > 0 else taken.discard)(group)


def _candidates(uses: Sequence[int], k: int, taken: set[Group], rng: random.Random) -> Iterator[Group]:
    """Undealt groups of the least-used characters: all of the least used when fewer than k of them, topped up
    with the next least used; else any k of them (seeded order). Exactly the picks that keep uses within one."""
    ranked = sorted(range(len(uses)), key=lambda c: (uses[c], rng.random()))
    least = [c for c in ranked if uses[c] == uses[ranked[0]]]
    if len(least) >= k:
        picks: Iterator[tuple[int, ...]] = combinations(least, k)
    else:
        picks = (tuple(least) + more for more in combinations(ranked[len(least):], k - len(least)))
    return (group for group in (tuple(sorted(pick)) for pick in picks) if group not in taken)


class _Seats:
    """Who sits where in each composite of a group: blocks of k rotations of one seating, so within a group each
    member takes each position in turn; each block's seating is the one that evens out the characters'
    positions over the whole plan (seeded among equals)."""

    def __init__(self, n: int, k: int, rng: random.Random) -> None:
        self.k, self.rng = k, rng
        self.placed = [[0] * k for _ in range(n)]
        self.seating: dict[Group, tuple[int, ...]] = {}

    def order(self, group: Group, round_index: int, count: int) -> tuple[int, ...]:
        """The members of `group`'s composite number `round_index` (of `count`), left to right."""
        shift = round_index % self.k
        if shift == 0:
            options = list(permutations(group))
            self.rng.shuffle(options)
            block = min(self.k, count - round_index)
            self.seating[group] = seating = min(options, key=lambda option: self._cost(option, block))
            for order in _rotations(seating, block):  # the whole block's seats, taken now
                for position, c in enumerate(order):
                    self.placed[c][position] += 1
        seating = self.seating[group]
        return seating[shift:] + seating[:shift]

    def _cost(self, seating: tuple[int, ...], block: int) -> int:
        """How often the members already sat where the block's rotations of this seating put them (a whole block
        evens out; a group's last, partial one is where the plan's positions would drift)."""
        if block == self.k:
            return 0
        return sum(self.placed[c][position] for order in _rotations(seating, block) for position, c in enumerate(order))


def _rotations(seating: tuple[int, ...], count: int) -> list[tuple[int, ...]]:
    return [seating[shift:] + seating[:shift] for shift in range(count)]
