"""Three-way merge of a hand-edited TOML (pure): base = what we generated last, ours = the user's file,
theirs = the new generation.

Keys the user did not touch take the new value; keys the user changed are kept; added keys and comments
survive (the user's file is the starting point); a key changed by both is a conflict that keeps the user's
value. Subsets of `[[datasets.subsets]]` are matched by `image_dir`, so added or removed characters merge too.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

import tomlkit
import tomlkit.exceptions
from pydantic import BaseModel, ConfigDict
from tomlkit.items import AoT, Comment, Null, Table

from kohya_1to2.configs.presets import key_comments
from kohya_1to2.kohya import options as opt


class _Missing:
    def __repr__(self) -> str:
        return "<absent>"


MISSING: Any = _Missing()

PathPart = str | tuple[str, str]
KeyPath = tuple[PathPart, ...]


class Conflict(BaseModel):
    """A key changed both by the user and by the generator; the user's value was kept."""

    model_config = ConfigDict(frozen=True)

    key: str
    user: str
    generated: str
    previous: str


class MergeResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    text: str
    conflicts: tuple[Conflict, ...] = ()
    kept_edits: tuple[str, ...] = ()


def canonical(value: Any) -> Any:
    """A comparable form that keeps TOML types apart (1 vs 1.0 vs true matter to sd-scripts)."""
    if isinstance(value, dict):
        return ("table", tuple(sorted((k, canonical(v)) for k, v in value.items())))
    if isinstance(value, list):
        return ("array", tuple(canonical(v) for v in value))
    return (type(value).__name__, value)


def show(value: Any) -> str:
    if value is MISSING:
        return "<absent>"
    return tomlkit.item(value).as_string() if not isinstance(value, dict) else repr(value)


def _element_id(element: Any, index: int) -> str:
    image_dir = element.get(opt.IMAGE_DIR) if isinstance(element, dict) else None
    return f"{opt.IMAGE_DIR}={image_dir}" if isinstance(image_dir, str) else f"#{index}"


def leaves(container: Any, prefix: KeyPath = ()) -> Iterator[tuple[KeyPath, Any]]:
    """(path, plain value) of every non-table value; arrays of tables are addressed by element id."""
    for key, value in container.items():
        if isinstance(value, dict):
            yield from leaves(value, (*prefix, key))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for index, element in enumerate(value):
                yield (*prefix, (key, _element_id(element, index))), MISSING  # element marker
                yield from leaves(element, (*prefix, (key, _element_id(element, index))))
        else:
            yield (*prefix, key), value


def path_name(path: KeyPath) -> str:
    parts = []
    for part in path:
        parts.append(f"{part[0]}[{part[1]}]" if isinstance(part, tuple) else str(part))
    return ".".join(parts)


def _plain(doc: Any) -> dict[str, Any]:
    return doc.unwrap() if hasattr(doc, "unwrap") else doc


def _child(container: Any, part: PathPart) -> Any:
    """The tomlkit container at one path step, or None when absent."""
    if isinstance(part, tuple):
        key, ident = part
        array = container.get(key) if hasattr(container, "get") else None
        if not isinstance(array, (AoT, list)):
            return None
        for index, element in enumerate(array):
            if _element_id(element, index) == ident:
                return element
        return None
    value = container.get(part) if hasattr(container, "get") else None
    return value if isinstance(value, (Table, dict)) else None


def _locate(doc: Any, path: KeyPath) -> Any:
    node = doc
    for part in path:
        if node is None:
            return None
        node = _child(node, part)
    return node


def _element_values(plain: dict[str, Any], element_path: KeyPath) -> dict[KeyPath, Any]:
    return {p: v for p, v in leaves(plain) if p[: len(element_path)] == element_path and p != element_path}


def _merge_elements(ours: Any, theirs: Any, base_plain: dict[str, Any] | None, ours_plain: dict[str, Any],
                    base_leaves: Mapping[KeyPath, Any], ours_leaves: Mapping[KeyPath, Any],
                    theirs_leaves: Mapping[KeyPath, Any], conflicts: list[Conflict],
                    kept: list[str]) -> list[KeyPath]:
    """Add the elements the generator added, remove those it removed (unless the user edited them), keep those
    the user removed removed; returns the element paths the key-by-key merge must leave alone."""
    element_paths = sorted(
        {p for p in [*base_leaves, *theirs_leaves, *ours_leaves] if isinstance(p[-1], tuple)}, key=path_name
    )
    skip_prefixes: list[KeyPath] = []
    for path in element_paths:
        in_base = base_plain is not None and path in base_leaves
        in_ours, in_theirs = path in ours_leaves, path in theirs_leaves
        if in_theirs and not in_ours and not in_base:
            parent = _locate(ours, path[:-1])
            source = _locate(theirs, path)
            key = path[-1][0]
            if parent is not None and source is not None and isinstance(parent.get(key), AoT):
                parent[key].append(copy.deepcopy(source))
            skip_prefixes.append(path)
        elif in_base and in_ours and not in_theirs:
            user_changed = _element_values(ours_plain, path) != _element_values(base_plain or {}, path)
            if user_changed:
                conflicts.append(Conflict(key=path_name(path), user="(kept, with your edits)",
                                          generated="<removed>", previous="(generated entry)"))
            else:
                _remove_element(ours, path)
            skip_prefixes.append(path)
        elif in_base and in_theirs and not in_ours:
            skip_prefixes.append(path)  # the user removed the entry: keep it removed
            kept.append(path_name(path))
    return skip_prefixes


