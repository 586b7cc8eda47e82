"""build.py: layout, manifest, atomic + incremental writes, stale removal, --force, kill -9 recovery."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image

from kohya_1to2.dataset import build, compose, pool
from kohya_1to2.dataset.pairing import plan_pairs
from kohya_1to2.errors import DatasetError, Interrupted, SetupError
from kohya_1to2.fsutil import TMP_PREFIX, file_fingerprint
from kohya_1to2.models import Character, CompositeSettings, Job, SourceImage, SourceSettings
from kohya_1to2.rundir import RunDir

COLOURS = [(220, 60, 60), (60, 120, 220), (60, 180, 90), (200, 160, 40)]


def make_sources(root: Path, counts: dict[str, int], size: tuple[int, int] = (48, 64)) -> Path:
    """`N_name/` folders of small distinct images (caption files are not needed by the build)."""
    for n, (name, count) in enumerate(counts.items()):
        folder = root / f"1_{name}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = Image.new("RGB", (size[0] + 8 * i, size[1]), COLOURS[n % len(COLOURS)])
            image.paste((i * 40 % 256, 255 - i * 30 % 256, 128), (2, 2, 2 + size[0] // 3, 2 + size[1] // 3))
            image.save(folder / f"{name}_{i:02d}.png")
    return root


def characters_from(root: Path) -> list[Character]:
    characters = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        name = folder.name.split("_", 1)[1]
        images = tuple(
            SourceImage(path=path, character=name, tags=(name, f"tag_{path.stem}", "1girl"))
            for path in sorted(folder.glob("*.png"))
        )
        characters.append(Character(name=name, trigger=name, repeats=1, folder=folder, images=images))
    return characters


def make_job(src: Path, out: Path, **composites: object) -> Job:
    return Job(out=out, sources=SourceSettings(roots=[src]), composites=CompositeSettings(**composites))  # type: ignore[arg-type]


def run_build(src: Path, out: Path, budget: int = 8, force: bool = False, **composites: object) -> build.BuildResult:
    characters = characters_from(src)
    composites.setdefault("workers", 1)
    job = make_job(src, out, budget=budget, **composites)
    plans = plan_pairs(characters, budget, job.composites.seed)
    return build.build_composites(plans, characters, job, out, force=force)


def tree_hashes(run_dir: Path) -> dict[str, str]:
    """Every file of a run directory's build outputs -> sha256 (manifest, composites, captions, preview)."""
    files = [RunDir(run_dir).manifest, RunDir(run_dir).preview, *sorted((run_dir / "composites").rglob("*"))]
    return {
        path.relative_to(run_dir).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in files
        if path.is_file()
    }


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return make_sources(tmp_path / "src", {"alice": 3, "bob": 3, "carol": 2})


