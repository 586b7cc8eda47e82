"""Scanning N_name/ folders: characters, triggers, ignored folders, odd file names, symlink loops."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console
from sample_images import write_image

from kohya_1to2.dataset.scan import (
    ScanResult,
    caption_path_for,
    choose_trigger,
    parse_folder_name,
    render_scan_table,
    scan_reg,
    scan_sources,
    trigger_first_tags,
)
from kohya_1to2.models import SourceSettings


def scan(*roots: Path, **settings: object) -> ScanResult:
    return scan_sources(SourceSettings(roots=list(roots), **settings))  # type: ignore[arg-type]


def codes(result: ScanResult) -> list[str]:
    return [problem.code for problem in result.problems]


def add(folder: Path, stem: str, caption: str | bytes | None, suffix: str = ".png") -> Path:
    image = write_image(folder / f"{stem}{suffix}", size=(16, 16))
    if caption is not None:
        data = caption.encode("utf-8") if isinstance(caption, str) else caption
        (folder / f"{stem}.txt").write_bytes(data)
    return image


# ---------------------------------------------------------------- pure parsing


@pytest.mark.parametrize(
    ("name", "expected"),
    [("3_alice", (3, "alice")), ("1_alice_smith", (1, "alice_smith")), ("10_bob jones", (10, "bob jones"))],
)
def test_parse_folder_name_accepts_n_name(name: str, expected: tuple[int, str]) -> None:
    assert parse_folder_name(name) == expected


@pytest.mark.parametrize(("name", "reason"), [("alice", "not N_name"), ("x_alice", "not N_name"),
                                              ("3_", "nothing after"), ("0_alice", "must be >= 1"),
                                              ("²_alice", "not N_name")])
def test_parse_folder_name_explains_rejections(name: str, reason: str) -> None:
    result = parse_folder_name(name)
    assert isinstance(result, str) and reason in result


def test_choose_trigger_majority_and_disagreeing_files() -> None:
    trigger, disagree = choose_trigger([("a.png", "alice"), ("b.png", "alicia"), ("c.png", "alice")], "x")
    assert trigger == "alice" and disagree == ["b.png"]


def test_choose_trigger_tie_prefers_folder_name_then_alphabetical() -> None:
    assert choose_trigger([("a", "zed"), ("b", "alice")], "alice")[0] == "alice"
    assert choose_trigger([("a", "zed"), ("b", "amy")], "other")[0] == "amy"


def test_trigger_first_tags_put_the_trigger_first() -> None:
    assert trigger_first_tags(("alicia", "1girl"), "alice", "caption") == ("alice", "1girl")
    assert trigger_first_tags(("1girl", "alice", "solo"), "alice", "folder") == ("alice", "1girl", "solo")
    assert trigger_first_tags((), "alice", "caption") == ("alice",)


def test_caption_path_keeps_dots_in_stem() -> None:
    assert caption_path_for(Path("/d/a.b.PNG"), ".txt") == Path("/d/a.b.txt")


# ---------------------------------------------------------------- scanning folders


def test_scan_finds_characters_sorted_with_triggers(kohya_dataset: Callable[..., Path]) -> None:
    root = kohya_dataset({"bob": 2, "alice": 3})
    result = scan(root)
    assert [c.name for c in result.characters] == ["alice", "bob"]
    alice = result.characters[0]
    assert alice.trigger == "alice" and alice.repeats == 1 and alice.folder == root / "1_alice"
    assert [image.path.name for image in alice.images] == ["alice_00.png", "alice_01.png", "alice_02.png"]
    assert alice.images[1].tags == ("alice", "tag_alice1", "1girl", "solo")
    assert alice.images[1].caption_path == root / "1_alice" / "alice_01.txt"
    assert result.problems == ()


def test_scan_is_listing_order_independent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "src"
    for stem in ("c", "a", "b", "e", "d"):
        add(root / "2_x", stem, "x, t")
        add(root / "1_y", stem, "y, t")
    first = scan(root)
    real_scandir = os.scandir

    class Shuffled:
        def __init__(self, path: Path) -> None:
            self.entries = list(real_scandir(path))
            random.Random(7).shuffle(self.entries)

        def __enter__(self) -> list[os.DirEntry[str]]:
            return self.entries

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(os, "scandir", Shuffled)
    assert scan(root) == first


def test_suffixes_in_any_case_and_dotfiles_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "src" / "1_alice"
    add(folder, "a", "alice", ".PNG")
    add(folder, "b", "alice", ".JpEg")
    (folder / "._a.png").write_bytes(b"\x00\x05AppleDouble")  # macOS metadata twin; sd-scripts' glob skips it
    (folder / "notes.md").write_text("hi")
    add(tmp_path / "src" / "1_bob", "c", "bob")
    result = scan(tmp_path / "src")
    assert [i.path.name for i in result.characters[0].images] == ["a.PNG", "b.JpEg"]
    mixed = [p for p in result.problems if p.code == "suffix-case"]
    assert [p.path.name for p in mixed if p.path] == ["b.JpEg"] and mixed[0].severity == "warning"


def test_disagreeing_triggers_warn_and_list_the_files(tmp_path: Path) -> None:
    folder = tmp_path / "src" / "1_alice"
    for stem in ("a", "b", "c"):
        add(folder, stem, "alice, smile")
    add(folder, "odd one", "alicia, smile")
    add(tmp_path / "src" / "1_bob", "x", "bob")
    result = scan(tmp_path / "src")
    assert result.characters[0].trigger == "alice"
    [problem] = [p for p in result.problems if p.code == "trigger-mismatch"]
    assert problem.severity == "warning" and "odd one.png" in problem.line and "a.png" not in problem.message
    assert [p.severity for p in scan(tmp_path / "src", strict=True).problems] == ["error"]


def test_trigger_from_folder_and_when_no_caption(tmp_path: Path) -> None:
    add(tmp_path / "src" / "1_alice", "a", "someone, smile")
    add(tmp_path / "src" / "2_bob", "b", None)
    by_caption = scan(tmp_path / "src")
    assert [c.trigger for c in by_caption.characters] == ["someone", "bob"]
    assert by_caption.characters[1].images[0].caption_path is None
    by_folder = scan(tmp_path / "src", trigger_from="folder")
    assert [c.trigger for c in by_folder.characters] == ["alice", "bob"]
    assert by_folder.characters[0].images[0].tags == ("alice", "someone", "smile")


def test_bom_and_crlf_captions_parse(tmp_path: Path) -> None:
    add(tmp_path / "src" / "1_alice", "a", "\ufeffalice, red hair\r\nsecond line\r\n".encode())
    add(tmp_path / "src" / "1_bob", "b", b"bob, hat\r\n")
    result = scan(tmp_path / "src")
    assert result.characters[0].trigger == "alice"
    assert result.characters[0].images[0].tags == ("alice", "red hair")
    assert result.characters[1].images[0].tags == ("bob", "hat")


def test_other_caption_encoding_is_read(tmp_path: Path) -> None:
    add(tmp_path / "src" / "1_zoe", "a", "zoë, café".encode("cp1252"))
    add(tmp_path / "src" / "1_bob", "b", "bob")
    assert scan(tmp_path / "src").characters[1].trigger == "zoe"  # undecodable: falls back to folder
    result = scan(tmp_path / "src", caption_encoding="cp1252")
    assert result.characters[1].trigger == "zoë" and result.characters[1].images[0].tags == ("zoë", "café")


def test_ignored_folders_are_reported_with_reasons(tmp_path: Path) -> None:
    root = tmp_path / "src"
    add(root / "1_alice", "a", "alice")
    add(root / "1_bob", "b", "bob")
    add(root / "reg", "r", "person")
    add(root / "1_reg", "r", "person")
    add(root / "misc", "m", "x")
    add(root / "0_carol", "c", "carol")
    (root / "3_empty").mkdir()
    (root / "3_empty" / "readme.txt").write_text("nothing")
    add(root / "1_alice" / "nested", "n", "alice")
    result = scan(root)
    reasons = {i.path.name: i.reason for i in result.ignored}
    # offered, not used: the reason names the flag that would use them
    assert reasons["reg"].endswith(f"pass --reg {root / 'reg'}")
    assert reasons["1_reg"].endswith(f"pass --reg {root / '1_reg'}")
    assert "not N_name" in reasons["misc"]
    assert "must be >= 1" in reasons["0_carol"]
    assert reasons["3_empty"] == "no images"
    assert "does not recurse" in reasons["nested"]
    assert [c.name for c in result.characters] == ["alice", "bob"]
    assert {"bad-repeats", "no-images"} <= set(codes(result))


def test_reg_root_is_ignored(tmp_path: Path, kohya_dataset: Callable[..., Path]) -> None:
    src = kohya_dataset({"alice": 1, "bob": 1})
    reg = kohya_dataset({"person": 2}, root_name="regularization")
    result = scan(src, reg)
    assert [c.name for c in result.characters] == ["alice", "bob"]
    assert [(i.path, f"--reg {reg}" in i.reason) for i in result.ignored] == [(reg, True)]


def test_reg_roots_are_scanned_as_kohya_class_folders(tmp_path: Path) -> None:
    reg = tmp_path / "reg"
    add(reg / "2_1girl", "g1", "1girl, solo")
    add(reg / "2_1girl", "g2", None)
    add(reg / "notes", "n", "x")
    single = tmp_path / "1_1boy"
    add(single, "b", "1boy")
    found = scan_reg([reg, single], SourceSettings(roots=[tmp_path]))
    assert [(s.name, s.repeats, len(s.images)) for s in found.sets] == [("1girl", 2, 2), ("1boy", 1, 1)]
    assert [i.caption_path is None for i in found.sets[0].images] == [False, True]
    assert [i.path.name for i in found.ignored] == ["notes"] and not found.problems


def test_reg_root_without_class_folders_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    found = scan_reg([tmp_path / "empty", tmp_path / "missing"], SourceSettings(roots=[tmp_path]))
    assert [p.code for p in found.problems] == ["reg-missing"]
    assert [p.code for p in scan_reg([tmp_path / "empty"], SourceSettings(roots=[tmp_path])).problems] == ["reg-empty"]


def test_missing_root_and_root_that_is_a_character_folder(tmp_path: Path) -> None:
    add(tmp_path / "src" / "1_alice", "a", "alice")
    result = scan(tmp_path / "nope", tmp_path / "src" / "1_alice")
    missing, is_char = result.problems
    assert missing.code == "root-missing" and missing.severity == "error" and "nope" in missing.line
    assert is_char.code == "root-is-character" and str(tmp_path / "src") in is_char.fix


def test_same_name_in_two_roots_is_an_error_naming_both(kohya_dataset: Callable[..., Path]) -> None:
    one = kohya_dataset({"alice": 1, "bob": 1}, root_name="one")
    two = kohya_dataset({"alice": 1}, root_name="two", repeats=2)
    result = scan(one, two)
    [problem] = [p for p in result.problems if p.code == "duplicate-name"]
    assert problem.severity == "error"
    assert str(one / "1_alice") in problem.message and str(two / "2_alice") in problem.message


def test_same_trigger_in_two_folders_is_an_error(tmp_path: Path) -> None:
    add(tmp_path / "src" / "1_alice", "a", "girl, smile")
    add(tmp_path / "src" / "1_bob", "b", "girl, hat")
    assert "duplicate-trigger" in codes(scan(tmp_path / "src"))


def test_symlink_loops_do_not_hang(tmp_path: Path) -> None:
    root = tmp_path / "src"
    add(root / "1_alice", "a", "alice")
    add(root / "1_bob", "b", "bob")
    os.symlink(root / "1_alice", root / "1_alice" / "loop")  # dir linked to its parent
    os.symlink(root, root / "1_root")  # a character folder that is the root again
    os.symlink(root / "1_bob", root / "2_bob_again")
    result = scan(root)
    assert [c.name for c in result.characters] == ["alice", "bob"]
    reasons = {i.path.name: i.reason for i in result.ignored}
    assert "symlink" in reasons["1_root"] and "symlink" in reasons["2_bob_again"]
    assert "does not recurse" in reasons["loop"]


def test_odd_file_names_work(tmp_path: Path) -> None:
    folder = tmp_path / "src" / "1_alice"
    for stem in ("with space", "ünïcødé 猫", "-leading-dash", "--", "a.b.c"):
        add(folder, stem, f"alice, {stem}")
    add(tmp_path / "src" / "1_bob", "b", "bob")
    alice = scan(tmp_path / "src").characters[0]
    assert sorted(i.path.stem for i in alice.images) == sorted(["with space", "ünïcødé 猫", "-leading-dash", "--",
                                                                "a.b.c"])
    assert all(i.caption_path is not None and i.tags[1] == i.path.stem for i in alice.images)


def test_render_scan_table_rows(tmp_path: Path) -> None:
    add(tmp_path / "src" / "4_alice", "a", "alice")
    add(tmp_path / "src" / "4_alice", "b", None)
    add(tmp_path / "src" / "1_bob", "b", "bob")
    (tmp_path / "src" / "junk").mkdir()
    console = Console(width=200, record=True)
    console.print(render_scan_table(scan(tmp_path / "src")))
    text = console.export_text()
    alice_row = next(line for line in text.splitlines() if "alice" in line)
    assert [cell.strip() for cell in alice_row.split("│")[1:6]] == ["alice", "alice", "4", "2", "1"]
    assert "1 folder(s) ignored" in text and "2 characters, 3 images" in text


def test_unlistable_folder_is_a_problem_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    add(tmp_path / "src" / "1_alice", "a", "alice")
    add(tmp_path / "src" / "1_bob", "b", "bob")
    real_scandir = os.scandir

    def refusing(path: Path) -> object:
        if Path(path).name == "1_bob":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    result = scan(tmp_path / "src")
    assert [p.code for p in result.problems] == ["unreadable-folder"]
    assert "Permission denied" in result.problems[0].line and "1_bob" in result.problems[0].line


def test_stage1_caption_prefix_when_captions_lack_the_trigger(tmp_path: Path) -> None:
    add(tmp_path / "src" / "1_alice", "a", "1girl, smile")
    add(tmp_path / "src" / "1_alice", "b", "1girl, hat")
    add(tmp_path / "src" / "1_bob", "b", "bob, hat")
    by_folder = scan(tmp_path / "src", trigger_from="folder")
    assert [c.caption_prefix for c in by_folder.characters] == ["alice,", None]
    assert "trigger-twice" not in codes(by_folder)
    semi = scan(tmp_path / "src", trigger_from="folder", caption_separator=";")
    assert semi.characters[0].caption_prefix == "alice;"
    assert [c.caption_prefix for c in scan(tmp_path / "src").characters] == [None, None]


def test_caption_prefix_for_missing_captions_and_mixed_folders(tmp_path: Path) -> None:
    add(tmp_path / "src" / "1_alice", "a", None)
    add(tmp_path / "src" / "1_bob", "a", "bob, hat")
    add(tmp_path / "src" / "1_bob", "b", "hat")
    result = scan(tmp_path / "src", trigger_from="folder")
    assert [c.caption_prefix for c in result.characters] == ["alice,", "bob,"]
    [twice] = [p for p in result.problems if p.code == "trigger-twice"]
    assert "a.png" in twice.message and twice.severity == "warning"
    no_captions = scan(tmp_path / "src")  # trigger from captions: alice has none, so the folder name
    assert no_captions.characters[0].caption_prefix == "alice,"
    fixed = scan(tmp_path / "src", fix_sources=True)  # --fix-sources writes the trigger into the caption
    assert fixed.characters[0].caption_prefix is None


@pytest.mark.parametrize("other", ["alice", "ALICE", " Alice ", "alice  "])
def test_triggers_the_tokenizer_reads_alike_are_one_trigger(tmp_path: Path, other: str) -> None:
    """Issue 19: CLIP lower-cases and collapses whitespace, so `Alice` and `alice` are one trigger."""
    add(tmp_path / "src" / "2_Alice", "a", "Alice, smile")
    add(tmp_path / "src" / "3_alice", "b", f"{other}, hat")
    result = scan(tmp_path / "src")
    [problem] = [p for p in result.problems if p.code == "duplicate-trigger"]
    assert "2_Alice" in problem.message and "3_alice" in problem.message


def test_triggers_that_differ_as_tokens_are_two(tmp_path: Path) -> None:
    add(tmp_path / "src" / "1_alice", "a", "alice, smile")
    add(tmp_path / "src" / "1_alicia", "b", "alicia, hat")
    assert "duplicate-trigger" not in codes(scan(tmp_path / "src"))


def test_a_self_looping_symlink_costs_only_itself(tmp_path: Path) -> None:
    """Issue 19: a link that points at itself (ELOOP) in a root or a character folder is listed, not fatal."""
    root = tmp_path / "src"
    add(root / "1_alice", "a", "alice")
    add(root / "1_bob", "b", "bob")
    os.symlink(root / "loop", root / "loop")
    os.symlink(root / "1_alice" / "self", root / "1_alice" / "self")
    result = scan(root)
    assert [c.name for c in result.characters] == ["alice", "bob"]
    assert "unreadable-folder" not in codes(result)
    [loop] = [i for i in result.ignored if i.path == root / "loop"]
    assert "unreadable link" in loop.reason
