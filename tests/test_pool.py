"""pool.py: worker errors cross a real process boundary as data and come back as the right error class."""

from __future__ import annotations

import os
import pickle
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from kohya_1to2.dataset import compose, pool
from kohya_1to2.errors import DatasetError, Interrupted, OneToTwoError, SetupError, UsageError


def items_for(left: Path, right: Path, count: int = 30) -> list[pool.WorkItem]:
    """Enough composites for several chunks, so `run_chunks` uses the process pool with two workers."""
    return [pool.WorkItem(index=i, left=str(left), right=str(right), image_name=f"{i:06d}_a__b.png",
                          caption_name=f"{i:06d}_a__b.txt", caption="a, b") for i in range(count)]


def config_for(subset: Path) -> pool.WorkerConfig:
    return pool.WorkerConfig(background=(255, 255, 255), gap=0, max_side=None, format="png", quality=95,
                             subset_dir=str(subset))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "good.png"
    Image.new("RGB", (16, 20), (10, 20, 30)).save(path)
    return path


def test_a_dataset_error_in_a_worker_is_raised_in_the_parent_with_message_and_hint(
    tmp_path: Path, image: Path
) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png")
    subset = tmp_path / "subset"
    subset.mkdir()
    recorded: list[int] = []
    with pytest.raises(DatasetError) as caught:
        pool.run_chunks(items_for(image, corrupt), config_for(subset), 2,
                        lambda results: recorded.extend(r[0] for r in results))
    assert type(caught.value) is DatasetError
    assert str(corrupt) in caught.value.message
    with pytest.raises(DatasetError) as direct:  # what the same failure raises in this process
        compose.load_source(corrupt, (255, 255, 255))
    assert (caught.value.message, caught.value.hint) == (direct.value.message, direct.value.hint)
    assert recorded == []


def test_a_disk_error_in_a_worker_is_a_setup_error_naming_the_file(tmp_path: Path, image: Path) -> None:
    not_a_folder = tmp_path / "subset"
    not_a_folder.write_text("a file where the subset folder should be")
    with pytest.raises(SetupError, match=r"cannot write composite .*subset/0000\d\d_a__b\.png") as caught:
        pool.run_chunks(items_for(image, image), config_for(not_a_folder), 2, lambda results: None)
    assert type(caught.value) is SetupError
    assert "disk space" in (caught.value.hint or "")


def test_the_pool_path_builds_every_item(tmp_path: Path, image: Path) -> None:
    subset = tmp_path / "subset"
    subset.mkdir()
    recorded: list[int] = []
    pool.run_chunks(items_for(image, image), config_for(subset), 2,
                    lambda results: recorded.extend(r[0] for r in results))
    assert sorted(recorded) == list(range(30))
    assert len(list(subset.glob("*.png"))) == 30
    # The guard arms PDEATHSIG on import: first in the forkserver's preload, never in this process.
    assert pool.FORKSERVER_PRELOAD[0] == "kohya_1to2.dataset.forkserver_guard"
    assert "kohya_1to2.dataset.forkserver_guard" not in sys.modules


@pytest.mark.parametrize("error", [UsageError("u", hint="h1"), DatasetError("d"), SetupError("s", hint="h3"),
                                   Interrupted("i", hint="h4"), OneToTwoError("o", hint="h5")])
def test_worker_failure_is_plain_data_that_maps_back_to_its_class(error: OneToTwoError) -> None:
    failure = pickle.loads(pickle.dumps(pool.WorkerFailure.of(error)))
    back = failure.error()
    assert type(back) is type(error)
    assert (back.message, back.hint, back.exit_code) == (error.message, error.hint, error.exit_code)


