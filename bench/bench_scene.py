"""Benchmark: scene composites (`--composite-style scene`) against side-by-side ones, on the same sources.

    .venv/bin/python bench/bench_scene.py            # ~700 px RGBA sources, 300 composites per style
    .venv/bin/python bench/bench_scene.py --quick    # 120 composites per style

Both styles build the same plan from the same RGBA sources (a figure on a transparent background: its alpha
is the scene's mask), each into a fresh run directory, alternating, best of `--repeat`; one run, so the ratio
is not skewed by the host's drift. Issue 20's target: the scene build within 1.5x of the side-by-side time.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prepare import make_image  # the sources' texture, as in bench_prepare

TARGET = 1.5


def make_figures(root: Path, characters: int, per_character: int, base: int) -> Path:
    """`1_charN/` folders of RGBA images: a textured figure (ellipses) on a transparent background."""
    rng = random.Random(0)
    for c in range(characters):
        folder = root / f"1_char{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_character):
            size = (base + rng.choice((-64, 0, 64)), int(base * 1.4) + rng.choice((-48, 0, 48)))
            mask = Image.new("L", size, 0)
            draw = ImageDraw.Draw(mask)
            draw.ellipse((size[0] // 4, size[1] // 10, size[0] * 3 // 4, size[1] // 3), fill=255)  # head
            draw.ellipse((size[0] // 8, size[1] // 4, size[0] * 7 // 8, size[1] - 1), fill=255)  # body
            image = make_image(rng, size).convert("RGBA")
            image.putalpha(mask)
            image.save(folder / f"char{c}_{i:03d}.png")
            (folder / f"char{c}_{i:03d}.txt").write_text(f"char{c}, tag_{i % 7}, 1girl\n", encoding="utf-8")
    return root


def build_seconds(src: Path, out: Path, style: str, budget: int) -> float:
    from kohya_1to2.dataset.build import build_composites
    from kohya_1to2.dataset.pairing import plan_pairs
    from kohya_1to2.dataset.scan import scan_sources
    from kohya_1to2.models import CompositeSettings, Job, SourceSettings

    job = Job(out=out, sources=SourceSettings(roots=[src]), composites=CompositeSettings(budget=budget, style=style))
    characters = scan_sources(job.sources).characters
    plans = plan_pairs(characters, budget, job.composites.seed)
    start = time.perf_counter()
    result = build_composites(plans, characters, job, out)
    seconds = time.perf_counter() - start
    assert result.written == budget, result
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    budget, base = (120, 512) if args.quick else (300, 700)
    with tempfile.TemporaryDirectory(prefix="bench-scene-") as tmp:
        src = make_figures(Path(tmp) / "src", 6, 12, base)
        best = {"side-by-side": float("inf"), "scene": float("inf")}
        for n in range(args.repeat):
            for style in best:
                best[style] = min(best[style], build_seconds(src, Path(tmp) / f"{style}-{n}", style, budget))
        for style, seconds in best.items():
            print(f"{style:>13}: {budget} composites in {seconds:.2f} s = {budget / seconds:.1f} composites/s")
        ratio = best["scene"] / best["side-by-side"]
        print(f"scene / side-by-side time: {ratio:.2f}x (target <= {TARGET}x): {'ok' if ratio <= TARGET else 'OVER'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
