"""compose.py: every source mode becomes 8-bit RGB, layout arithmetic, encoding and names."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from kohya_1to2.dataset import compose
from kohya_1to2.errors import DatasetError, UsageError
from kohya_1to2.models import CompositeSettings

BG = (10, 200, 30)


def _save(image: Image.Image, path: Path, **params: object) -> Path:
    image.save(path, **params)
    return path


def test_rgba_transparent_pixels_take_the_background(tmp_path: Path) -> None:
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))
    loaded = compose.load_source(_save(image, tmp_path / "a.png"), BG)
    assert loaded.mode == "RGB"
    assert loaded.getpixel((5, 5)) == BG
    assert loaded.getpixel((0, 0)) == (255, 0, 0)


def test_half_transparent_pixels_blend_with_the_background(tmp_path: Path) -> None:
    image = Image.new("RGBA", (4, 4), (255, 255, 255, 128))
    loaded = compose.load_source(_save(image, tmp_path / "a.png"), (0, 0, 0))
    red, green, blue = loaded.getpixel((1, 1))  # type: ignore[misc]
    assert 120 <= red <= 135 and red == green == blue


def test_la_image_is_flattened(tmp_path: Path) -> None:
    image = Image.new("LA", (6, 6), (100, 0))
    image.putpixel((2, 2), (100, 255))
    loaded = compose.load_source(_save(image, tmp_path / "la.png"), BG)
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == BG
    assert loaded.getpixel((2, 2)) == (100, 100, 100)


def test_palette_with_transparent_index_is_flattened(tmp_path: Path) -> None:
    image = Image.new("P", (6, 6), 0)
    image.putpalette([0, 0, 255, 255, 255, 0] + [0] * 762)
    image.putpixel((1, 1), 1)
    path = _save(image, tmp_path / "p.png", transparency=0)
    loaded = compose.load_source(path, BG)
    assert loaded.getpixel((0, 0)) == BG
    assert loaded.getpixel((1, 1)) == (255, 255, 0)


def test_palette_without_transparency_keeps_colours(tmp_path: Path) -> None:
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 12, 34, 56] + [0] * 762)
    loaded = compose.load_source(_save(image, tmp_path / "p.png"), BG)
    assert loaded.getpixel((0, 0)) == (12, 34, 56)


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    image = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    loaded = compose.load_source(_save(image, tmp_path / "c.jpg", quality=100), BG)
    assert loaded.mode == "RGB"
    red, green, blue = loaded.getpixel((8, 8))  # type: ignore[misc]
    assert red > 200 and green < 60 and blue < 60


def test_sixteen_bit_greyscale_keeps_its_brightness(tmp_path: Path) -> None:
    image = Image.new("I;16", (8, 8), 0)
    image.putpixel((0, 0), 65535)
    image.putpixel((1, 0), 32768)
    loaded = compose.load_source(_save(image, tmp_path / "g16.png"), BG)
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == (255, 255, 255)
    assert loaded.getpixel((1, 0)) == (128, 128, 128)
    assert loaded.getpixel((4, 4)) == (0, 0, 0)


def test_32_bit_integer_mode_is_scaled(tmp_path: Path) -> None:
    image = Image.new("I", (4, 4), 256 * 200)
    loaded = compose.to_rgb(image, BG)
    assert loaded.getpixel((0, 0)) == (200, 200, 200)


@pytest.mark.parametrize("mode", ["L", "1"])
def test_greyscale_and_bilevel_become_rgb(tmp_path: Path, mode: str) -> None:
    image = Image.new(mode, (4, 4), 255 if mode == "L" else 1)
    loaded = compose.load_source(_save(image, tmp_path / f"{mode}.png"), BG)
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # Stored 20x10 with a red left half; orientation 6 means "rotate 90 degrees clockwise to view".
    image = Image.new("RGB", (20, 10), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(image, tmp_path / "rot.jpg", exif=exif, quality=100)
    loaded = compose.load_source(path, BG)
    assert loaded.size == (10, 20)
    top = loaded.getpixel((5, 2))
    bottom = loaded.getpixel((5, 17))
    assert top[0] > 200 and top[2] < 60  # type: ignore[index]
    assert bottom[2] > 200 and bottom[0] < 60  # type: ignore[index]
    assert loaded.info[compose.SOURCE_SIZE_KEY] == (10, 20)


def test_animated_image_gives_its_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    loaded = compose.load_source(path, BG)
    red, _, blue = loaded.getpixel((4, 4))  # type: ignore[misc]
    assert red > 200 and blue < 60


def test_large_source_is_shrunk_on_load_but_records_its_size(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (400, 200), (1, 2, 3)), tmp_path / "big.jpg")
    loaded = compose.load_source(path, BG, max_side=100)
    assert loaded.size == (100, 50)
    assert loaded.info[compose.SOURCE_SIZE_KEY] == (400, 200)


def test_unreadable_source_is_a_dataset_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DatasetError, match=r"broken\.png"):
        compose.load_source(path, BG)


# ---------------------------------------------------------------- layout


def test_common_height_is_the_smaller_one_and_nothing_is_upscaled() -> None:
    left = Image.new("RGB", (100, 200), (255, 0, 0))
    right = Image.new("RGB", (50, 100), (0, 0, 255))
    out = compose.compose_pair(left, right, CompositeSettings(max_side=None))
    assert out.size == (100, 100)  # left shrunk to 50x100, right kept
    assert out.getpixel((10, 50)) == (255, 0, 0)
    assert out.getpixel((75, 50)) == (0, 0, 255)


def test_gap_is_filled_with_the_background() -> None:
    left = Image.new("RGB", (20, 10), (255, 0, 0))
    right = Image.new("RGB", (20, 10), (0, 0, 255))
    out = compose.compose_pair(left, right, CompositeSettings(gap=6, background="#00ff00", max_side=None))
    assert out.size == (46, 10)
    assert [out.getpixel((x, 5)) for x in (19, 20, 25, 26)] == [(255, 0, 0), (0, 255, 0), (0, 255, 0), (0, 0, 255)]


def test_long_side_is_capped() -> None:
    left = Image.new("RGB", (300, 200), (255, 0, 0))
    right = Image.new("RGB", (300, 200), (0, 0, 255))
    out = compose.compose_pair(left, right, CompositeSettings(max_side=300, gap=0))
    assert out.size == (300, 100)


@given(
    st.tuples(st.integers(1, 3000), st.integers(1, 3000)),
    st.tuples(st.integers(1, 3000), st.integers(1, 3000)),
    st.integers(0, 40),
    st.one_of(st.none(), st.integers(64, 2048)),
)
def test_layout_invariants(left: tuple[int, int], right: tuple[int, int], gap: int, max_side: int | None) -> None:
    layout = compose.pair_layout(left, right, gap, max_side)
    assert layout.left[1] == layout.right[1] <= min(left[1], right[1])
    assert layout.left[0] >= 1 and layout.right[0] >= 1
    if max_side is not None:
        assert max(layout.size) <= max_side
    else:
        assert layout.left[1] == min(left[1], right[1])


def test_gap_that_leaves_no_room_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="gap"):
        compose.pair_layout((10, 10), (10, 10), gap=100, max_side=100)


# ---------------------------------------------------------------- encoding


def _noisy(size: tuple[int, int] = (64, 48)) -> Image.Image:
    return Image.frombytes("RGB", size, bytes((i * 37 + (i // 7) * 11) % 256 for i in range(size[0] * size[1] * 3)))


def _realistic(size: tuple[int, int] = (256, 192)) -> Image.Image:
    """A smooth colour field with shapes and sensor-like noise: compresses like a photo or a render."""
    small = Image.merge("RGB", [Image.effect_noise((size[0] // 16, size[1] // 16), 60) for _ in range(3)])
    image = small.resize(size, Image.Resampling.BICUBIC)
    noise = Image.merge("RGB", [Image.effect_noise(size, 6) for _ in range(3)])
    image = Image.blend(image, noise, 0.1)
    ImageDraw.Draw(image).ellipse((20, 20, 120, 140), fill=(200, 40, 90))
    return image


def _idat_zlib_level(png: bytes) -> int:
    """FLEVEL of the first IDAT's zlib header: 0 = fastest ... 3 = maximum compression."""
    at = png.index(b"IDAT") + 4
    return png[at + 1] >> 6


