"""Pre-flight over a generated bad-input corpus: every bad file is named, with the right severity."""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy
import pytest
from PIL import Image, features
from pixel_fixtures import PIXEL_SOURCES, opaque_rgba_png
from rich.console import Console

from kohya_1to2.dataset.preflight import (
    Problem,
    inspect_image,
    inspect_images,
    preflight,
    raise_for_errors,
    render_problems_table,
    write_fixed_sources,
)
from kohya_1to2.dataset.scan import ScanResult, scan_sources
from kohya_1to2.errors import DatasetError
from kohya_1to2.fsutil import sha256_file
from kohya_1to2.models import SourceSettings

# ---------------------------------------------------------------- corpus generators


def noisy_image_bytes(fmt: str, size: tuple[int, int] = (64, 48), **save: object) -> bytes:
    """Noise compresses badly, so a cut anywhere lands inside the pixel data."""
    image = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels in a few bytes (the data never needs decoding)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00")) + \
        png_chunk(b"IEND", b"")


def exif_rotated_jpeg(size: tuple[int, int] = (40, 20), orientation: int = 6) -> bytes:
    image = Image.new("RGB", size, (200, 30, 30))
    image.paste((0, 0, 255), (0, 0, 10, 10))  # a marker in the top-left corner, to follow the rotation
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=95)
    return buffer.getvalue()


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


Maker = Callable[..., Path]


@pytest.fixture
def put(tmp_path: Path) -> Maker:
    """`put("1_alice/a.png", image_bytes, caption)`: write an image (bytes) and an optional caption."""

    def make(rel: str, data: bytes | None = None, caption: str | bytes | None = "auto") -> Path:
        path = tmp_path / "src" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(noisy_image_bytes("PNG") if data is None else data)
        if caption is not None:
            if caption == "auto":
                caption = f"{path.parent.name.partition('_')[2]}, tag"
            text = caption.encode("utf-8") if isinstance(caption, str) else caption
            path.with_name(os.path.splitext(path.name)[0] + ".txt").write_bytes(text)
        return path

    return make


def run(tmp_path: Path, **settings: object) -> tuple[ScanResult, list[Problem]]:
    source = SourceSettings(roots=[tmp_path / "src"], **settings)  # type: ignore[arg-type]
    result = scan_sources(source)
    return result, preflight(result, source)


def only(problems: list[Problem], path: Path) -> list[tuple[str, str]]:
    """(severity, code) of the problems naming `path`, after checking the file is named in the line."""
    mine = [p for p in problems if p.path == path]
    assert all(str(path) in p.line for p in mine)
    return [(p.severity, p.code) for p in mine]


@pytest.fixture
def two_good(put: Maker) -> None:
    put("1_alice/good.png")
    put("1_bob/good.jpg", noisy_image_bytes("JPEG"))


# ---------------------------------------------------------------- images


def test_clean_dataset_has_no_problems(tmp_path: Path, two_good: None) -> None:
    assert run(tmp_path)[1] == []


