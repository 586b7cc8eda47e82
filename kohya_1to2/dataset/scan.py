"""Find the characters in kohya `N_name/` folders: images, captions, triggers, repeats.

The scan only reads directory listings and caption text; image contents are checked by `preflight`.
Everything it cannot use is reported (`ignored`, `problems`), never silently dropped. Parsing is pure
(`parse_folder_name`, `choose_trigger`, `trigger_first_tags`); `scan_sources` is the thin shell that lists files.
"""

from __future__ import annotations

import html
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict
from rich.table import Table

from kohya_1to2 import kohya
from kohya_1to2.dataset.captions import split_tags, stage1_caption_prefix
from kohya_1to2.kohya import caption_path_for
from kohya_1to2.kohya import options as opt
from kohya_1to2.models import IMAGE_EXTENSIONS, Character, RegSet, SourceImage, SourceSettings

REG_FOLDER_NAMES = frozenset({"reg", "regs", "regularization", "regularisation", "reg_images", "regularization_images"})
"""Folder names (or name parts after `N_`) of regularisation images: never used as characters; offered as `--reg`."""

REG_OFFER = "regularisation images: not used as a character; to train with them, pass --reg {path}"

SD_SCRIPTS_SUFFIXES = kohya.globbed_suffixes(IMAGE_EXTENSIONS)

Severity = Literal["error", "warning"]


class Problem(BaseModel):
    """One thing wrong with the sources, naming the file and how to fix it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    severity: Severity
    code: str
    path: Path | None = None
    message: str
    fix: str = ""
    fixable: bool = False
    """True when `--fix-sources` corrects it in the copy under `<run>/sources/`."""

    @property
    def line(self) -> str:
        """One line for the terminal: `error: <file>: <message> (fix: ...)`."""
        where = f"{self.path}: " if self.path is not None else ""
        fix = f" (fix: {self.fix})" if self.fix else ""
        return f"{self.severity}: {where}{self.message}{fix}"


class IgnoredFolder(BaseModel):
    """A folder the scan saw and deliberately did not use, with the reason."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    reason: str


class ScanResult(BaseModel):
    """What `scan_sources` found; `settings` travels along so later steps read captions the same way."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    settings: SourceSettings
    characters: tuple[Character, ...] = ()
    ignored: tuple[IgnoredFolder, ...] = ()
    problems: tuple[Problem, ...] = ()

    @property
    def image_count(self) -> int:
        return sum(len(c.images) for c in self.characters)


def apply_policy(problems: Iterable[Problem], settings: SourceSettings) -> list[Problem]:
    """`strict` turns warnings into errors, except those `--fix-sources` already corrects."""
    if not settings.strict:
        return list(problems)
    return [
        problem.model_copy(update={"severity": "error"})
        if problem.severity == "warning" and not (problem.fixable and settings.fix_sources)
        else problem
        for problem in problems
    ]


# ---------------------------------------------------------------- pure parsing


def is_reg_name(name: str) -> bool:
    """`reg`, `regularization`, `1_reg`... : a folder of regularization images."""
    lowered = name.lower()
    _, sep, rest = lowered.partition("_")
    return lowered in REG_FOLDER_NAMES or (sep == "_" and _.isdigit() and rest in REG_FOLDER_NAMES)


def parse_folder_name(name: str) -> tuple[int, str] | str:
    """`3_alice` -> (3, "alice"); otherwise the reason it is not a character folder."""
    head, sep, tail = name.partition("_")
    if not sep or not head.isascii() or not head.isdigit():
        return "not N_name (no repeat count before '_')"
    if not tail.strip():
        return "not N_name (nothing after the repeat count)"
    repeats = int(head)
    if repeats < 1:
        return f"repeat count {repeats} (must be >= 1)"
    return repeats, tail


def is_image_name(name: str) -> bool:
    """Image suffix in any case; dot-files (e.g. macOS `._x.png`) are skipped, as sd-scripts' glob does."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def choose_trigger(first_tags: Sequence[tuple[str, str]], fallback: str) -> tuple[str, list[str]]:
    """Majority first tag of (file name, first tag) pairs; ties go to the fallback, then alphabetical order.

    Returns the trigger and the file names whose first tag disagrees with it.
    """
    if not first_tags:
        return fallback, []
    counts = Counter(tag for _, tag in first_tags)
    best = max(counts.values())
    leaders = sorted(tag for tag, n in counts.items() if n == best)
    trigger = fallback if fallback in leaders else leaders[0]
    return trigger, sorted(name for name, tag in first_tags if tag != trigger)


