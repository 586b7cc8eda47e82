"""pool.py: worker errors cross a real process boundary as data and come back as the right error class."""

from __future__ import annotations

import pickle
import sys
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
    with pytest.raises(SetupError, match=r"cannot write .*subset/0000\d\d_a__b\.png") as caught:
        pool.run_chunks(items_for(image, image), config_for(not_a_folder), 2, lambda results: None)
    assert type(caught.value) is SetupError
    assert "re-run" in (caught.value.hint or "")


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


@pytest.mark.parametrize("fmt", ["png", "jpg"])  # OpenCV (when installed) and Pillow
@pytest.mark.parametrize("spill", [False, True])
@pytest.mark.parametrize("cache_bytes", [1, pool.CACHE_BYTES])  # a one-entry cache: misses read the spill
def test_a_worker_gives_the_bytes_of_encode_compose_pair_whatever_form_its_cache_keeps(
    tmp_path: Path, fmt: str, spill: bool, cache_bytes: int
) -> None:
    """Workers keep fitted halves as OpenCV arrays when OpenCV encodes (converted once, reused by many
    composites; read from the spill as raw arrays): the bytes must stay those of the plain compose -> encode
    path, resized or not, any gap, from the cache, the spill or a fresh decode; so must the thumbnails."""
    from kohya_1to2.dataset import preview
    from kohya_1to2.models import CompositeSettings

    sources = []
    for n, size in enumerate([(90, 60), (50, 60), (70, 44)]):
        path = tmp_path / f"s{n}.png"
        image = Image.effect_noise(size, 60).convert("RGB")
        image.paste((n * 80, 30, 200), (3, 3, 20, 15))
        image.save(path)
        sources.append(path)
    pairs = [(0, 1), (1, 0), (0, 2), (2, 1), (1, 2), (0, 1)] * 3
    items = [pool.WorkItem(index=i, left=str(sources[a]), right=str(sources[b]), image_name=f"{i:06d}.{fmt}",
                           caption_name=f"{i:06d}.txt", caption="c", thumbnail=i % 2 == 0)
             for i, (a, b) in enumerate(pairs)]
    settings = CompositeSettings(gap=4, max_side=120, format=fmt)  # type: ignore[call-arg]
    subset = tmp_path / "subset"
    subset.mkdir()
    (tmp_path / "spill").mkdir()
    config = pool.WorkerConfig(background=settings.background_rgb, gap=4, max_side=120, format=fmt, quality=95,
                               subset_dir=str(subset), cache_bytes=cache_bytes,
                               spill_dir=str(tmp_path / "spill") if spill else None,
                               spill_sources=frozenset(str(path) for path in sources))
    results: list[pool.ItemResult] = []
    pool.run_chunks(items, config, 1, results.extend)
    thumbnails = {result[0]: result[6] for result in results}
    for item, (a, b) in zip(items, pairs, strict=True):
        left, right = (compose.load_source(sources[k], settings.background_rgb, 120) for k in (a, b))
        expected = compose.encode(compose.compose_pair(left, right, settings), fmt, 95)
        assert (subset / item.image_name).read_bytes() == expected
        if item.thumbnail and fmt == "png":  # what the parent would get by decoding the file
            assert thumbnails[item.index] == preview.thumbnail_data(Image.open(subset / item.image_name).convert("RGB"))
        else:  # not on the preview, or lossy: the parent decodes the file itself
            assert thumbnails[item.index] is None


@pytest.mark.parametrize("spill", [False, True])
@pytest.mark.parametrize("cache_bytes", [1, pool.CACHE_BYTES])  # a one-entry cache: every reuse is a miss
def test_a_scene_worker_gives_the_bytes_of_render_scene_from_the_cache_the_spill_or_a_decode(
    tmp_path: Path, spill: bool, cache_bytes: int
) -> None:
    """Cut-outs are cached like sources and spilled as raw RGBA (with their source size and bottom flag): a
    miss that reads the spill must build the very bytes a fresh cut-out does."""
    from kohya_1to2.dataset import scene
    from kohya_1to2.dataset.masks import MaskRef

    sources = []
    for n, size in enumerate([(90, 120), (70, 100), (80, 90)]):
        image = Image.effect_noise(size, 60).convert("RGBA")
        alpha = Image.new("L", size, 0)
        alpha.paste(255, (10, 5 + n, size[0] - 10, size[1] - (0 if n != 1 else 7)))  # one not at the bottom
        image.putalpha(alpha)
        image.save(tmp_path / f"s{n}.png")
        sources.append(str(tmp_path / f"s{n}.png"))
    settings = scene.SceneConfig(masks={path: MaskRef("alpha", Path(path)) for path in sources},
                                 background=(250, 250, 250), kind="gradient", flip=True, max_side=200, seed=3)
    pairs = [(0, 1), (1, 2), (2, 0), (0, 1), (1, 0), (2, 1)] * 2
    items = [pool.WorkItem(index=i, left=sources[a], right=sources[b], image_name=f"{i:06d}.png",
                           caption_name=f"{i:06d}.txt", caption="c", pad_to=(256, 192) if i % 3 else None)
             for i, (a, b) in enumerate(pairs)]
    subset, spill_dir = tmp_path / "subset", tmp_path / "spill"
    subset.mkdir()
    spill_dir.mkdir()
    config = pool.WorkerConfig(background=(250, 250, 250), gap=0, max_side=200, format="png", quality=95,
                               subset_dir=str(subset), cache_bytes=cache_bytes, scene=settings,
                               spill_dir=str(spill_dir) if spill else None, spill_sources=frozenset(sources))
    pool.run_chunks(items, config, 1, lambda results: None)
    fresh = {path: scene.load_cutout(path, settings) for path in sources}
    for item, (a, b) in zip(items, pairs, strict=True):
        picture = scene.render_scene([fresh[sources[a]], fresh[sources[b]]], item.image_name, settings, item.pad_to)
        assert (subset / item.image_name).read_bytes() == compose.encode(picture, "png", 95), item
    assert len(list(spill_dir.iterdir())) == (len(sources) if spill else 0), "one raw cut-out per shared source"