def test_the_worker_code_imports_neither_pydantic_nor_the_models() -> None:
    """The forkserver imports pool.py before the first worker starts: pydantic (through models) would add to
    every build's start-up, and to the forkserver's memory that each worker maps."""
    import subprocess

    code = ("import sys, kohya_1to2.dataset.pool; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pydantic' or m == 'kohya_1to2.models'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def spill_config(tmp_path: Path, sources: set[str], max_side: int | None = None) -> pool.WorkerConfig:
    spill = tmp_path / "spill"
    spill.mkdir(exist_ok=True)
    return pool.WorkerConfig(background=(255, 255, 255), gap=0, max_side=max_side, format="png", quality=95,
                             subset_dir=str(tmp_path), spill_dir=str(spill), spill_sources=frozenset(sources))


def item(index: int, left: str, right: str) -> pool.WorkItem:
    return pool.WorkItem(index=index, left=left, right=right, image_name="", caption_name="", caption="")


def test_a_sources_spill_files_go_when_its_last_chunk_is_done_not_before(tmp_path: Path) -> None:
    config = spill_config(tmp_path, {"a", "b", "c"})
    spill = Path(config.spill_dir or "")
    for source in ("a", "b", "c"):  # decoded and resized copies
        for suffix in (".rgb", ".10x20.rgb", ".7x20.rgb"):
            (spill / f"{pool.spill_stem(source)}{suffix}").write_bytes(b"x")
    unrelated = spill / "unrelated.rgb"
    unrelated.write_bytes(b"x")
    chunks = [[item(0, "a", "b")], [item(1, "a", "c"), item(2, "c", "d")], [item(3, "b", "b")]]
    janitor = pool.SpillJanitor(chunks, config)

    def stems_left() -> set[str]:
        return {name.split(".")[0] for name in os.listdir(spill)}

    janitor.chunk_done(chunks[0])
    assert stems_left() == {pool.spill_stem(s) for s in "abc"} | {"unrelated"}
    janitor.chunk_done(chunks[1])  # a and c used for the last time ("d" was never spilled)
    assert stems_left() == {pool.spill_stem("b"), "unrelated"}
    assert len(os.listdir(spill)) == 4  # all three of b's files kept
    janitor.chunk_done(chunks[2])
    assert os.listdir(spill) == ["unrelated.rgb"]


def test_first_needs_lists_spilled_sources_in_the_order_the_first_workers_reach_them() -> None:
    chunks = [[item(0, "a", "b"), item(1, "c", "a")], [item(2, "d", "e")], [item(3, "f", "g")]]
    assert pool.first_needs(chunks, 2, frozenset("abcdefg") - {"e"}) == ["a", "b", "d", "c"]
    assert pool.first_needs(chunks, 1, frozenset("abcdefg")) == ["a", "b", "c"]


def test_prefill_decodes_into_the_spill_what_a_worker_would_and_skips_bad_sources(tmp_path: Path) -> None:
    import threading

    good = tmp_path / "good.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(good)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png")
    config = spill_config(tmp_path, {str(good), str(corrupt)}, max_side=20)
    spill = Path(config.spill_dir or "")

    done = threading.Event()
    done.set()
    pool._prefill_spill(config, [str(good)], done)  # the workers already run: the parent leaves it to them
    assert os.listdir(spill) == []

    pool._prefill_spill(config, [str(corrupt), str(good)], threading.Event())  # no raise: the worker reports
    assert os.listdir(spill) == [pool.spill_stem(str(good)) + ".rgb"]
    image, source_size = pool._decoded(config, str(good))  # what a worker reads back
    assert source_size == (40, 30)
    assert image.tobytes() == compose.load_source(good, (255, 255, 255), 20).tobytes()


def test_a_pooled_build_leaves_no_spill_and_starting_the_server_early_changes_nothing(tmp_path: Path) -> None:
    left, right = tmp_path / "l.png", tmp_path / "r.png"
    Image.new("RGB", (30, 20), (1, 2, 3)).save(left)
    Image.new("RGB", (16, 24), (9, 8, 7)).save(right)
    items = items_for(left, right)
    assert pool.uses_pool(len(items), 2) and not pool.uses_pool(len(items), 1)
    outputs = {}
    for early in (False, True):
        subset = tmp_path / f"subset{early}"
        subset.mkdir()
        (tmp_path / f"run{early}").mkdir()
        config = replace(spill_config(tmp_path / f"run{early}", {str(left), str(right)}), subset_dir=str(subset))
        if early:
            pool.start_server()
        pool.run_chunks(items, config, 2, lambda results: None)
        assert os.listdir(config.spill_dir or "") == []  # each source's files went with its last chunk
        outputs[early] = {p.name: p.read_bytes() for p in subset.iterdir()}
    assert len(outputs[True]) == 60
    assert outputs[True] == outputs[False]