def trigger_first_tags(caption_tags: tuple[str, ...], trigger: str, trigger_from: str) -> tuple[str, ...]:
    """SourceImage.tags: the character's trigger first, then the caption's descriptive tags.

    With triggers from captions the first caption tag is the trigger slot (keep_tokens = 1) and is
    replaced; with triggers from folders the caption is all description, minus any copy of the trigger.
    """
    if trigger_from == "caption":
        rest = caption_tags[1:]
    else:
        rest = tuple(tag for tag in caption_tags if tag != trigger)
    return (trigger, *rest)


def decode_caption(data: bytes, encoding: str) -> str | None:
    """Caption text: UTF-8 when the bytes are valid UTF-8 (what sd-scripts reads), else `encoding`, per file;
    None when neither decodes (preflight reports that). A folder mixing UTF-8 and cp1252 keeps both intact."""
    for candidate in dict.fromkeys((kohya.CAPTION_ENCODING, encoding)):
        try:
            return data.decode(candidate)
        except (UnicodeDecodeError, LookupError):
            continue
    return None


# ---------------------------------------------------------------- shell: listing folders


def _is_dir(entry: os.DirEntry[str]) -> bool | OSError:
    """`entry.is_dir()`, or the error a symlink loop (ELOOP) or a vanished target raises: one bad link must not
    cost the whole folder."""
    try:
        return entry.is_dir()
    except OSError as exc:
        return exc


