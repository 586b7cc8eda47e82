"""Source images whose pixels sd-scripts' bare `convert("RGB")` reads differently from the composites."""

from __future__ import annotations

import io

import numpy
from PIL import Image

SIZE = (24, 16)


def _encode(image: Image.Image, fmt: str = "PNG", **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def sixteen_bit_png() -> bytes:
    """16-bit greyscale around mid-grey (mean 127 in 8 bits): `convert("RGB")` clips it to white."""
    ramp = numpy.linspace(100 * 257, 155 * 257, SIZE[0] * SIZE[1]).astype(numpy.uint16).reshape(SIZE[1], SIZE[0])
    return _encode(Image.fromarray(ramp))


def _alpha() -> Image.Image:
    """Left third transparent, middle third half transparent, right third opaque."""
    alpha = numpy.full((SIZE[1], SIZE[0]), 255, numpy.uint8)
    alpha[:, : SIZE[0] // 3] = 0
    alpha[:, SIZE[0] // 3 : 2 * SIZE[0] // 3] = 128
    return Image.fromarray(alpha)


def _colours(seed: int) -> numpy.ndarray:
    return numpy.random.default_rng(seed).integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=numpy.uint8)


def rgba(fmt: str = "PNG") -> bytes:
    """Noisy colours (also under the transparent part) with `_alpha`."""
    image = Image.fromarray(_colours(1))
    image.putalpha(_alpha())
    return _encode(image, fmt, **({"lossless": True, "exact": True} if fmt == "WEBP" else {}))


def la_png() -> bytes:
    image = Image.fromarray(_colours(2)[:, :, 0]).convert("L")
    image.putalpha(_alpha())
    return _encode(image.convert("LA"))


def p_transparent_png() -> bytes:
    """Palette image whose index 1 (grey 90) is the transparent one, used on the left half."""
    image = Image.new("P", SIZE, 0)
    image.putpalette([200, 30, 30, 90, 90, 90, 30, 200, 30])
    image.paste(1, (0, 0, SIZE[0] // 2, SIZE[1]))
    image.paste(2, (SIZE[0] // 2, 0, SIZE[0], SIZE[1] // 2))
    return _encode(image, transparency=1)


def opaque_rgba_png() -> bytes:
    """RGBA with every pixel opaque: `convert("RGB")` is already exact, nothing to warn about."""
    return _encode(Image.fromarray(_colours(3)).convert("RGBA"))


PIXEL_SOURCES = {
    "grey16.png": sixteen_bit_png,
    "la.png": la_png,
    "palette.png": p_transparent_png,
    "rgba.png": rgba,
    "rgba.webp": lambda: rgba("WEBP"),
}
"""File name -> generator of every kind that pre-flight warns about and --fix-sources flattens."""
