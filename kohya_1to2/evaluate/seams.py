"""Composite detector: is an image two side-by-side panels rather than one scene? (Pillow only.)

Two signs, each scored 0..1 in the middle of the image:
- *seam*: the halves of a composite meet in one column where the colour jumps along most of the height; the
  score is the share of rows jumping at the strongest middle column (30-70 % of the width) minus the share at
  its neighbours (textures and soft edges jump everywhere and score ~0);
- *split*: a column near the centre (40-60 %) of one flat colour from top to bottom, with content on both
  sides: two panels whose backgrounds happen to match, or two figures painted apart on one plain background.
An image is called a composite when either score reaches its threshold; both thresholds are calibrated on the
run's own composites (positives) and stage-1 sources (negatives), and the accuracy there is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageChops, ImageStat

ANALYSIS_HEIGHT = 256
"""Images are scaled to this height first (same aspect), so scores do not depend on resolution."""
JUMP_LEVEL = 6
"""A colour jump of more than this (0-255, largest channel difference) counts as a discontinuity."""
FLAT_LEVEL = 10
"""A pixel within this of its column's median colour (largest channel difference) counts as flat."""
SEAM_BAND = (0.30, 0.70)
SPLIT_BAND = (0.40, 0.60)
NEIGHBOURHOOD = 3
CALIBRATION_SAMPLE = 200
"""At most this many images per class are used to calibrate (evenly spaced), keeping it quick on big runs."""


@dataclass(frozen=True)
class SeamScores:
    seam: float
    split: float


def _prepared(image: Image.Image) -> Image.Image:
    rgb = image.convert("RGB")
    if rgb.height != ANALYSIS_HEIGHT:
        width = max(8, round(rgb.width * ANALYSIS_HEIGHT / rgb.height))
        # NEAREST keeps a one-pixel seam one pixel wide (a smoothing filter would spread it over neighbours)
        rgb = rgb.resize((width, ANALYSIS_HEIGHT), Image.Resampling.NEAREST)
    return rgb


def _max_channel(diff: Image.Image) -> Image.Image:
    red, green, blue = diff.split()
    return ImageChops.lighter(ImageChops.lighter(red, green), blue)


def _column_means(mask: Image.Image) -> list[float]:
    """Mean of each column of a 0/255 mask as a share 0..1 (a BOX resize to one row averages columns)."""
    row = mask.resize((mask.width, 1), Image.Resampling.BOX)
    return [float(row.getpixel((x, 0))) / 255.0 for x in range(mask.width)]  # type: ignore[arg-type]


def column_jump_shares(image: Image.Image) -> list[float]:
    """For each column x: the share of rows whose colour jumps between column x-1 and x (0 for x = 0)."""
    rgb = _prepared(image)
    left, right = rgb.crop((0, 0, rgb.width - 1, rgb.height)), rgb.crop((1, 0, rgb.width, rgb.height))
    jumps = _max_channel(ImageChops.difference(left, right)).point(lambda v: 255 if v > JUMP_LEVEL else 0)
    return [0.0, *_column_means(jumps)]


def seam_score(image: Image.Image) -> float:
    shares = column_jump_shares(image)
    width = len(shares)
    best = 0.0
    for x in range(max(1, int(width * SEAM_BAND[0])), min(width - 1, int(width * SEAM_BAND[1]) + 1)):
        around = [shares[i] for i in range(x - NEIGHBOURHOOD, x + NEIGHBOURHOOD + 1)
                  if 0 < i < width and abs(i - x) > 1]
        best = max(best, shares[x] - (max(around) if around else 0.0))
    return best


def split_score(image: Image.Image) -> float:
    """Flatness of the flattest centre column (share of rows at its median colour), if both sides hold content."""
    rgb = _prepared(image)
    width = rgb.width
    best = 0.0
    for x in range(int(width * SPLIT_BAND[0]), int(width * SPLIT_BAND[1]) + 1):
        column = rgb.crop((x, 0, x + 1, rgb.height))
        median = tuple(int(v) for v in ImageStat.Stat(column).median)
        flat = _max_channel(ImageChops.difference(column, Image.new("RGB", column.size, median)))
        share = 1.0 - _column_means(flat.point(lambda v: 255 if v > FLAT_LEVEL else 0))[0]
        best = max(best, share)
    # content on both sides: somewhere left and right of the band a column differs from flat
    sides = [rgb.crop((0, 0, int(width * SPLIT_BAND[0]), rgb.height)),
             rgb.crop((int(width * SPLIT_BAND[1]) + 1, 0, width, rgb.height))]
    if any(max(hi - lo for lo, hi in ImageStat.Stat(side).extrema) <= FLAT_LEVEL for side in sides):
        return 0.0
    return best


def scores(image: Image.Image) -> SeamScores:
    return SeamScores(seam=seam_score(image), split=split_score(image))


@dataclass(frozen=True)
class Calibration:
    """The thresholds chosen on labelled images and the detector's accuracy on them."""

    seam_threshold: float
    split_threshold: float
    accuracy: float
    positives: int
    negatives: int

    def is_composite(self, score: SeamScores) -> bool:
        return score.seam >= self.seam_threshold or score.split >= self.split_threshold


def _thresholds(values: Sequence[float]) -> list[float]:
    """Candidate thresholds: midway between neighbouring observed values, plus 'never' (above 1)."""
    ordered = sorted(set(values))
    return [(a + b) / 2 for a, b in zip([-0.01, *ordered[:-1]], ordered, strict=True)] + [1.01]


def even_sample(items: Sequence[object], limit: int = CALIBRATION_SAMPLE) -> list[object]:
    """At most `limit` items, evenly spaced (deterministic)."""
    if len(items) <= limit:
        return list(items)
    return [items[i * len(items) // limit] for i in range(limit)]


def calibrate(positives: Sequence[SeamScores], negatives: Sequence[SeamScores]) -> Calibration:
    """Thresholds that best separate composites from single images (ties: the lowest), and their accuracy."""
    if not positives or not negatives:
        raise ValueError("calibration needs composites and single images")
    total = len(positives) + len(negatives)
    everything = [*positives, *negatives]
    best: Calibration | None = None
    for seam in _thresholds([s.seam for s in everything]):
        for split in _thresholds([s.split for s in everything]):
            trial = Calibration(seam, split, 0.0, len(positives), len(negatives))
            correct = sum(trial.is_composite(s) for s in positives) + sum(not trial.is_composite(s) for s in negatives)
            if best is None or correct / total > best.accuracy:
                best = Calibration(seam, split, correct / total, len(positives), len(negatives))
    assert best is not None
    return best


def composite_rate(image_scores: Sequence[SeamScores], calibration: Calibration) -> float | None:
    """Share of images judged composites; None for no images."""
    if not image_scores:
        return None
    return sum(calibration.is_composite(s) for s in image_scores) / len(image_scores)
