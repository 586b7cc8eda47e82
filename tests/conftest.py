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


TRAINED_RUNS = frozenset({"trained_run", "evaluated_run", "killed_joint_run"})
"""tests/integration/conftest.py's session fixtures: each trains the tiny model, minutes of CPU."""

TRAINED_RUNS_GROUP = "trained-runs"


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's worker reads the groups into the test ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that reads a trained run goes to one pytest-xdist worker (`--dist loadgroup`): a session
    fixture is per worker, so spread over two they would each train it. In CI (KOHYA_1TO2_REQUIRE_INTEGRATION=1)
    an integration test may not skip: it must run."""
    required = os.environ.get("KOHYA_1TO2_REQUIRE_INTEGRATION") == "1"
    for item in items:
        if TRAINED_RUNS & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group(TRAINED_RUNS_GROUP))
        if required and item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.require_run)


LOST_GROUP = pytest.StashKey[str]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """A pytest-xdist worker whose trained-run tests lost their group would train the runs again beside the
    other worker (minutes, and twice the memory): those tests fail instead, saying why. xdist's loadgroup marks a
    group by renaming the test's id, which pytest 9.2 ignores (pytest-xdist#1386)."""
    if not getattr(session.config.option, "loadgroup", False):  # set in workers of `--dist loadgroup` only
        return
    if any(item.get_closest_marker("xdist_group") and not item.nodeid.endswith(f"@{TRAINED_RUNS_GROUP}")
           for item in session.items):
        session.config.stash[LOST_GROUP] = (
            f"pytest-xdist did not group the trained-run tests on one worker (pytest {pytest.__version__}, "
            "pytest-xdist#1386): pip install 'pytest<9.2', or run with -n 0")


@pytest.hookimpl(tryfirst=True)  # before the fixtures are set up: a lost group trains nothing
def pytest_runtest_setup(item: pytest.Item) -> None:
    if (lost := item.config.stash.get(LOST_GROUP, None)) and item.get_closest_marker("xdist_group"):
        pytest.fail(lost, pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if item.get_closest_marker("require_run") and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"integration test skipped in CI, where it must run: {report.longrepr}"
