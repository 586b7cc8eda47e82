"""Shared fixtures: small generated kohya datasets, and the integration-skip policy."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

PALETTE = [(220, 60, 60), (60, 120, 220), (60, 180, 90), (200, 160, 40), (150, 80, 190), (40, 170, 170)]


def write_image(path: Path, size: tuple[int, int] = (96, 128), colour: tuple[int, int, int] = (200, 50, 50)) -> Path:
    """A small solid image with a marker square, so different files have different pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    marker = (hash(path.name) % 200, 255 - colour[1], colour[0] // 2)
    image.paste(marker, (4, 4, 4 + size[0] // 4, 4 + size[1] // 4))
    image.save(path)
    return path


@pytest.fixture
def kohya_dataset(tmp_path: Path) -> Callable[..., Path]:
    """Factory: `kohya_dataset({"alice": 3, "bob": 2})` -> a root with `1_alice/`, `1_bob/`, captions
    `alice, tag_a0, ...` beside each image."""

    def make(characters: dict[str, int], root_name: str = "src", repeats: int = 1,
             size: tuple[int, int] = (96, 128)) -> Path:
        root = tmp_path / root_name
        for n, (name, count) in enumerate(characters.items()):
            folder = root / f"{repeats}_{name}"
            for i in range(count):
                image = write_image(folder / f"{name}_{i:02d}.png", size, PALETTE[n % len(PALETTE)])
                image.with_suffix(".txt").write_text(f"{name}, tag_{name}{i}, 1girl, solo\n", encoding="utf-8")
        return root

    return make


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In CI (KOHYA_1TO2_REQUIRE_INTEGRATION=1) an integration test may not skip: it must run."""
    if os.environ.get("KOHYA_1TO2_REQUIRE_INTEGRATION") != "1":
        return
    for item in items:
        if item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.require_run)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if item.get_closest_marker("require_run") and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"integration test skipped in CI, where it must run: {report.longrepr}"
