"""--fix-sources gives stage 1 the composites' pixels, as the REAL pinned sd-scripts' `load_image` reads them.

sd-scripts runs in a subprocess (cwd = its root): importing library.train_util needs torch and sets up logging.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy
from pixel_fixtures import PIXEL_SOURCES
from sd_scripts_child import SD_SCRIPTS, requires_sd_scripts

from kohya_1to2.dataset.compose import load_source
from kohya_1to2.dataset.preflight import preflight, raise_for_errors, write_fixed_sources
from kohya_1to2.dataset.scan import scan_sources
from kohya_1to2.models import SourceSettings

pytestmark = requires_sd_scripts(marker="library/train_util.py")

LOADER = r"""
import sys
import numpy
sys.path.insert(0, ".")
from library.train_util import load_image
out = sys.argv[1]
numpy.savez(out, **{str(i): load_image(path) for i, path in enumerate(sys.argv[2:])})
"""


def sd_scripts_load_image(paths: list[Path], out: Path) -> list[numpy.ndarray]:
    subprocess.run([sys.executable, "-c", LOADER, str(out), *map(str, paths)], cwd=SD_SCRIPTS, check=True,
                   capture_output=True, timeout=300)
    with numpy.load(out) as arrays:
        return [arrays[str(i)] for i in range(len(paths))]


def test_stage1_copies_equal_the_composite_halves_under_sd_scripts_load_image(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for folder, names in (("1_alice", PIXEL_SOURCES), ("1_bob", ["grey16.png"])):
        (src / folder).mkdir(parents=True)
        for name in names:
            (src / folder / name).write_bytes(PIXEL_SOURCES[name]())
            (src / folder / f"{Path(name).stem}.txt").write_text(f"{folder[2:]}, tag", encoding="utf-8")
    settings = SourceSettings(roots=[src], fix_sources=True)
    scan = scan_sources(settings)
    problems = preflight(scan, settings)
    raise_for_errors(problems)
    assert {p.code for p in problems} == {"sixteen-bit", "transparency"}
    background = (30, 160, 90)

    fixed = write_fixed_sources(scan, problems, tmp_path / "run", background)

    originals = [image.path for c in scan.characters for image in c.images]
    copies = [image.path for c in fixed.characters for image in c.images]
    assert all(tmp_path / "run" / "sources" in copy.parents for copy in copies)  # stage 1 trains on these
    loaded = sd_scripts_load_image([*copies, *originals], tmp_path / "loaded.npz")  # one torch import
    as_sd_scripts_reads, before = loaded[: len(copies)], loaded[len(copies) :]
    for original, copy, stage1, raw in zip(originals, copies, as_sd_scripts_reads, before, strict=True):
        half = numpy.asarray(load_source(original, background))  # the composite half, before resizing
        assert stage1.dtype == numpy.uint8 and stage1.shape == half.shape, copy
        assert numpy.array_equal(stage1, half), copy
        assert numpy.array_equal(numpy.asarray(load_source(copy, background)), half), copy  # composites of copies
        assert not numpy.array_equal(raw, half), original  # the fixture really differed without the fix
