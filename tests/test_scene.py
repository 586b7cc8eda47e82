"""Scene composites: placement stays inside the canvas within the overlap bound, is seeded, and the alpha
channel is the union of the placed masks."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageChops, ImageDraw

from kohya_1to2.dataset.scene import (
    Placement,
    ScenePlan,
    background,
    compose_scene,
    cut_out,
    overlap_fraction,
    plan_scene,
)

SIZES = st.lists(st.tuples(st.integers(8, 1600), st.integers(8, 1600)), min_size=2, max_size=4)


@settings(max_examples=300, deadline=None)
@given(sizes=SIZES, key=st.text(max_size=8), max_overlap=st.sampled_from([0.0, 0.05, 0.1, 0.3]),
       flip=st.booleans(), max_side=st.sampled_from([None, 512, 2048]))
def test_placement_never_cuts_a_character_and_keeps_the_overlap_bound(
        sizes: list[tuple[int, int]], key: str, max_overlap: float, flip: bool, max_side: int | None) -> None:
    plan = plan_scene(sizes, key, max_overlap=max_overlap, flip=flip, max_side=max_side)
    width, height = plan.canvas
    assert len(plan.placements) == len(sizes)
    for place in plan.placements:
        assert place.x >= 0 and place.x + place.width <= width, (place, plan.canvas)
        assert place.y >= 0 and place.y + place.height <= height, (place, plan.canvas)
    for i, a in enumerate(plan.placements):
        for b in plan.placements[i + 1:]:
            assert overlap_fraction(a, b) <= max_overlap + 1e-9
    assert [p.x for p in plan.placements] == sorted(p.x for p in plan.placements), "caption order = left to right"
    if max_side is not None and max(h for _, h in sizes) >= 64:
        assert max(plan.canvas) <= max_side + 8


def test_placement_is_deterministic_and_the_key_varies_it() -> None:
    sizes = [(300, 600), (280, 640)]
    one = plan_scene(sizes, "7:0", max_overlap=0.2, flip=True)
    assert plan_scene(sizes, "7:0", max_overlap=0.2, flip=True) == one
    others = {plan_scene(sizes, f"7:{i}", max_overlap=0.2, flip=True) for i in range(1, 20)}
    assert len(others) > 10
    assert any(p.flip for plan in others for p in plan.placements) and not all(
        p.flip for plan in others for p in plan.placements)
    assert not any(p.flip for p in plan_scene(sizes, "7:0", flip=False).placements)


def test_overlap_is_used_when_allowed() -> None:
    plans = [plan_scene([(300, 600), (300, 600)], str(i), max_overlap=0.3) for i in range(50)]
    assert max(overlap_fraction(*p.placements) for p in plans) > 0.05
    assert all(overlap_fraction(*p.placements) == 0 for p in
               (plan_scene([(300, 600), (300, 600)], str(i), max_overlap=0.0) for i in range(50)))


def test_a_cut_out_touching_its_images_bottom_stands_on_the_canvas_bottom() -> None:
    plan = plan_scene([(200, 400), (200, 400)], "k", bottom=[True, False])
    assert plan.placements[0].y + plan.placements[0].height == plan.canvas[1]


def test_overlap_fraction() -> None:
    a, b = Placement(0, 0, 10, 10), Placement(5, 0, 10, 20)
    assert overlap_fraction(a, b) == pytest.approx(0.5) == overlap_fraction(b, a)
    assert overlap_fraction(a, Placement(10, 0, 5, 5)) == 0.0


def _figure(size: tuple[int, int], colour: tuple[int, int, int], seed: int) -> tuple[Image.Image, Image.Image]:
    """A source image and its mask: an ellipse 'character' on a noisy background."""
    rng = random.Random(seed)
    image = Image.new("RGB", size, (rng.randrange(256), 0, 0))
    mask = Image.new("L", size, 0)
    box = (size[0] // 5, size[1] // 8, size[0] * 4 // 5, size[1])
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    image.paste(Image.new("RGB", size, colour), (0, 0), mask)
    return image, mask


def test_the_alpha_channel_is_the_union_of_the_placed_masks() -> None:
    figures = [_figure((120, 200), (0, 200, 0), 1), _figure((100, 220), (0, 0, 200), 2)]
    cutouts = [cut_out(image, mask)[:2] for image, mask in figures]
    plan = plan_scene([c.size for c, _ in cutouts], "u", max_overlap=0.3)
    out = compose_scene(cutouts, plan, background("flat", plan.canvas, (255, 255, 255), "u"))
    assert out.mode == "RGBA" and out.size == plan.canvas
    expected = Image.new("L", plan.canvas, 0)
    for (_, mask), place in zip(cutouts, plan.placements, strict=True):
        layer = Image.new("L", plan.canvas, 0)
        layer.paste(mask.resize((place.width, place.height), Image.Resampling.BILINEAR), (place.x, place.y))
        expected = ImageChops.lighter(expected, layer)
    assert out.getchannel("A").tobytes() == expected.tobytes()
    # where no character is, the picture is the background and the loss weight 0
    corner = (plan.canvas[0] - 1, 0)
    assert out.getpixel(corner) == (255, 255, 255, 0)


def test_background_weight_lifts_the_alpha_floor() -> None:
    cutouts = [cut_out(*_figure((50, 80), (0, 200, 0), 1))[:2] for _ in range(2)]
    plan = plan_scene([c.size for c, _ in cutouts], "w")
    out = compose_scene(cutouts, plan, background("flat", plan.canvas, (0, 0, 0), "w"), background_weight=0.25)
    low, high = out.getchannel("A").getextrema()
    assert low == 64 and high == 255


def test_cut_out_crops_to_the_mask_and_says_whether_it_touches_the_bottom() -> None:
    image, mask = _figure((100, 200), (1, 2, 3), 0)
    rgb, cropped, bottom = cut_out(image, mask)
    left, top, right, low = mask.getbbox() or (0, 0, 0, 0)
    assert rgb.size == cropped.size == (right - left, low - top) and 55 < right - left < 65 and bottom
    assert cropped.getpixel((0, 0)) == 0 and cropped.getpixel(((right - left) // 2, (low - top) // 2)) == 255
    with pytest.raises(ValueError):
        cut_out(image, Image.new("L", image.size, 0))


def test_backgrounds_are_flat_gradient_or_an_image(tmp_path) -> None:
    flat = background("flat", (64, 32), (10, 20, 30), "a")
    assert flat.getextrema() == ((10, 10), (20, 20), (30, 30))
    gradient = background("gradient", (64, 32), (200, 200, 200), "a")
    assert gradient.getpixel((0, 0)) != gradient.getpixel((0, 31)) and gradient == background(
        "gradient", (64, 32), (200, 200, 200), "a")
    path = tmp_path / "bg.png"
    Image.new("RGB", (300, 100), (9, 9, 9)).save(path)
    assert background("images", (64, 32), (0, 0, 0), "a", [path]).getpixel((5, 5)) == (9, 9, 9)


def test_scene_plan_is_hashable_for_comparisons() -> None:
    assert isinstance(hash(ScenePlan((10, 10), (Placement(0, 0, 1, 1),))), int)


@pytest.mark.parametrize("aspect", [1.0, 1.5, 2.5, 0.8])
def test_a_bucket_aspect_grows_the_canvas_and_keeps_everyone_inside(aspect: float) -> None:
    sizes = [(300, 600), (280, 640), (350, 500)]
    plan = plan_scene(sizes, "a", max_overlap=0.1, bottom=[True, False, True], aspect=aspect)
    plain = plan_scene(sizes, "a", max_overlap=0.1, bottom=[True, False, True])
    width, height = plan.canvas
    assert abs(width / height - aspect) < 0.01 and width >= plain.canvas[0] and height >= plain.canvas[1]
    for place in plan.placements:
        assert place.x >= 0 and place.x + place.width <= width and place.y >= 0 and place.y + place.height <= height
    assert plan.placements[0].y + plan.placements[0].height == height  # still standing on the bottom edge


def test_an_opaque_alpha_channel_is_no_mask_the_mask_file_then_serves(tmp_path) -> None:
    from kohya_1to2.dataset.masks import MaskRef
    from kohya_1to2.dataset.scene import SceneConfig, load_cutout
    from kohya_1to2.errors import DatasetError

    source = tmp_path / "opaque.png"
    Image.new("RGBA", (40, 60), (1, 2, 3, 255)).save(source)
    mask_file = tmp_path / "mask.png"
    mask = Image.new("L", (40, 60), 0)
    ImageDraw.Draw(mask).rectangle((10, 10, 29, 59), fill=255)
    mask.save(mask_file)
    config = SceneConfig(masks={str(source): MaskRef("alpha", source)}, background=(0, 0, 0), kind="flat")
    with pytest.raises(DatasetError, match="no transparent pixel"):
        load_cutout(str(source), config)
    config = SceneConfig(masks={str(source): MaskRef("alpha", source, fallback=mask_file)}, background=(0, 0, 0),
                         kind="flat")
    cutout = load_cutout(str(source), config)
    assert cutout.image.size == (20, 50) and cutout.bottom and cutout.source_size == (40, 60)
