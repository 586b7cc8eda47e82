"""A fake sd-scripts behind a stand-in `accelerate launch`, shared by tests/test_run.py and
bench/bench_launch.py: the launch chain runs for real, the training does not (fast, no torch)."""

from __future__ import annotations

import json
from pathlib import Path

FAKE_ACCELERATE = """\
import runpy, sys
args = sys.argv[1:]
i = next(n for n, a in enumerate(args) if a.endswith(".py"))
sys.argv = args[i:]
runpy.run_path(args[i], run_name="__main__")
"""

DRIVER = """\
import sys
from pathlib import Path
import kohya_1to2.commands.launch as launch
launch.require_sd_scripts = lambda path: Path(path)
from kohya_1to2.cli import main
code = main(sys.argv[1:])
assert "torch" not in sys.modules, "the wrapper imported torch"
sys.exit(code)
"""
"""Runs the CLI in a child with the fake sd-scripts accepted, and fails if the wrapper imported torch."""


def q(path: Path) -> str:
    """A path as a TOML basic string (JSON escaping is valid TOML)."""
    return json.dumps(str(path))


def make_fake_sd_scripts(root: Path, train_source: str, sd_name: str = "sd-scripts") -> tuple[Path, Path]:
    """Write the stand-in accelerate package and a fake `train_network.py`.

    Returns (sd-scripts folder, folder to put first on the child's PYTHONPATH).
    """
    shim = root / "shim" / "accelerate" / "commands"
    shim.mkdir(parents=True)
    (shim.parent / "__init__.py").write_text("")
    (shim / "__init__.py").write_text("")
    (shim / "launch.py").write_text(FAKE_ACCELERATE)
    sd = root / sd_name
    sd.mkdir()
    (sd / "train_network.py").write_text(train_source)
    return sd, root / "shim"
