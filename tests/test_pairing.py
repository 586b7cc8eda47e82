"""Pairing: balance, evenness, determinism, no same-character pair, bounded by the budget; groups of 3 and 4."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from itertools import combinations
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kohya_1to2.dataset.pairing import default_budget, plan_groups, plan_pairs
from kohya_1to2.errors import DatasetError
from kohya_1to2.models import Character, SourceImage


def make_characters(sizes: list[int]) -> list[Character]:
    characters = []
    for n, size in enumerate(sizes):
        name = f"char{n}"
        images = tuple(
            SourceImage(path=Path(f"/data/1_{name}/{i:03d}.png"), character=name, tags=(name, f"t{i}"))
            for i in range(size)
        )
        characters.append(Character(name=name, trigger=name, repeats=1, folder=Path(f"/data/1_{name}"), images=images))
    return characters


def shuffled(characters: list[Character], rng: random.Random) -> list[Character]:
    """Same contents, different listing order of characters and of their images."""
    out = []
    for character in characters:
        images = list(character.images)
        rng.shuffle(images)
        out.append(character.model_copy(update={"images": tuple(images)}))
    rng.shuffle(out)
    return out


sizes_strategy = st.lists(st.integers(min_value=1, max_value=7), min_size=2, max_size=6)


@settings(max_examples=60, deadline=None)
@given(
    sizes=sizes_strategy, budget=st.one_of(st.none(), st.integers(min_value=1, max_value=150)), seed=st.integers(0, 9)
)
def test_balanced_over_ordered_pairs_and_even_within_characters(sizes, budget, seed):
    characters = make_characters(sizes)
    plans = plan_pairs(characters, budget, seed)
    expected = default_budget(characters) if budget is None else budget
    assert len(plans) == expected
    assert [p.index for p in plans] == list(range(expected))

    pair_counts = Counter((p.left.character, p.right.character) for p in plans)
    ordered = [(a.name, b.name) for a in characters for b in characters if a.name != b.name]
    per_pair = [pair_counts.get(pair, 0) for pair in ordered]
    assert max(per_pair) - min(per_pair) <= 1
    assert set(pair_counts) <= set(ordered)

    uses = Counter(p.left.path for p in plans) + Counter(p.right.path for p in plans)
    for character in characters:
        counts = [uses.get(image.path, 0) for image in character.images]
        assert max(counts) - min(counts) <= 1, character.name


@settings(max_examples=40, deadline=None)
@given(sizes=sizes_strategy, seed=st.integers(0, 5), order_seed=st.integers(0, 1000))
def test_deterministic_and_independent_of_listing_order(sizes, seed, order_seed):
    characters = make_characters(sizes)
    first = plan_pairs(characters, None, seed)
    again = plan_pairs(shuffled(characters, random.Random(order_seed)), None, seed)
    assert first == again


@settings(max_examples=40, deadline=None)
@given(sizes=sizes_strategy, seed=st.integers(0, 5))
def test_never_pairs_a_character_with_itself(sizes, seed):
    for plan in plan_pairs(make_characters(sizes), None, seed):
        assert plan.left.character != plan.right.character


def test_seed_changes_the_plan():
    characters = make_characters([5, 5, 5])
    assert plan_pairs(characters, None, 0) != plan_pairs(characters, None, 1)


def test_budget_bounds_a_large_dataset():
    characters = make_characters([100] * 100)
    plans = plan_pairs(characters, None, 0)
    # 100 x 100 images would be 99,000,000 image pairs; the default budget is one per source image.
    assert len(plans) == default_budget(characters) == 100 * 100


def test_default_budget_is_one_per_image_when_that_covers_all_pairs():
    assert default_budget(make_characters([10, 20, 30])) == 60
    assert default_budget(make_characters([1, 1, 1])) == 6


def test_both_orders_of_every_pair_appear():
    plans = plan_pairs(make_characters([2, 2, 2]), None, 0)
    pairs = {(p.left.character, p.right.character) for p in plans}
    assert pairs == {(a, b) for a in ("char0", "char1", "char2") for b in ("char0", "char1", "char2") if a != b}


@pytest.mark.parametrize("sizes", [[3], [3, 0]])
def test_one_usable_character_is_an_error(sizes):
    with pytest.raises(DatasetError, match="at least 2 characters"):
        plan_pairs(make_characters(sizes), None, 0)


# ---------------------------------------------------------------- groups of three or four (--group-size)


@pytest.mark.parametrize(("sizes", "budget", "seed", "digest"), [
    ([3, 2, 4, 1], None, 0, "599a2f0749422182"),
    ([3, 2, 4, 1], 50, 1, "075230c2a3b425ca"),
    ([5, 5, 5, 5, 5, 5], 7, 3, "254ebfb4cafc1eec"),
])
def test_a_group_of_two_is_todays_pairing_exactly(sizes, budget, seed, digest):
    """The digests are of the plans the pairing made before groups existed (left|right path per composite)."""
    characters = make_characters(sizes)
    plans = plan_groups(characters, 2, budget, seed)
    assert plans == plan_pairs(characters, budget, seed)
    text = "\n".join(f"{p.left.path}|{p.right.path}" for p in plans)
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == digest


def _spread(counts: Counter, keys) -> int:
    values = [counts.get(key, 0) for key in keys]
    return max(values) - min(values)


@settings(max_examples=80, deadline=None)
@given(k=st.sampled_from([3, 4]), extra_characters=st.integers(0, 4),
       image_counts=st.lists(st.integers(1, 6), min_size=8, max_size=8),
       budget=st.one_of(st.none(), st.integers(min_value=1, max_value=200)), seed=st.integers(0, 9))
def test_groups_are_balanced_over_characters_groups_positions_and_images(k, extra_characters, image_counts, budget,
                                                                          seed):
    characters = make_characters(image_counts[: k + extra_characters])
    plans = plan_groups(characters, k, budget, seed)
    expected = default_budget(characters, k) if budget is None else budget
    assert len(plans) == expected and [p.index for p in plans] == list(range(expected))
    assert all(len({m.character for m in p.members}) == len(p.members) == k for p in plans), "k different characters"

    names = [c.name for c in characters]
    uses = Counter(m.character for p in plans for m in p.members)
    assert _spread(uses, names) <= 1, "every character in as many composites as any other, +-1"
    groups = Counter(frozenset(m.character for m in p.members) for p in plans)
    assert _spread(groups, [frozenset(g) for g in combinations(names, k)]) <= 1, "every group as often, +-1"
    seats: dict[frozenset, Counter] = {}
    for p in plans:
        seats.setdefault(frozenset(m.character for m in p.members), Counter()).update(
            (m.character, i) for i, m in enumerate(p.members))
    for group, placed in seats.items():
        for name in group:
            assert _spread(placed, [(name, i) for i in range(k)]) <= 1, "within a group, each member in each place"
    positions = Counter((m.character, i) for p in plans for i, m in enumerate(p.members))
    for name in names:
        assert _spread(positions, [(name, i) for i in range(k)]) <= 2, "over the plan, each place about as often"
    images = Counter(m.path for p in plans for m in p.members)
    for character in characters:
        assert _spread(images, [image.path for image in character.images]) <= 1, character.name


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(1, 5), min_size=4, max_size=7), k=st.sampled_from([3, 4]), seed=st.integers(0, 5),
       order_seed=st.integers(0, 1000))
def test_groups_are_deterministic_and_independent_of_listing_order(sizes, k, seed, order_seed):
    characters = make_characters(sizes)
    first = plan_groups(characters, k, None, seed)
    assert first == plan_groups(shuffled(characters, random.Random(order_seed)), k, None, seed)
    assert first == plan_groups(characters, k, None, seed)


def test_the_seed_changes_the_groups():
    characters = make_characters([4] * 6)
    assert plan_groups(characters, 3, None, 0) != plan_groups(characters, 3, None, 1)


def test_a_plan_member_is_the_one_record_of_its_images():
    plan = plan_groups(make_characters([2, 2, 2]), 3, 1, 0)[0]
    assert len(plan.members) == 3 and (plan.left, plan.right) == (plan.members[0], plan.members[-1])


@pytest.mark.parametrize(("sizes", "k"), [([3, 3], 3), ([3, 3, 0], 3), ([2, 2, 2], 4)])
def test_fewer_characters_than_a_group_is_a_dataset_error(sizes, k):
    with pytest.raises(DatasetError, match=f"at least {k} characters") as info:
        plan_groups(make_characters(sizes), k, None, 0)
    assert info.value.exit_code == 3 and "--group-size" in (info.value.hint or "")
    assert "\n" not in info.value.message


def test_default_budget_of_groups_is_one_per_image_with_the_pairs_floor_at_most():
    assert default_budget(make_characters([10, 20, 30]), 3) == 60  # one per image
    assert default_budget(make_characters([1] * 5), 3) == 10  # every one of the C(5, 3) groups once
    assert default_budget(make_characters([1] * 30), 4) == 30 * 29  # not C(30, 4) = 27,405
    assert default_budget(make_characters([1] * 5), 2) == 20  # pairs as before


def test_a_large_cast_is_planned_without_enumerating_every_group():
    characters = make_characters([10] * 100)  # C(100, 4) = 3,921,225 groups
    assert default_budget(characters, 4) == 100 * 99
    plans = plan_groups(characters, 4, 1000, 0)
    assert len(plans) == 1000
    groups = Counter(frozenset(m.character for m in p.members) for p in plans)
    assert max(groups.values()) == 1
    uses = Counter(m.character for p in plans for m in p.members)
    assert set(uses.values()) == {40}
