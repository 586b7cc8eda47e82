"""evaluate/seams.py: the composite detector on synthetic two-panel images vs one-scene images."""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from kohya_1to2.evaluate.seams import SeamScores, calibrate, composite_rate, scores


def scene(rng: random.Random, size: tuple[int, int], background: tuple[int, int, int] | None = None) -> Image.Image:
    """One picture: a vertical gradient background and shapes, one of them across the centre."""
    width, height = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    top = background or tuple(rng.randint(60, 230) for _ in range(3))
    for y in range(height):
        shade = tuple(max(0, c - y * 40 // height) for c in top) if background is None else top
        draw.line((0, y, width, y), fill=shade)
    for _ in range(rng.randint(2, 5)):
        x0, y0 = rng.randint(0, width - 20), rng.randint(0, height - 20)
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        draw.ellipse((x0, y0, x0 + rng.randint(10, width // 2), y0 + rng.randint(10, height // 2)), fill=colour)
    # the figure in the middle: a scene has content across its centre
    cx = width // 2 + rng.randint(-width // 10, width // 10)
    figure = tuple(rng.randint(0, 255) for _ in range(3))
    draw.rectangle((cx - width // 6, height // 4, cx + width // 6, height - 4), fill=figure)
    return image


def panels(rng: random.Random, same_background: bool) -> Image.Image:
    """Two scenes side by side, like a composite (optionally on one flat background colour)."""
    background = (240, 230, 200) if same_background else None
    left, right = scene(rng, (128, 192), background), scene(rng, (128, 192), background)
    if same_background:  # figures kept inside their own panel, as in character images
        left, right = (_figure_only(rng, background) for _ in range(2))
    out = Image.new("RGB", (256, 192))
    out.paste(left, (0, 0))
    out.paste(right, (128, 0))
    return out


def _figure_only(rng: random.Random, background: tuple[int, int, int] | None) -> Image.Image:
    image = Image.new("RGB", (128, 192), background)
    draw = ImageDraw.Draw(image)
    draw.ellipse((34, 20, 94, 80), fill=tuple(rng.randint(0, 200) for _ in range(3)))
    draw.rectangle((40, 80, 88, 188), fill=tuple(rng.randint(0, 200) for _ in range(3)))
    return image


def test_a_two_panel_image_scores_high_and_a_scene_low() -> None:
    rng = random.Random(1)
    composite = scores(panels(rng, same_background=False))
    single = scores(scene(rng, (256, 192)))
    assert composite.seam > 0.9 > single.seam  # a full-height jump vs the figure's shorter edges
    matched = scores(panels(rng, same_background=True))
    assert matched.split > 0.95 > scores(scene(rng, (256, 192))).split


def test_calibrated_detector_separates_held_out_panels_from_scenes() -> None:
    rng = random.Random(7)
    make_positive = [panels(rng, same_background=n % 4 == 0) for n in range(24)]
    make_negative = [scene(rng, (rng.choice([192, 256, 320]), 192)) for _ in range(24)]
    positive, negative = [scores(i) for i in make_positive], [scores(i) for i in make_negative]
    calibration = calibrate(positive[:12], negative[:12])
    assert calibration.accuracy >= 0.95
    held_out = sum(calibration.is_composite(s) for s in positive[12:]) + sum(
        not calibration.is_composite(s) for s in negative[12:])
    assert held_out / 24 >= 0.9
    assert composite_rate(positive[12:], calibration) >= 0.9
    assert composite_rate(negative[12:], calibration) <= 0.1


def test_calibration_reports_its_accuracy_honestly() -> None:
    # indistinguishable classes: no threshold does better than chance on this set, and it says so
    same = [SeamScores(0.2, 0.3)] * 4
    assert calibrate(same, same).accuracy == 0.5
    assert composite_rate([], calibrate(same, same)) is None