def _is_file(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _subdirs(folder: Path) -> tuple[list[os.DirEntry[str]], list[IgnoredFolder]]:
    """A folder's subfolders by name, and the entries that could not even be told apart (listed as ignored)."""
    folders, broken = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            kind = _is_dir(entry)
            if isinstance(kind, OSError):
                broken.append(IgnoredFolder(path=Path(entry.path),
                                            reason=f"unreadable link ({kind.strerror or kind}): skipped"))
            elif kind:
                folders.append(entry)
    return sorted(folders, key=lambda e: e.name), sorted(broken, key=lambda i: i.path)


def _files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(files, subfolders) of a folder, one level only: sd-scripts does not recurse either."""
    files, subfolders = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if _is_dir(entry) is True:
                subfolders.append(Path(entry.path))
            elif is_image_name(entry.name) or _is_file(entry):  # a broken image link is kept: preflight names it
                files.append(Path(entry.path))
    return sorted(files), sorted(subfolders)


def _caption_tags(images: Sequence[Path], settings: SourceSettings) -> dict[Path, tuple[str, ...] | None]:
    """Each image that has a caption file -> its tags (None: the file cannot be read or decoded)."""
    captions: dict[Path, tuple[str, ...] | None] = {}
    for image in images:
        caption = caption_path_for(image, settings.caption_extension)
        if caption.is_file():
            try:
                text = decode_caption(caption.read_bytes(), settings.caption_encoding)
            except OSError:
                text = None
            captions[image] = None if text is None else split_tags(text, settings.caption_separator)
    return captions


def _scan_character(
    folder: Path, repeats: int, name: str, settings: SourceSettings
) -> tuple[Character, list[Problem], list[IgnoredFolder]]:
    problems: list[Problem] = []
    ignored: list[IgnoredFolder] = []
    try:
        files, subfolders = _files(folder)
    except OSError as exc:
        files, subfolders = [], []
        problems.append(_unlistable(folder, exc))
    ignored += [IgnoredFolder(path=sub, reason="subfolder of a character folder (sd-scripts does not recurse)")
                for sub in subfolders]

    images = [f for f in files if is_image_name(f.name)]
    problems += [Problem(severity="warning", code="suffix-case", path=image,
                         message="mixed-case suffix: sd-scripts on Linux only finds all-lower or all-upper suffixes",
                         fix=f"rename it to {image.stem}{image.suffix.lower()}")
                 for image in images if os.path.splitext(image.name)[1] not in SD_SCRIPTS_SUFFIXES]
    captions = _caption_tags(images, settings)

    disagree: list[str] = []
    if settings.trigger_from == "folder" or not any(captions.values()):
        trigger = name
    else:
        firsts = [(img.name, tags[0]) for img, tags in captions.items() if tags]
        trigger, disagree = choose_trigger(firsts, fallback=name)
    if disagree:
        shown = ", ".join(disagree[:5]) + (f" and {len(disagree) - 5} more" if len(disagree) > 5 else "")
        problems.append(Problem(
            severity="warning", code="trigger-mismatch", path=folder,
            message=f"trigger '{trigger}' is the majority first tag, but these captions start differently: {shown}",
            fix=f"start every caption in {folder.name} with '{trigger}', or use --trigger-from folder",
        ))

    source_images = tuple(sorted(
        (SourceImage(
            path=image,
            character=name,
            tags=trigger_first_tags(captions.get(image) or (), trigger, settings.trigger_from),
            caption_path=caption_path_for(image, settings.caption_extension) if image in captions else None,
        ) for image in images),
        key=lambda image: image.rel_key,
    ))
    prefix = needs_caption_prefix([captions.get(image) for image in images], trigger, settings)
    if prefix and (already := sorted(img.name for img, tags in captions.items() if tags and tags[0] == trigger)):
        problems.append(Problem(
            severity="warning", code="trigger-twice", path=folder,
            message=f"stage 1 prepends the trigger '{trigger}' ({opt.CAPTION_PREFIX}) because some captions lack it, "
                    f"so these get it twice: {', '.join(already[:5])}" + (" ..." if len(already) > 5 else ""),
            fix=f"start every caption in {folder.name} with '{trigger}', or remove it from all of them",
        ))
    character = Character(
        name=name, trigger=trigger, repeats=repeats, folder=folder, images=source_images,
        caption_prefix=stage1_caption_prefix(trigger, settings.caption_separator) if prefix else None,
    )
    return character, problems, ignored


def needs_caption_prefix(
    captions: Sequence[tuple[str, ...] | None], trigger: str, settings: SourceSettings
) -> bool:
    """Whether sd-scripts' stage-1 caption of some image would not start with the trigger.

    `captions` holds each image's caption tags (None: no readable caption file). With triggers from folders
    any caption that does not start with it needs the prefix; with triggers from captions only a folder
    where none does (no captions), since a minority that differs is the `trigger-mismatch` warning.
    `--fix-sources` writes the trigger into missing captions itself.
    """
    def lacks(tags: tuple[str, ...] | None) -> bool:
        if not tags:
            return not settings.fix_sources
        return tags[0] != trigger

    if settings.trigger_from == "folder":
        return any(lacks(tags) for tags in captions)
    return not any(tags and tags[0] == trigger for tags in captions) and any(lacks(t) for t in captions)


def _unlistable(folder: Path, exc: OSError) -> Problem:
    return Problem(severity="error", code="unreadable-folder", path=folder,
                   message=f"cannot list the folder ({exc.strerror or exc})", fix="check its permissions")


def _missing_root_problem(root: Path) -> Problem:
    what = "is not a directory" if root.exists() else "does not exist"
    return Problem(severity="error", code="root-missing", path=root, message=f"source root {what}",
                   fix="pass the folder that holds your N_name/ character folders")


def _scan_character_folders(subdirs: Sequence[os.DirEntry[str]], settings: SourceSettings,
                            seen_real: dict[str, Path]) -> tuple[list[Character], list[IgnoredFolder], list[Problem]]:
    """A root's folders: `N_name/` ones are scanned (each real folder once), the others listed as ignored."""
    characters: list[Character] = []
    ignored: list[IgnoredFolder] = []
    problems: list[Problem] = []
    for entry in subdirs:
        folder = Path(entry.path)
        parsed = parse_folder_name(entry.name)
        if is_reg_name(entry.name):
            ignored.append(IgnoredFolder(path=folder, reason=REG_OFFER.format(path=folder)))
            continue
        if isinstance(parsed, str):
            ignored.append(IgnoredFolder(path=folder, reason=parsed))
            if parsed.startswith("repeat count"):
                problems.append(Problem(severity="warning", code="bad-repeats", path=folder,
                                        message=parsed, fix=f"rename it to 1_{entry.name.partition('_')[2]}"))
            continue
        real = os.path.realpath(folder)
        if real in seen_real:
            # a symlink back to a root or to a folder already scanned: counting it twice would loop
            reason = f"same folder as {seen_real[real]} (symlink or root given twice)"
            ignored.append(IgnoredFolder(path=folder, reason=reason))
            continue
        seen_real[real] = folder
        repeats, name = parsed
        character, found, skipped = _scan_character(folder, repeats, name, settings)
        problems += found
        ignored += skipped
        if not character.images:
            ignored.append(IgnoredFolder(path=folder, reason="no images"))
            if any(p.code == "unreadable-folder" for p in found):
                continue
            problems.append(Problem(
                severity="warning", code="no-images", path=folder,
                message=f"character folder has no images ({', '.join(IMAGE_EXTENSIONS)})",
                fix="add images or remove the folder",
            ))
            continue
        characters.append(character)
    return characters, ignored, problems


def scan_sources(settings: SourceSettings) -> ScanResult:
    """Scan every root's `N_name/` folders into characters (sorted by name, images sorted by rel_key)."""
    characters: list[Character] = []
    ignored: list[IgnoredFolder] = []
    problems: list[Problem] = []
    seen_real: dict[str, Path] = {}

    for given_root in settings.roots:
        root = given_root.expanduser()
        if not root.is_dir():
            problems.append(_missing_root_problem(root))
            continue
        if is_reg_name(root.name):
            ignored.append(IgnoredFolder(path=root, reason=REG_OFFER.format(path=root)))
            continue
        if not isinstance(parse_folder_name(root.name), str) and any(
            is_image_name(f.name) for f in _files(root)[0]
        ):
            ignored.append(IgnoredFolder(path=root, reason="the root itself is a character folder"))
            problems.append(Problem(
                severity="error", code="root-is-character", path=root,
                message="this root is itself an N_name character folder",
                fix=f"pass its parent directory {root.parent} as the source root",
            ))
            continue
        seen_real.setdefault(os.path.realpath(root), root)
        try:
            subdirs, broken = _subdirs(root)
        except OSError as exc:
            problems.append(_unlistable(root, exc))
            continue
        ignored += broken
        found_characters, found_ignored, found_problems = _scan_character_folders(subdirs, settings, seen_real)
        characters += found_characters
        ignored += found_ignored
        problems += found_problems

    problems += _name_clashes(characters)
    characters.sort(key=lambda c: (c.name, str(c.folder)))
    return ScanResult(settings=settings, characters=tuple(characters), ignored=tuple(ignored),
                      problems=tuple(apply_policy(problems, settings)))


class RegScan(BaseModel):
    """What `scan_reg` found in the `--reg` roots."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sets: tuple[RegSet, ...] = ()
    ignored: tuple[IgnoredFolder, ...] = ()
    problems: tuple[Problem, ...] = ()

    @property
    def image_count(self) -> int:
        return sum(len(s.images) for s in self.sets)


def scan_reg(roots: Sequence[Path], settings: SourceSettings) -> RegScan:
    """The `N_class/` folders of each `--reg` root (or the root itself when it is one), as kohya lays them out."""
    sets: list[RegSet] = []
    ignored: list[IgnoredFolder] = []
    problems: list[Problem] = []
    for given in roots:
        root = given.expanduser()
        if not root.is_dir():
            what = "is not a directory" if root.exists() else "does not exist"
            problems.append(Problem(severity="error", code="reg-missing", path=root, message=f"--reg folder {what}",
                                    fix="pass the folder that holds your N_class/ regularisation folders"))
            continue
        parsed_root = parse_folder_name(root.name)
        try:
            folders = [root] if not isinstance(parsed_root, str) else [Path(e.path) for e in _subdirs(root)[0]]
        except OSError as exc:
            problems.append(_unlistable(root, exc))
            continue
        for folder in folders:
            parsed = parse_folder_name(folder.name)
            if isinstance(parsed, str):
                ignored.append(IgnoredFolder(path=folder, reason=parsed))
                continue
            repeats, name = parsed
            try:
                files, _ = _files(folder)
            except OSError as exc:
                problems.append(_unlistable(folder, exc))
                continue
            images = tuple(
                SourceImage(path=f, character=name,
                            caption_path=caption if (caption := caption_path_for(f, settings.caption_extension)
                                                     ).is_file() else None)
                for f in files if is_image_name(f.name)
            )
            if not images:
                ignored.append(IgnoredFolder(path=folder, reason="no images"))
                continue
            sets.append(RegSet(name=name, repeats=repeats, folder=folder, images=images))
    if roots and not sets and not problems:
        shown = ", ".join(str(r) for r in roots)
        problems.append(Problem(severity="error", code="reg-empty", path=None,
                                message=f"--reg {shown}: no N_class/ folder with images",
                                fix="lay the class images out as kohya does: <reg root>/1_<class>/ with images"))
    return RegScan(sets=tuple(sets), ignored=tuple(ignored), problems=tuple(apply_policy(problems, settings)))


def tokenizer_form(text: str) -> str:
    """A trigger as CLIP's tokenizer reads it (its basic_clean and whitespace_clean, then lower-case): `Alice`,
    `alice` and `alice ` are the same tokens, so the same trigger to the model."""
    return " ".join(html.unescape(html.unescape(text)).split()).lower()


def _name_clashes(characters: Iterable[Character]) -> list[Problem]:
    """Two folders with one name (or one trigger, as the tokenizer reads it) would be one character to pairing
    and to the prompt."""
    problems = []
    for attribute, key in (("name", str), ("trigger", tokenizer_form)):
        groups: dict[str, list[Character]] = {}
        for character in characters:
            groups.setdefault(key(getattr(character, attribute)), []).append(character)
        for value, group in sorted(groups.items()):
            if len(group) > 1:
                folders = " and ".join(str(c.folder) for c in group)
                spelled = sorted({getattr(c, attribute) for c in group})
                shown = f"'{value}'" if len(spelled) == 1 else (
                    " / ".join(f"'{s}'" for s in spelled) + " (one trigger to CLIP's tokenizer, which lower-cases)")
                problems.append(Problem(
                    severity="error", code=f"duplicate-{attribute}", path=group[0].folder,
                    message=f"{len(group)} character folders have the {attribute} {shown}: {folders}",
                    fix="rename one of them" if attribute == "name"
                    else "give each character its own trigger (first caption tag)",
                ))
    return problems


def render_scan_table(result: ScanResult) -> Table:
    """Per-character summary for the terminal; ignored folders are only counted (the caller lists them)."""
    table = Table(title=f"{len(result.characters)} characters, {result.image_count} images")
    for column in ("character", "trigger", "repeats", "images", "captioned", "folder"):
        table.add_column(column, justify="right" if column in ("repeats", "images", "captioned") else "left")
    for character in result.characters:
        captioned = sum(1 for image in character.images if image.caption_path is not None)
        table.add_row(character.name, character.trigger, str(character.repeats), str(len(character.images)),
                      str(captioned), str(character.folder))
    if result.ignored:
        table.caption = f"{len(result.ignored)} folder(s) ignored (see ScanResult.ignored)"
    return table


def reg_overlap(reg: Path, root: Path) -> str | None:
    """How a (resolved) --reg folder overlaps a (resolved) source root's training images, or None. A reg folder
    inside the root is fine where the scan skips it: under a `reg/`-like or non-`N_name` folder."""
    if reg == root:
        return "is the source root"
    if reg in root.parents:
        return "contains the source root"
    if root in reg.parents:
        top = reg.relative_to(root).parts[0]
        if not is_reg_name(top) and not isinstance(parse_folder_name(top), str):
            return f"is (inside) the character folder {top} of the source root"
    return None