def test_each_broken_image_is_an_error_naming_it(tmp_path: Path, put: Maker, two_good: None) -> None:
    png, jpeg = noisy_image_bytes("PNG"), noisy_image_bytes("JPEG")
    corrupt = bytearray(png)
    corrupt[len(png) // 2: len(png) // 2 + 64] = b"\xff" * 64  # valid header, garbage in the pixel data
    files = {
        "corrupt-image": [put("1_alice/corrupt.png", bytes(corrupt)), put("1_alice/cut.png", png[: len(png) * 2 // 3]),
                          put("1_bob/cut.jpg", jpeg[: len(jpeg) // 2])],
        "zero-byte": [put("1_alice/empty.png", b"")],
        "not-an-image": [put("1_bob/notes.png", b"this is a text file, not a PNG\n")],
    }
    problems = run(tmp_path)[1]
    for code, paths in files.items():
        for path in paths:
            assert only(problems, path) == [("error", code)], path
    assert len(problems) == 5  # the good images stay clean; all errors reported at once


def test_truncated_image_passes_a_header_scan(put: Maker) -> None:
    """Why we decode: sd-scripts reads only sizes up front, which succeeds on a truncated file."""
    png = noisy_image_bytes("PNG")
    path = put("1_alice/cut.png", png[: len(png) // 2])
    with Image.open(path) as image:
        assert image.size == (64, 48)
    assert [p.code for p in inspect_image(path)] == ["corrupt-image"]


def test_decompression_bomb_sized_image_is_an_error(put: Maker) -> None:
    path = put("1_alice/bomb.png", huge_png_header(20000, 20000))
    [problem] = inspect_image(path)
    assert (problem.severity, problem.code) == ("error", "too-large") and "pixels" in problem.message


def test_pixel_limit_warning_then_error(put: Maker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    warn = put("1_alice/big.png", noisy_image_bytes("PNG", (40, 40)))  # 1600 px: over 1x, under 2x
    fail = put("1_alice/bigger.png", noisy_image_bytes("PNG", (50, 50)))  # 2500 px: over 2x
    assert [(p.severity, p.code) for p in inspect_image(warn)] == [("warning", "very-large")]
    assert [(p.severity, p.code) for p in inspect_image(fail)] == [("error", "too-large")]


@pytest.mark.parametrize(("fmt", "suffix"), [
    ("PNG", ".png"),  # APNG
    ("GIF", ".png"),  # a GIF under an image suffix sd-scripts trains on (.gif itself is not scanned)
    pytest.param("WEBP", ".webp", marks=pytest.mark.skipif(not features.check("webp"), reason="no WebP in Pillow")),
])
def test_animated_image_warns_first_frame_used(tmp_path: Path, put: Maker, two_good: None, fmt: str,
                                               suffix: str) -> None:
    path = put(f"1_alice/anim{suffix}", animated(fmt))
    problems = run(tmp_path)[1]
    assert only(problems, path) == [("warning", "animated")]
    assert "first frame" in problems[0].message


def test_exif_rotated_jpeg_warns_sideways(tmp_path: Path, put: Maker, two_good: None) -> None:
    path = put("1_alice/rotated.jpg", exif_rotated_jpeg())
    [problem] = run(tmp_path)[1]
    assert only([problem], path) == [("warning", "exif-rotated")]
    assert "sideways" in problem.message and "--fix-sources" in problem.fix


def test_broken_symlink_image_is_an_error(tmp_path: Path, put: Maker, two_good: None) -> None:
    link = tmp_path / "src" / "1_alice" / "gone.png"
    os.symlink(tmp_path / "nowhere.png", link)
    assert only(run(tmp_path)[1], link) == [("error", "unreadable"), ("warning", "missing-caption")]


def test_odd_names_are_checked_like_any_other(tmp_path: Path, put: Maker, two_good: None) -> None:
    paths = [put(f"1_alice/{name}.png", b"") for name in ("with space", "ünï 猫", "-dash")]
    problems = run(tmp_path)[1]
    for path in paths:
        assert only(problems, path) == [("error", "zero-byte")]


# ---------------------------------------------------------------- captions


def test_image_without_caption_warns_and_strict_makes_it_an_error(tmp_path: Path, put: Maker,
                                                                  two_good: None) -> None:
    path = put("1_alice/bare.png", caption=None)
    [problem] = run(tmp_path)[1]
    assert only([problem], path) == [("warning", "missing-caption")]
    assert "empty caption" in problem.message and "--trigger-from folder" in problem.fix
    assert only(run(tmp_path, strict=True)[1], path) == [("error", "missing-caption")]


def test_empty_caption_file_is_an_error(tmp_path: Path, put: Maker, two_good: None) -> None:
    put("1_alice/a.png", caption=b"")
    caption = tmp_path / "src" / "1_alice" / "a.txt"
    [problem] = run(tmp_path)[1]
    assert only([problem], caption) == [("error", "empty-caption")] and "AssertionError" in problem.message


def test_blank_first_line_is_an_error(tmp_path: Path, put: Maker, two_good: None) -> None:
    put("1_alice/a.png", caption="  \nalice, tags on the second line\n")
    assert only(run(tmp_path)[1], tmp_path / "src" / "1_alice" / "a.txt") == [("error", "caption-no-tags")]


@pytest.mark.parametrize("caption", [" ", "\n", " \t \r\n  \n"])
def test_a_whitespace_only_caption_is_an_error_like_the_empty_file(tmp_path: Path, put: Maker, two_good: None,
                                                                   caption: str) -> None:
    """sd-scripts v0.10.1 does not assert on it (the file has a line) but trains it with an empty caption."""
    put("1_alice/a.png", caption=caption)
    [problem] = run(tmp_path)[1]
    assert only([problem], tmp_path / "src" / "1_alice" / "a.txt") == [("error", "empty-caption")]
    assert "(an empty caption)" in problem.message


def test_non_utf8_caption(tmp_path: Path, put: Maker, two_good: None) -> None:
    put("1_alice/a.png", caption="alice, café".encode("cp1252"))
    caption = tmp_path / "src" / "1_alice" / "a.txt"
    [problem] = run(tmp_path)[1]
    assert only([problem], caption) == [("error", "caption-encoding")] and "--caption-encoding" in problem.fix

    result, problems = run(tmp_path, caption_encoding="cp1252")
    assert result.characters[0].images[0].tags == ("alice", "café")  # read correctly...
    assert only(problems, caption) == [("error", "caption-not-utf8")]  # ...but sd-scripts would not
    assert only(run(tmp_path, caption_encoding="cp1252", fix_sources=True)[1], caption) == [
        ("warning", "caption-not-utf8")
    ]


def test_bom_and_crlf_captions_are_fine(tmp_path: Path, put: Maker, two_good: None) -> None:
    put("1_alice/a.png", caption="\ufeffalice, red hair\r\n".encode())
    assert run(tmp_path)[1] == []


# ---------------------------------------------------------------- dataset level, policy, errors


def test_one_character_is_nothing_to_pair(tmp_path: Path, put: Maker) -> None:
    put("1_alice/a.png")
    [problem] = run(tmp_path)[1]
    assert (problem.severity, problem.code) == ("error", "nothing-to-pair") and "nothing to pair" in problem.line


def test_errors_come_first_and_scan_problems_stay_in_the_scan(tmp_path: Path, put: Maker, two_good: None) -> None:
    put("1_alice/bare.png", caption=None)
    (tmp_path / "src" / "2_nobody").mkdir()
    put("1_alice/empty.png", b"")
    result, problems = run(tmp_path)
    assert [p.code for p in problems] == ["zero-byte", "missing-caption"]
    assert [p.code for p in result.problems] == ["no-images"]  # reported once, by the scan


def test_strict_keeps_fixed_warnings(tmp_path: Path, put: Maker, two_good: None) -> None:
    path = put("1_alice/rotated.jpg", exif_rotated_jpeg())
    assert only(run(tmp_path, strict=True)[1], path) == [("error", "exif-rotated")]
    assert only(run(tmp_path, strict=True, fix_sources=True)[1], path) == [("warning", "exif-rotated")]


def test_raise_for_errors_is_one_line_with_count(tmp_path: Path, put: Maker, two_good: None) -> None:
    first = put("1_alice/a_empty.png", b"")
    put("1_bob/b_empty.png", b"")
    problems = run(tmp_path)[1]
    with pytest.raises(DatasetError) as caught:
        raise_for_errors(problems)
    message = caught.value.message
    assert "\n" not in message and message.startswith("2 dataset error(s)") and str(first) in message
    assert caught.value.hint and caught.value.exit_code == 3


def test_warnings_alone_do_not_raise(tmp_path: Path, put: Maker, two_good: None) -> None:
    bare = put("1_alice/bare.png", caption=None)
    problems = run(tmp_path)[1]
    assert [(p.severity, p.code, p.path) for p in problems] == [("warning", "missing-caption", bare)]
    raise_for_errors(problems)  # a warning alone does not raise


def test_problems_table_names_files(tmp_path: Path, put: Maker, two_good: None) -> None:
    put("1_alice/empty.png", b"")
    console = Console(width=300, record=True)
    console.print(render_problems_table(run(tmp_path)[1]))
    text = console.export_text()
    assert "empty.png" in text and "error" in text


# ---------------------------------------------------------------- many images: the process pool


def test_pool_keeps_order_and_reports_progress(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    paths = []
    for i in range(70):
        path = folder / f"{i:03d}.png"
        path.write_bytes(b"" if i in (5, 66) else noisy_image_bytes("PNG", (8, 8)))
        paths.append(path)
    ticks: list[int] = []
    results = inspect_images(paths, progress=ticks.append, workers=2)
    assert sum(ticks) == 70 and len(ticks) < 70  # reported per batch
    assert [i for i, found in enumerate(results) if found] == [5, 66]
    assert results[66][0].path == paths[66]


def test_sequential_progress_counts_every_image(tmp_path: Path, two_good: None) -> None:
    source = SourceSettings(roots=[tmp_path / "src"])
    ticks: list[int] = []
    preflight(scan_sources(source), source, progress=ticks.append)
    assert sum(ticks) == 2


# ---------------------------------------------------------------- --fix-sources


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def test_write_fixed_sources_corrects_copies_and_never_touches_originals(tmp_path: Path, put: Maker,
                                                                        two_good: None) -> None:
    rotated = put("1_alice/rotated.jpg", exif_rotated_jpeg((40, 20)))
    put("1_alice/bare.png", caption=None)
    put("1_alice/latin.png", caption="alice, café".encode("cp1252"))
    before = tree_hashes(tmp_path / "src")
    result, problems = run(tmp_path, caption_encoding="cp1252", fix_sources=True)
    raise_for_errors(problems)
    run_dir = tmp_path / "run"

    fixed = write_fixed_sources(result, problems, run_dir, (255, 255, 255))

    assert tree_hashes(tmp_path / "src") == before
    alice, bob = fixed.characters
    copy = run_dir / "sources" / "1_alice"
    assert alice.folder == copy and bob == result.characters[1]  # unaffected character untouched
    assert {image.path.parent for image in alice.images} == {copy}
    assert all(image.path.is_file() for image in alice.images)
    with Image.open(copy / "rotated.jpg") as upright:
        assert upright.size == (20, 40) and upright.getexif().get(0x0112, 1) == 1
    with Image.open(rotated) as original:
        assert original.size == (40, 20)
    assert (copy / "bare.txt").read_text(encoding="utf-8") == "alice\n"
    assert (copy / "latin.txt").read_text(encoding="utf-8") == "alice, café"
    assert (copy / "good.txt").read_bytes() == (tmp_path / "src" / "1_alice" / "good.txt").read_bytes()
    assert [image.rel_key for image in alice.images] == [image.rel_key for image in result.characters[0].images]

    # a re-run over fixed copies reports nothing left to fix there
    again = preflight(fixed.model_copy(update={"problems": ()}), fixed.settings.model_copy(
        update={"fix_sources": False, "caption_encoding": "utf-8"}))
    assert again == []


def test_write_fixed_sources_rerun_replaces_and_drops_stale(tmp_path: Path, put: Maker, two_good: None) -> None:
    put("1_alice/rotated.jpg", exif_rotated_jpeg())
    run_dir = tmp_path / "run"
    result, problems = run(tmp_path, fix_sources=True)
    write_fixed_sources(result, problems, run_dir, (255, 255, 255))
    write_fixed_sources(result, problems, run_dir, (255, 255, 255))  # idempotent
    assert sorted(p.name for p in (run_dir / "sources").iterdir()) == ["1_alice"]

    (tmp_path / "src" / "1_alice" / "rotated.jpg").unlink()
    result, problems = run(tmp_path, fix_sources=True)
    assert write_fixed_sources(result, problems, run_dir, (255, 255, 255)).characters == result.characters
    assert list((run_dir / "sources").iterdir()) == []


def test_write_fixed_sources_without_flag_does_nothing(tmp_path: Path, put: Maker, two_good: None) -> None:
    put("1_alice/rotated.jpg", exif_rotated_jpeg())
    result, problems = run(tmp_path)
    assert write_fixed_sources(result, problems, tmp_path / "run", (255, 255, 255)) is result
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- 16-bit and transparency


@pytest.mark.parametrize(("name", "code"), [
    ("grey16.png", "sixteen-bit"), ("la.png", "transparency"), ("palette.png", "transparency"),
    ("rgba.png", "transparency"), ("rgba.webp", "transparency"),
])
def test_sixteen_bit_and_transparent_images_are_fixable_warnings(tmp_path: Path, put: Maker, two_good: None,
                                                                 name: str, code: str) -> None:
    path = put(f"1_alice/{name}", PIXEL_SOURCES[name]())
    _, problems = run(tmp_path)
    assert only(problems, path) == [("warning", code)]
    (problem,) = [p for p in problems if p.path == path]
    assert problem.fixable and "--fix-sources" in problem.fix
    assert ("--background" in problem.fix) == (code == "transparency")


def test_opaque_alpha_and_plain_palette_are_not_warned(tmp_path: Path, put: Maker, two_good: None) -> None:
    put("1_alice/opaque.png", opaque_rgba_png())
    put("1_alice/palette.png", noisy_image_bytes("GIF"))  # P mode, no transparency
    assert run(tmp_path)[1] == []


def test_pixel_warnings_become_errors_under_strict_unless_fixed(tmp_path: Path, put: Maker, two_good: None) -> None:
    path = put("1_alice/rgba.png", PIXEL_SOURCES["rgba.png"]())
    assert only(run(tmp_path, strict=True)[1], path) == [("error", "transparency")]
    assert only(run(tmp_path, strict=True, fix_sources=True)[1], path) == [("warning", "transparency")]


def test_fixed_copies_are_8bit_rgb_flattened_on_the_background_same_name_and_format(
        tmp_path: Path, put: Maker, two_good: None) -> None:
    for name, make in PIXEL_SOURCES.items():
        put(f"1_alice/{name}", make())
    result, problems = run(tmp_path, fix_sources=True)
    fixed = write_fixed_sources(result, problems, tmp_path / "run", (0, 0, 255))
    copy = tmp_path / "run" / "sources" / "1_alice"
    assert {image.path.name for image in fixed.characters[0].images} >= set(PIXEL_SOURCES)
    for name in PIXEL_SOURCES:
        with Image.open(copy / name) as image:
            assert image.mode == "RGB" and image.format == {".png": "PNG", ".webp": "WEBP"}[Path(name).suffix]
            if name != "grey16.png":
                assert image.getpixel((0, 0)) == (0, 0, 255)  # fully transparent corner -> the background
    with Image.open(copy / "grey16.png") as grey:
        assert 120 <= numpy.asarray(grey.convert("L")).mean() <= 135  # not clipped to white
    again = preflight(fixed.model_copy(update={"problems": ()}),
                      fixed.settings.model_copy(update={"fix_sources": False}))
    assert again == []


def test_mixed_utf8_and_cp1252_captions_keep_both_intact(tmp_path: Path, put: Maker, two_good: None) -> None:
    from kohya_1to2.dataset.captions import split_tags
    from kohya_1to2.dataset.preflight import write_fixed_sources

    put("1_alice/utf8.png", caption="alice, café latte")
    put("1_alice/legacy.png", caption="alice, crème brûlée".encode("cp1252"))
    legacy = tmp_path / "src" / "1_alice" / "legacy.txt"
    result, problems = run(tmp_path, caption_encoding="cp1252", fix_sources=True)
    alice = result.characters[0]
    tags = {image.path.name: image.tags for image in alice.images}  # what stage 2's captions are built from
    assert tags["utf8.png"] == ("alice", "café latte") and tags["legacy.png"] == ("alice", "crème brûlée")
    needed = [p for p in problems if p.code == "caption-not-utf8"]
    assert [p.path for p in needed] == [legacy], "only the file that needed the fallback is listed"
    assert "--caption-encoding cp1252" in needed[0].message

    fixed = write_fixed_sources(result, problems, tmp_path / "run", (255, 255, 255)).characters[0]
    stage1 = {image.path.name: image.caption_path for image in fixed.images}
    for name, expected in (("utf8.png", "café latte"), ("legacy.png", "crème brûlée")):
        caption_path = stage1[name]
        assert caption_path is not None and caption_path.parent == tmp_path / "run" / "sources" / "1_alice"
        text = caption_path.read_bytes().decode("utf-8")  # as sd-scripts' read_caption opens it
        assert split_tags(text) == ("alice", expected)