def _remove_element(ours: Any, path: KeyPath) -> None:
    parent = _locate(ours, path[:-1])
    key = path[-1][0]
    array = parent.get(key) if parent is not None else None
    if isinstance(array, AoT):
        for index, element in enumerate(array):
            if _element_id(element, index) == path[-1][1]:
                del array[index]
                break


def merge_toml(base_text: str | None, ours_text: str, theirs_text: str) -> MergeResult:
    """Merge the user's file (ours) with a new generation (theirs), relative to the previous one (base).

    Without a base (the record was lost), every difference is a conflict and the user's file is kept.
    """
    ours = tomlkit.parse(ours_text)
    theirs = tomlkit.parse(theirs_text)
    base_doc = tomlkit.parse(base_text) if base_text is not None else None
    base_plain = _plain(base_doc) if base_doc is not None else None
    ours_plain, theirs_plain = _plain(ours), _plain(theirs)
    base_leaves = dict(leaves(base_plain)) if base_plain is not None else {}
    ours_leaves = dict(leaves(ours_plain))
    theirs_leaves = dict(leaves(theirs_plain))
    conflicts: list[Conflict] = []
    kept: list[str] = []

    # 1. whole array-of-tables elements (subsets): added or removed by the generator
    skip_prefixes = _merge_elements(ours, theirs, base_plain, ours_plain, base_leaves, ours_leaves, theirs_leaves,
                                    conflicts, kept)

    def skipped(path: KeyPath) -> bool:
        return any(path[: len(prefix)] == prefix for prefix in skip_prefixes)

    # 2. plain keys
    all_paths = [p for p in dict.fromkeys([*base_leaves, *theirs_leaves, *ours_leaves])
                 if not isinstance(p[-1], tuple) and not skipped(p)]
    for path in all_paths:
        b = base_leaves.get(path, MISSING)
        o, t = ours_leaves.get(path, MISSING), theirs_leaves.get(path, MISSING)
        cb, co, ct = canonical(b), canonical(o), canonical(t)
        if base_plain is None:
            if co != ct:
                conflicts.append(Conflict(key=path_name(path), user=show(o), generated=show(t),
                                          previous="<no record>"))
            continue
        if co == cb:
            if ct != cb:
                _set(ours, theirs, path, t, base_doc)
        elif ct == cb:
            kept.append(path_name(path))
        elif co != ct:
            conflicts.append(Conflict(key=path_name(path), user=show(o), generated=show(t), previous=show(b)))
            kept.append(path_name(path))
    return MergeResult(text=tomlkit.dumps(ours), conflicts=tuple(conflicts), kept_edits=tuple(kept))


def _set(ours: Any, theirs: Any, path: KeyPath, value: Any, base: Any = None) -> None:
    """Set (or delete, for MISSING) one key in the user's document, creating tables the generator added."""
    parent_path, key = path[:-1], path[-1]
    assert isinstance(key, str)
    parent = _ensure(ours, theirs, parent_path)
    if parent is None:
        return
    if value is MISSING:
        if key in parent:
            base_parent = _locate(base, parent_path) if base is not None else None
            generated = key_comments(base_parent).get(key, "") if isinstance(base_parent, Table) else ""
            _delete_with_comment(parent, key, generated.splitlines())
            if (len(parent_path) == 1 and len(parent) == 0 and _locate(theirs, parent_path) is None
                    and isinstance(parent, Table)
                    and not any(isinstance(item, Comment) for _, item in parent.value.body)):
                del ours[parent_path[0]]  # a section the generator dropped, now empty and uncommented
        return
    if key in parent:
        parent[key] = value
        return
    source_parent = _locate(theirs, parent_path)
    comment = key_comments(source_parent).get(key) if isinstance(source_parent, Table) else None
    for line in (comment or "").splitlines():
        parent.add(tomlkit.comment(line))
    parent.add(key, value)


def _delete_with_comment(parent: Any, key: str, generated_comment: list[str]) -> None:
    """Delete a key and the generated comment lines right above it (comments the user wrote stay)."""
    container = parent.value if isinstance(parent, Table) else parent
    body = container.body
    index = next((i for i, (k, _) in enumerate(body) if k is not None and k.key == key), None)
    del parent[key]
    if index is None:
        return
    lines = list(generated_comment)
    j = index - 1
    while j >= 0 and lines and body[j][0] is None and isinstance(body[j][1], Comment):
        if body[j][1].as_string().strip().lstrip("#").strip() != lines[-1]:
            break
        body[j] = (None, Null())
        lines.pop()
        j -= 1


def _ensure(ours: Any, theirs: Any, path: KeyPath) -> Any:
    node = ours
    for part in path:
        child = _child(node, part)
        if child is None:
            if isinstance(part, tuple):
                return None  # an array element the user removed: leave it removed
            # a table the generator added: start it empty (keys are set one by one)
            new_table = tomlkit.table()
            node.add(part, new_table)
            child = node[part]
        node = child
    return node

