"""Shared fixtures: small generated kohya datasets, and the integration-skip policy (helpers that tests import
live in modules of their own, e.g. sample_images: a second conftest.py, in tests/integration, takes the name)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from sample_images import PALETTE, write_image


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
