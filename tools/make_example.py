"""Draw the bundled example dataset: three synthetic characters in kohya layout (no copyrighted art).

    python tools/make_example.py examples/dataset --masks examples/masks

Each character is a simple figure with its own hair colour and accessory; each image varies pose, background
and expression, and its caption starts with the character's trigger. Each image's character mask (white =
the figure) goes to a mirror tree for scene composites (`prepare --composite-style scene --masks`): never into
the character folders, where sd-scripts would train it as an image. Deterministic, so re-running it gives the
committed files byte for byte.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = (256, 256)
IMAGES_PER_CHARACTER = 4
REPEATS = 2


@dataclass(frozen=True)
class Design:
    trigger: str
    hair: tuple[int, int, int]
    hair_tag: str
    outfit: tuple[int, int, int]
    outfit_tag: str
    accessory: str


DESIGNS = (
    Design("akari", (214, 64, 52), "red hair", (245, 245, 245), "white shirt", "hair ribbon"),
    Design("bluebell", (52, 92, 214), "blue hair", (40, 40, 60), "black dress", "glasses"),
    Design("clover", (60, 170, 80), "green hair", (240, 200, 70), "yellow hoodie", "hat"),
)
BACKGROUNDS = (((200, 225, 250), "blue background"), ((250, 230, 200), "orange background"),
               ((230, 230, 230), "grey background"), ((215, 245, 215), "green background"))
EXPRESSIONS = ("smile", "open mouth", "closed eyes", "neutral")


def draw_character(design: Design, index: int) -> tuple[Image.Image, list[str], Image.Image]:
    """The image, its tags, and its mask: the figure is drawn opaque on a transparent layer, so the layer's
    alpha is exactly the figure and pasting it on the background gives the image."""
    rng = random.Random(f"{design.trigger}:{index}")
    background, background_tag = BACKGROUNDS[index % len(BACKGROUNDS)]
    expression = EXPRESSIONS[(index + len(design.trigger)) % len(EXPRESSIONS)]
    layer = Image.new("RGBA", SIZE, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    cx = 128 + rng.randint(-30, 30)
    head_y = 90 + rng.randint(-10, 10)
    draw.polygon([(cx - 55, 250), (cx + 55, 250), (cx + 30, head_y + 50), (cx - 30, head_y + 50)], fill=design.outfit)
    draw.ellipse((cx - 50, head_y - 55, cx + 50, head_y + 45), fill=design.hair)  # hair behind the face
    draw.ellipse((cx - 38, head_y - 38, cx + 38, head_y + 42), fill=(250, 220, 195))  # face
    draw.chord((cx - 42, head_y - 50, cx + 42, head_y + 10), 180, 360, fill=design.hair)  # fringe
    eyes_closed = expression == "closed eyes"
    for dx in (-15, 15):
        if eyes_closed:
            draw.line((cx + dx - 6, head_y + 5, cx + dx + 6, head_y + 5), fill=(30, 30, 30), width=2)
        else:
            draw.ellipse((cx + dx - 5, head_y, cx + dx + 5, head_y + 10), fill=(30, 30, 30))
    if expression == "open mouth":
        draw.ellipse((cx - 6, head_y + 20, cx + 6, head_y + 30), fill=(150, 40, 40))
    elif expression == "smile":
        draw.arc((cx - 10, head_y + 14, cx + 10, head_y + 28), 20, 160, fill=(150, 40, 40), width=2)
    else:
        draw.line((cx - 6, head_y + 24, cx + 6, head_y + 24), fill=(150, 40, 40), width=2)
    if design.accessory == "hair ribbon":
        draw.polygon([(cx + 30, head_y - 50), (cx + 55, head_y - 65), (cx + 55, head_y - 35)], fill=(250, 90, 160))
    elif design.accessory == "glasses":
        for dx in (-15, 15):
            draw.ellipse((cx + dx - 10, head_y - 5, cx + dx + 10, head_y + 15), outline=(20, 20, 20), width=2)
    else:
        draw.rectangle((cx - 45, head_y - 70, cx + 45, head_y - 48), fill=(120, 70, 30))
    tags = ["1girl", "solo", design.hair_tag, design.outfit_tag, design.accessory, expression, background_tag]
    image = Image.new("RGB", SIZE, background)
    image.paste(layer, (0, 0), layer)
    return image, tags, layer.getchannel("A")


def write_example(root: Path, masks: Path | None = None) -> None:
    for design in DESIGNS:
        folder = root / f"{REPEATS}_{design.trigger}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(IMAGES_PER_CHARACTER):
            image, tags, mask = draw_character(design, index)
            stem = folder / f"{design.trigger}_{index + 1:02d}"
            image.save(stem.with_suffix(".png"), optimize=True)
            stem.with_suffix(".txt").write_text(", ".join([design.trigger, *tags]) + "\n", encoding="utf-8")
            if masks is not None:
                (masks / folder.name).mkdir(parents=True, exist_ok=True)
                mask.save(masks / folder.name / f"{stem.name}.png", optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--masks", type=Path, default=None, help="also write each image's mask under this root")
    args = parser.parse_args()
    write_example(args.root, args.masks)


if __name__ == "__main__":
    main()