@pytest.fixture(params=["default", "pillow"])
def png_encoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both PNG paths: OpenCV's libpng when installed (the default), and Pillow without it."""
    if request.param == "pillow":
        monkeypatch.setattr(compose, "opencv_version", lambda: None)
    return compose.png_encoder()


def test_png_is_lossless_and_deterministic(png_encoder: str) -> None:
    image = _noisy()
    first, second = compose.encode(image, "png"), compose.encode(image, "png")
    assert first == second
    decoded = Image.open(io.BytesIO(first))
    assert decoded.mode == "RGB" and decoded.tobytes() == image.tobytes()


def test_png_uses_fastest_zlib_level_at_near_default_size(png_encoder: str) -> None:
    image = _realistic()
    fast = compose.encode(image, "png")
    assert _idat_zlib_level(fast) == 0
    default = io.BytesIO()
    image.save(default, "PNG", compress_level=6)
    assert _idat_zlib_level(default.getvalue()) == 2
    assert len(fast) < 1.2 * len(default.getvalue())


def test_pillow_fallback_is_level_1_run_length(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compose, "opencv_version", lambda: None)
    image = _noisy((128, 96))
    reference = io.BytesIO()
    image.save(reference, "PNG", compress_level=1, compress_type=zlib.Z_RLE)
    assert compose.encode(image, "png") == reference.getvalue()
    assert compose.png_encoder().startswith("pillow-")


