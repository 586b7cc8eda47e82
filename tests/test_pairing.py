"""Pairing: balance, evenness, determinism, no same-character pair, bounded by the budget."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kohya_1to2.dataset.pairing import default_budget, plan_pairs
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