def test_first_build_writes_images_captions_manifest_and_preview(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_build(src, out, budget=8)
    assert (result.count, result.written, result.reused, result.removed) == (8, 8, 0, 0)
    assert result.subset_dir == out / "composites" / "1_composite"
    images = sorted(result.subset_dir.glob("*.png"))
    assert len(images) == 8
    entries = build.read_manifest(out)
    assert [e.index for e in entries] == list(range(8))
    for entry, size in zip(entries, result.sizes, strict=True):
        image_path = out / entry.file
        data = image_path.read_bytes()
        assert entry.sha256 == hashlib.sha256(data).hexdigest() and entry.bytes == len(data)
        with Image.open(image_path) as image:
            assert image.size == tuple(entry.size) == size
        caption = image_path.with_suffix(".txt").read_text(encoding="utf-8")
        assert caption == entry.caption + "\n"
        left_name, right_name = image_path.stem.split("_", 1)[1].split("__")
        assert caption.startswith(f"{left_name}/{right_name}/COMPOSITE, ")
        assert entry.left.fingerprint == file_fingerprint(Path(entry.left.path))
        assert Path(entry.left.path).parent.name.endswith(left_name)
    assert RunDir(out).preview.is_file()
    assert not list(out.rglob(TMP_PREFIX + "*"))
    assert not RunDir(out).journal.exists()


def test_manifest_records_only_reproducible_fields(src: Path, tmp_path: Path) -> None:
    run_build(src, tmp_path / "run")
    line = json.loads(RunDir(tmp_path / "run").manifest.read_text().splitlines()[0])
    assert set(line) == {"index", "file", "caption", "left", "right", "size", "bytes", "sha256", "settings"}
    assert not Path(line["file"]).is_absolute()
    assert set(line["left"]) == {"path", "size", "fingerprint"}


def test_rerun_reuses_everything_without_decoding(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    run_build(src, out)
    before = tree_hashes(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p != RunDir(out).manifest}

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("a re-run must not decode images")

    monkeypatch.setattr(compose, "load_source", no_decoding)
    monkeypatch.setattr(Image, "open", no_decoding)
    monkeypatch.setattr(pool, "ProcessPoolExecutor", no_decoding)
    result = run_build(src, out)
    assert (result.reused, result.written, result.removed) == (8, 0, 0)
    assert tree_hashes(out) == before
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # nothing rewritten
    assert result.sizes == [tuple(e.size) for e in build.read_manifest(out)]


def test_changed_source_rebuilds_only_its_composites(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_build(src, out)
    changed = src / "1_alice" / "alice_00.png"
    Image.new("RGB", (48, 64), (0, 0, 0)).save(changed)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    users = [e.index for e in build.read_manifest(out) if str(changed) in (e.left.path, e.right.path)]
    assert users
    result = run_build(src, out)
    assert result.written == len(users) and result.reused == 8 - len(users)
    clean = run_build(src, tmp_path / "clean")
    assert clean.written == 8
    assert tree_hashes(out) == tree_hashes(tmp_path / "clean")


def test_deleted_or_truncated_output_is_rebuilt(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = run_build(src, out)
    images = sorted(first.subset_dir.glob("*.png"))
    images[0].unlink()
    images[1].write_bytes(images[1].read_bytes()[:20])
    result = run_build(src, out)
    assert (result.written, result.reused) == (2, 6)
    run_build(src, tmp_path / "clean")
    assert tree_hashes(out) == tree_hashes(tmp_path / "clean")


def test_caption_rule_change_rewrites_captions_only(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_build(src, out)
    images_before = {p.name: p.read_bytes() for p in (out / "composites" / "1_composite").glob("*.png")}
    characters = characters_from(src)
    job = Job(
        out=out,
        sources=SourceSettings(roots=[src]),
        composites=CompositeSettings(budget=8, workers=1, captions={"composite_tag": "PAIR"}),  # type: ignore[arg-type]
    )
    result = build.build_composites(plan_pairs(characters, 8, 0), characters, job, out, force=False)
    assert (result.written, result.reused) == (0, 8)
    for entry in build.read_manifest(out):
        assert "/PAIR, " in entry.caption
        assert (out / entry.file).with_suffix(".txt").read_text(encoding="utf-8") == entry.caption + "\n"
    assert {p.name: p.read_bytes() for p in result.subset_dir.glob("*.png")} == images_before


def test_smaller_budget_removes_stale_outputs_and_moves_foreign_files_out(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = run_build(src, out, budget=10)
    foreign = first.subset_dir / "notes.txt"
    foreign.write_text("mine")
    (first.subset_dir / f"{TMP_PREFIX}abc.png").write_bytes(b"partial")
    old_names = {Path(e.file).name for e in build.read_manifest(out)}
    old_keys = {(e.file, e.left.path, e.right.path) for e in build.read_manifest(out)}
    result = run_build(src, out, budget=6)
    new_names = {Path(e.file).name for e in build.read_manifest(out)}
    assert result.count == 6 and len(new_names) == 6
    assert result.removed == len(old_names - new_names) > 0
    assert result.reused == len(old_keys & {(e.file, e.left.path, e.right.path) for e in build.read_manifest(out)})
    assert sorted(p.name for p in result.subset_dir.glob("*.png")) == sorted(
        Path(e.file).name for e in build.read_manifest(out)
    )
    assert len(list(result.subset_dir.glob("0*.txt"))) == 6
    # a file prepare did not write would be trained as a composite: moved out, never lost
    assert not foreign.exists()
    assert [p.name for p in result.strays] == ["notes.txt"] and result.strays[0].read_text() == "mine"
    assert result.strays[0].is_relative_to(RunDir(out).strays)
    assert not list(result.subset_dir.glob(TMP_PREFIX + "*"))


def test_format_change_replaces_outputs(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_build(src, out)
    result = run_build(src, out, format="jpg", quality=80)
    assert result.written == 8 and result.removed == 8
    assert not list(result.subset_dir.glob("*.png")) and len(list(result.subset_dir.glob("*.jpg"))) == 8


def test_repeats_change_moves_the_subset_folder_and_reuses(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_build(src, out)
    result = run_build(src, out, repeats=3)
    assert result.subset_dir.name == "3_composite" and result.reused == 8
    assert not (out / "composites" / "1_composite").exists()
    assert all(e.file.startswith("composites/3_composite/") for e in build.read_manifest(out))


def test_force_rebuilds_everything_identically(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_build(src, out)
    before = tree_hashes(out)
    result = run_build(src, out, force=True)
    assert (result.written, result.reused) == (8, 0)
    assert tree_hashes(out) == before


def test_process_pool_gives_the_same_bytes_as_in_process(tmp_path: Path) -> None:
    src = make_sources(tmp_path / "src", {"a": 4, "b": 4, "c": 4})
    serial = run_build(src, tmp_path / "serial", budget=40, workers=1)
    pooled = run_build(src, tmp_path / "pooled", budget=40, workers=2)
    assert serial.written == pooled.written == 40
    assert tree_hashes(tmp_path / "serial") == tree_hashes(tmp_path / "pooled")


def test_corrupt_source_is_reported_and_finished_work_is_kept(src: Path, tmp_path: Path) -> None:
    (src / "1_carol" / "carol_01.png").write_bytes(b"garbage")
    out = tmp_path / "run"
    with pytest.raises(DatasetError, match=r"carol_01\.png"):
        run_build(src, out)
    assert not list(out.rglob(TMP_PREFIX + "*"))
    assert not RunDir(out).manifest.exists()


def test_schedule_groups_shared_sources() -> None:
    items = [
        pool.WorkItem(index=i, left=f"s{i % 32:02d}", right=f"s{(i * 7 + 3) % 32:02d}", image_name="", caption_name="",
                       caption="")
        for i in range(400)
    ]
    chunks = pool.schedule(items, chunk_size=12, group=8)
    assert sorted(item.index for chunk in chunks for item in chunk) == list(range(400))

    def distinct(chunk: list[pool.WorkItem]) -> int:
        return len({p for item in chunk for p in (item.left, item.right)})

    naive = [items[i : i + 12] for i in range(0, 400, 12)]
    assert max(distinct(c) for c in chunks) <= 16 < max(distinct(c) for c in naive)
    assert sum(map(distinct, chunks)) < 0.7 * sum(map(distinct, naive))


def test_source_cache_is_bounded_by_bytes() -> None:
    cache = pool.SourceCache(max_bytes=3 * 10 * 10 * 3)
    loads: list[str] = []

    def loader(key: str) -> tuple[Image.Image, tuple[int, int]]:
        loads.append(key)
        return Image.new("RGB", (10, 10)), (10, 10)

    for key in ["a", "b", "c", "a", "d", "a", "b"]:
        cache.get(key, loader)
    assert loads == ["a", "b", "c", "d", "b"]  # "a" kept hot; "b" evicted by "d"


# ---------------------------------------------------------------- kill -9 at any point

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import test_build as t
    from kohya_1to2.dataset import build, pool
    kill_at, phase, workers = {kill_at!r}, {phase!r}, {workers!r}
    calls = {{"n": 0}}
    if phase:
        import kohya_1to2.fsutil as fsutil
        real_bytes, real_text = pool.atomic_write_bytes, pool.atomic_write_text
        def die_maybe(final, data, real):
            calls["n"] += 1
            if calls["n"] == kill_at and phase == "mid-write":
                tmp = final.with_name(fsutil.TMP_PREFIX + "x" + final.suffix)
                tmp.parent.mkdir(parents=True, exist_ok=True)
                raw = data.encode() if isinstance(data, str) else data
                tmp.write_bytes(raw[: len(raw) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            real(final, data)
            if calls["n"] == kill_at and phase == "after-write":
                os.kill(os.getpid(), signal.SIGKILL)
        pool.atomic_write_bytes = lambda final, data: die_maybe(final, data, real_bytes)
        pool.atomic_write_text = build.atomic_write_text = lambda final, text: die_maybe(final, text, real_text)
    t.run_build(Path({src!r}), Path({out!r}), budget={budget!r}, workers=workers)
    """
)


def _run_child(src: Path, out: Path, budget: int, kill_at: int, phase: str, workers: int) -> subprocess.Popen[bytes]:
    script = CHILD.format(tests=str(Path(__file__).parent), src=str(src), out=str(out), budget=budget,
                          kill_at=kill_at, phase=phase, workers=workers)
    # SIGINT at its default: a pytest started in the background leaves it ignored, and children inherit that
    return subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.mark.parametrize(
    ("kill_at", "phase"),
    [(1, "mid-write"), (4, "after-write"), (7, "mid-write"), (9, "after-write"), (14, "after-write"),
     (19, "mid-write")],
)
def test_kill_9_at_a_write_then_rerun_equals_a_clean_build(src: Path, tmp_path: Path, kill_at: int, phase: str) -> None:
    out, clean = tmp_path / "run", tmp_path / "clean"
    child = _run_child(src, out, 8, kill_at, phase, workers=1)
    _, err = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL, err.decode()
    result = run_build(src, out)
    assert result.reused + result.written == 8
    run_build(src, clean)
    assert tree_hashes(out) == tree_hashes(clean)
    assert not list(out.rglob(TMP_PREFIX + "*"))


@pytest.mark.slow
def test_kill_9_of_a_pooled_build_mid_way_then_rerun_equals_a_clean_build(tmp_path: Path) -> None:
    src = make_sources(tmp_path / "src", {"a": 5, "b": 5, "c": 5}, size=(160, 200))
    out, clean = tmp_path / "run", tmp_path / "clean"
    child = _run_child(src, out, 300, kill_at=0, phase="", workers=2)
    subset = out / "composites" / "1_composite"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not _some_journaled(out, subset) and child.poll() is None:
        time.sleep(0.02)
    if child.poll() is not None:
        pytest.fail(f"the build finished before it could be killed: {child.communicate()[1].decode()[-500:]}")
    os.killpg(child.pid, signal.SIGKILL)  # the parent and its workers, like a crash or an OOM kill
    child.communicate()
    assert not RunDir(out).manifest.exists()
    resumed = run_build(src, out, budget=300, workers=2)
    assert resumed.reused > 0 and resumed.reused + resumed.written == 300
    run_build(src, clean, budget=300, workers=2)
    assert tree_hashes(out) == tree_hashes(clean)


# ---------------------------------------------------------------- Ctrl-C


def test_ctrl_c_in_process_leaves_no_partial_file(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    real_encode = compose.encode_canvas
    calls = {"n": 0}

    def interrupted_encode(*args: object, **kwargs: object) -> bytes:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_encode(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(compose, "encode_canvas", interrupted_encode)
    with pytest.raises(Interrupted, match="interrupted"):
        run_build(src, out)
    assert not list(out.rglob(TMP_PREFIX + "*"))
    assert not RunDir(out).manifest.exists()
    monkeypatch.setattr(compose, "encode_canvas", real_encode)
    run_build(src, out)
    run_build(src, tmp_path / "clean")
    assert tree_hashes(out) == tree_hashes(tmp_path / "clean")


def test_ctrl_c_stops_the_pool_workers_and_keeps_finished_work(tmp_path: Path) -> None:
    src = make_sources(tmp_path / "src", {"a": 5, "b": 5, "c": 5}, size=(160, 200))
    out = tmp_path / "run"
    child = _run_child(src, out, 300, kill_at=0, phase="", workers=2)
    subset = out / "composites" / "1_composite"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not _some_journaled(out, subset) and child.poll() is None:
        time.sleep(0.02)
    assert child.poll() is None, "the build finished before Ctrl-C"
    os.killpg(child.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
    _, err = child.communicate(timeout=60)
    assert err.decode().rstrip().endswith("Interrupted: composite build interrupted; finished composites are kept")
    assert not list(out.rglob(TMP_PREFIX + "*"))
    journal = RunDir(out).journal.read_text().splitlines()
    assert journal and all(
        (out / json.loads(line)["file"]).stat().st_size == json.loads(line)["bytes"] for line in journal
    )
    assert _group_gone(child.pid, within=10.0), "a worker outlived the interrupted build"


def _some_journaled(run_dir: Path, subset: Path) -> bool:
    """A few chunks are finished and journaled (outputs alone may belong to chunks still running)."""
    journal = RunDir(run_dir).journal
    return journal.is_file() and journal.stat().st_size > 0 and len(list(subset.glob("*.png"))) >= 20


def _group_gone(group: int, within: float) -> bool:
    """True once no process of the group is left (multiprocessing's resource tracker may take a moment)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_progress_bar_reports_rate_on_the_console(src: Path, tmp_path: Path) -> None:
    import io

    from rich.console import Console

    stream = io.StringIO()
    characters = characters_from(src)
    job = make_job(src, tmp_path / "run", budget=8, workers=1)
    build.build_composites(plan_pairs(characters, 8, 0), characters, job, tmp_path / "run",
                           console=Console(file=stream, width=120))
    text = stream.getvalue()
    assert "8/8" in text and "composites/s" in text


def test_each_source_is_decoded_once_even_with_a_tiny_cache(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_load = compose.load_source
    decoded: list[Path] = []

    def counting_load(path: Path, *args: object, **kwargs: object) -> Image.Image:
        decoded.append(path)
        return real_load(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(compose, "load_source", counting_load)
    characters = characters_from(src)
    plans = plan_pairs(characters, 30, 0)
    sources = {p for plan in plans for p in (plan.left.path, plan.right.path)}

    spilled = build.build_composites(plans, characters, make_job(src, tmp_path / "a", budget=30, workers=1),
                                     tmp_path / "a", cache_bytes=1)
    assert sorted(decoded) == sorted(sources)  # once each, although the cache holds a single image
    assert not RunDir(tmp_path / "a").spill.exists()

    decoded.clear()
    monkeypatch.setattr(pool, "SPILL_MAX_BYTES", 0)  # no room to spill: the bounded cache alone
    plain = build.build_composites(plans, characters, make_job(src, tmp_path / "b", budget=30, workers=1),
                                   tmp_path / "b", cache_bytes=1)
    assert len(decoded) > len(sources)
    assert spilled.sizes == plain.sizes
    assert tree_hashes(tmp_path / "a") == tree_hashes(tmp_path / "b")


def test_unwritable_output_is_a_setup_error_naming_the_file(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    def disk_full(final: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pool, "atomic_write_bytes", disk_full)
    with pytest.raises(SetupError, match=r"cannot write composite .*000000_.*\.png: No space left") as caught:
        run_build(src, tmp_path / "run")
    assert "disk space" in (caught.value.hint or "")


# ---------------------------------------------------------------- reuse_or_rebuild (pure)

SUBSET = "composites/1_composite"


def _decide(plans: list, characters: list[Character], previous: dict, fingerprints: dict, on_disk: dict,
            settings_id: str = "S1", **settings: object) -> build.Reuse:
    return build.reuse_or_rebuild(plans, characters, CompositeSettings(**settings), ".txt",
                                  subset=SUBSET, settings_id=settings_id, previous=previous,
                                  fingerprints=fingerprints, on_disk=on_disk)


@pytest.fixture
def built_state(src: Path) -> tuple[list, list[Character], dict, dict, dict]:
    """A plan and what a finished build of it left: entries, source fingerprints, files on disk (no I/O)."""
    characters = characters_from(src)
    plans = plan_pairs(characters, 20, 0)
    fingerprints = {p: f"fp-{p.name}" for plan in plans for p in (plan.left.path, plan.right.path)}
    fresh = _decide(plans, characters, {}, fingerprints, {})
    previous, on_disk = {}, {}
    for item in fresh.to_build:
        previous[item.index] = build.ManifestEntry(
            index=item.index, file=f"{SUBSET}/{item.image_name}", caption=item.caption,
            left=build.SourceRecord(path=item.left, size=(1, 1), fingerprint=fingerprints[Path(item.left)]),
            right=build.SourceRecord(path=item.right, size=(1, 1), fingerprint=fingerprints[Path(item.right)]),
            size=(2, 1), bytes=1000 + item.index, sha256="x", settings="S1")
        on_disk[item.image_name] = 1000 + item.index
        on_disk[item.caption_name] = len((item.caption + "\n").encode())
    return plans, characters, previous, fingerprints, on_disk


def test_reuse_when_nothing_changed(built_state: tuple) -> None:
    plans, characters, previous, fingerprints, on_disk = built_state
    decided = _decide(plans, characters, previous, fingerprints, on_disk)
    assert decided.to_build == [] and decided.captions == [] and not decided.preview_stale
    assert decided.entries == previous
    assert decided.expected_names == frozenset(on_disk)


def test_a_changed_source_rebuilds_exactly_its_composites(built_state: tuple) -> None:
    plans, characters, previous, fingerprints, on_disk = built_state
    changed = plans[3].left.path
    decided = _decide(plans, characters, previous, {**fingerprints, changed: "fp-new"}, on_disk)
    users = {p.index for p in plans if changed in (p.left.path, p.right.path)}
    assert {item.index for item in decided.to_build} == users
    assert set(decided.entries) == set(range(len(plans))) - users


def test_a_changed_settings_id_rebuilds_everything(built_state: tuple) -> None:
    plans, characters, previous, fingerprints, on_disk = built_state
    decided = _decide(plans, characters, previous, fingerprints, on_disk, settings_id="S2")
    assert [item.index for item in decided.to_build] == list(range(len(plans))) and decided.entries == {}
    assert decided.preview_stale


def test_a_wrong_or_missing_file_size_rebuilds_that_composite(built_state: tuple) -> None:
    plans, characters, previous, fingerprints, on_disk = built_state
    names = {e.index: Path(e.file).name for e in previous.values()}
    on_disk = {**on_disk, names[5]: 1}
    del on_disk[names[7]]
    decided = _decide(plans, characters, previous, fingerprints, on_disk)
    assert [item.index for item in decided.to_build] == [5, 7]


def test_a_changed_plan_rebuilds_the_composites_whose_sources_moved(built_state: tuple) -> None:
    plans, characters, previous, fingerprints, on_disk = built_state
    new_plans = plan_pairs(characters, 20, 1)  # another seed: other pairs at the same indices
    moved = {p.index for p, old in zip(new_plans, plans, strict=True)
             if (p.left.path, p.right.path) != (old.left.path, old.right.path)}
    assert moved
    decided = _decide(new_plans, characters, previous, fingerprints, on_disk)
    assert {item.index for item in decided.to_build} == moved
    assert set(decided.entries) == set(range(len(plans))) - moved


def test_a_caption_only_change_rewrites_the_caption_and_keeps_the_image(built_state: tuple) -> None:
    plans, characters, previous, fingerprints, on_disk = built_state
    stale = {**previous, 2: previous[2].model_copy(update={"caption": "an old caption"})}
    caption_name = Path(previous[9].file).with_suffix(".txt").name
    decided = _decide(plans, characters, stale, fingerprints, {**on_disk, caption_name: 3})
    assert decided.to_build == []
    assert [name for name, _ in decided.captions] == [Path(previous[2].file).with_suffix(".txt").name, caption_name]
    assert decided.entries[2] == previous[2]  # the entry carries the plan's caption again
    assert decided.captions[0][1] == previous[2].caption
    assert decided.preview_stale  # composite 2 is on the preview


@pytest.mark.parametrize("workers", [1, 2])
def test_the_preview_comes_from_the_workers_thumbnails_and_equals_one_made_from_the_files(
    tmp_path: Path, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh build never decodes a composite again for the preview (its workers made the thumbnails from the
    pixels they encoded); a preview made later from the files is byte for byte the same."""
    from kohya_1to2.dataset import preview

    src = make_sources(tmp_path / "src", {"a": 5, "b": 5, "c": 5}, size=(160, 200))
    out = tmp_path / "run"

    def no_decoding(path: Path) -> None:
        raise AssertionError(f"the preview decoded {path}")

    with monkeypatch.context() as patched:
        patched.setattr(preview, "_thumbnail", no_decoding)
        run_build(src, out, budget=40, workers=workers)
    made_by_workers = RunDir(out).preview.read_bytes()
    RunDir(out).preview.unlink()
    again = run_build(src, out, budget=40, workers=workers)  # all reused: the preview decodes the files
    assert again.written == 0
    assert RunDir(out).preview.read_bytes() == made_by_workers


# ---------------------------------------------------------------- groups of three (--group-size 3)


def run_group_build(src: Path, out: Path, budget: int = 8, **composites: object) -> build.BuildResult:
    from kohya_1to2.dataset.pairing import plan_groups

    characters = characters_from(src)
    composites.setdefault("workers", 1)
    job = make_job(src, out, budget=budget, group_size=3, **composites)
    return build.build_composites(plan_groups(characters, 3, budget, job.composites.seed), characters, job, out)


def test_a_group_build_writes_three_wide_composites_their_captions_and_members(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_group_build(src, out)
    assert (result.count, result.written) == (8, 8)
    for entry in build.read_manifest(out):
        names = Path(entry.file).stem.split("_", 1)[1].split("__")
        assert len(names) == 3 and len(set(names)) == 3
        assert entry.caption.startswith("/".join(names) + "/COMPOSITE, ")
        assert (out / entry.file).with_suffix(".txt").read_text(encoding="utf-8") == entry.caption + "\n"
        members = entry.members
        assert [Path(m.path).parent.name.split("_", 1)[1] for m in members] == names
        assert entry.middle is not None and len(entry.middle) == 1
        assert all(m.fingerprint == file_fingerprint(Path(m.path)) for m in members)
        with Image.open(out / entry.file) as image:
            assert image.size == tuple(entry.size)
            assert image.width == sum(m.size[0] for m in members) and image.height == 64  # same-height sources
            x = 0
            for member in members:  # each third is its source, in caption order
                with Image.open(member.path) as source:
                    assert image.crop((x, 0, x + source.width, 64)).tobytes() == source.convert("RGB").tobytes()
                x += member.size[0]


def test_a_resumed_group_build_reuses_every_composite(src: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    run_group_build(src, out)
    before = tree_hashes(out)
    layout = RunDir(out)
    layout.manifest.replace(layout.journal)  # as a build killed after its last composite leaves it

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("a resumed build must not decode images")

    with monkeypatch.context() as patched:
        patched.setattr(compose, "load_source", no_decoding)
        patched.setattr(pool, "ProcessPoolExecutor", no_decoding)
        result = run_group_build(src, out)
    assert (result.reused, result.written) == (8, 0)
    assert tree_hashes(out) == before and not layout.journal.exists()

    middle = build.read_manifest(out)[0].middle
    assert middle is not None
    changed = Path(middle[0].path)  # a middle member's source changes: its composites, and only they, rebuild
    users = {e.index for e in build.read_manifest(out) if str(changed) in {m.path for m in e.members}}
    Image.new("RGB", Image.open(changed).size, (1, 2, 3)).save(changed)
    result = run_group_build(src, out)
    assert result.written == len(users) and result.reused == 8 - len(users)


def test_a_pooled_group_build_gives_the_same_bytes_as_in_process(tmp_path: Path) -> None:
    src = make_sources(tmp_path / "src", {"alice": 3, "bob": 2, "carol": 2, "dan": 2})
    run_group_build(src, tmp_path / "one", budget=30, workers=1)
    run_group_build(src, tmp_path / "two", budget=30, workers=2)
    assert tree_hashes(tmp_path / "one") == tree_hashes(tmp_path / "two")