@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_lossy_formats_honour_quality(fmt: str) -> None:
    image = _noisy((128, 128))
    low, high = compose.encode(image, fmt, 20), compose.encode(image, fmt, 95)
    assert len(low) < len(high)
    assert Image.open(io.BytesIO(high)).format == {"jpg": "JPEG", "webp": "WEBP"}[fmt]


# ---------------------------------------------------------------- names


def test_composite_name_format() -> None:
    assert compose.composite_name(42, "Alice", "Bob Marley", "png") == "000042_Alice__Bob_Marley.png"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Zoë", "Zoë"),
        ("初音ミク", "初音ミク"),
        ("../../etc/passwd", "etc_passwd"),
        ("a\\b/c", "a_b_c"),
        ("-rf", "rf"),
        (".hidden", "hidden"),
        ("  spaced   out  ", "spaced_out"),
        ("///", "character"),
        ("x__y", "x_y"),
    ],
)
def test_slug_is_readable_and_safe(name: str, expected: str) -> None:
    assert compose.slug(name) == expected


@given(st.text(max_size=80))
def test_slug_never_escapes_or_hides(name: str) -> None:
    result = compose.slug(name)
    assert result and "/" not in result and "\\" not in result and "\x00" not in result
    assert not result.startswith(("-", ".")) and "__" not in result
    assert len(result) <= 48


@pytest.mark.parametrize("gap", [0, 5])
def test_the_composite_canvas_encodes_to_the_bytes_of_encode_join(png_encoder: str, gap: int) -> None:
    left, right = _realistic((40, 30)), _realistic((24, 30)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    layout = compose.pair_layout(left.size, right.size, gap, None)
    joined = compose.join(left, right, layout, BG)
    canvas = compose.composite_canvas(left, right, layout, BG)
    data = compose.encode_canvas(canvas)
    assert data == compose.encode(joined, "png")
    assert Image.open(io.BytesIO(data)).tobytes() == joined.tobytes()
    assert compose.canvas_image(canvas).tobytes() == joined.tobytes()  # what a worker's thumbnail is made from


# ---------------------------------------------------------------- groups of three or four side by side


@given(
    st.lists(st.tuples(st.integers(1, 3000), st.integers(1, 3000)), min_size=2, max_size=4),
    st.integers(0, 40),
    st.one_of(st.none(), st.integers(64, 2048)),
)
def test_row_layout_invariants(sizes: list[tuple[int, int]], gap: int, max_side: int | None) -> None:
    if max_side is not None and max_side - gap * (len(sizes) - 1) < len(sizes):  # not a pixel per member left
        with pytest.raises(UsageError, match="gap"):
            compose.row_layout(sizes, gap, max_side)
        return
    layout = compose.row_layout(sizes, gap, max_side)
    assert len(layout.members) == len(sizes) and len({h for _, h in layout.members}) == 1
    assert layout.members[0][1] <= min(h for _, h in sizes) and all(w >= 1 for w, _ in layout.members)
    assert layout.size[0] == sum(w for w, _ in layout.members) + gap * (len(sizes) - 1)
    if max_side is not None:
        assert max(layout.size) <= max_side
    if len(sizes) == 2:
        assert layout == compose.pair_layout(sizes[0], sizes[1], gap, max_side)


@pytest.mark.parametrize("gap", [0, 5])
@pytest.mark.parametrize("bucket", [None, (640, 128)])
def test_three_members_join_side_by_side_and_encode_alike_on_both_paths(png_encoder: str, gap: int,
                                                                         bucket: tuple[int, int] | None) -> None:
    images = [_realistic((40, 30)), _realistic((24, 30)).transpose(Image.Transpose.FLIP_LEFT_RIGHT),
              _realistic((30, 30)).rotate(90)]
    sizes = [image.size for image in images]
    layout = compose.row_layout(sizes, gap, None) if bucket is None else \
        compose.pad_row_to_aspect(sizes, gap, None, bucket)
    joined = compose.join_row(images, layout, BG)
    assert joined.size == layout.size
    if bucket is None:
        assert joined.size == (40 + 24 + 30 + 2 * gap, 30)
    else:
        assert abs(joined.size[0] / joined.size[1] - 5) < 0.05 and joined.getpixel((0, 0)) == BG
    for image, x in zip(images, layout.offsets, strict=True):  # each member where the layout says
        y = layout.origin[1]
        assert joined.crop((x, y, x + image.width, y + image.height)).tobytes() == image.tobytes()
    if gap:
        assert joined.getpixel((layout.offsets[1] - 1, layout.origin[1])) == BG
    canvas = compose.row_canvas(images, layout, BG)
    assert compose.encode_canvas(canvas) == compose.encode(joined, "png")


def test_a_group_composite_is_named_by_its_members_left_to_right() -> None:
    assert compose.group_name(7, ["Alice", "bob", "Carol Ann"], "webp") == "000007_Alice__bob__Carol_Ann.webp"
    assert compose.group_name(42, ["Alice", "Bob Marley"], "png") == compose.composite_name(42, "Alice", "Bob Marley",
                                                                                          "png")
