"""The pinned sd-scripts for integration tests: where it is, when to skip, and running a script inside it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SD_SCRIPTS = Path(os.environ.get("KOHYA_1TO2_SD_SCRIPTS", REPO / "vendor" / "sd-scripts"))

_MISSING_PACKAGE = {
    "torch": "torch is not installed (sd-scripts' training stack; run ./bootstrap.sh)",
    "numpy": "numpy is not installed",
}


DATASET_GROUP = r"""
import json, sys
request = json.load(sys.stdin)
sys.path.insert(0, ".")
import train_network
from library import config_util, train_util


def dataset_group(training_toml):
    # (args, dataset group) as train_network builds them from a training TOML and its dataset_config
    parser = train_network.setup_parser()
    sys.argv = ["train_network.py", "--config_file", training_toml]
    args = train_util.read_config_from_file(parser.parse_args(), parser)
    user = config_util.load_user_config(args.dataset_config)
    sanitizer = config_util.ConfigSanitizer(True, True, False, True)
    blueprint = config_util.BlueprintGenerator(sanitizer).generate(user, args)
    group, _ = config_util.generate_dataset_group_by_blueprint(blueprint.dataset_group)
    return args, group
"""
"""The head of a child script that reads training TOMLs as train_network does: `request` (the JSON payload) and
`dataset_group(path)`."""


def requires_sd_scripts(package: str = "torch", marker: str = "train_network.py") -> list[pytest.MarkDecorator]:
    """`pytestmark` of a test module that runs sd-scripts code: integration, skipped with the reason when absent."""
    return [
        pytest.mark.integration,
        pytest.mark.skipif(not (SD_SCRIPTS / marker).is_file(),
                           reason=f"sd-scripts not found at {SD_SCRIPTS} (run ./bootstrap.sh)"),
        pytest.mark.skipif(importlib.util.find_spec(package) is None, reason=_MISSING_PACKAGE[package]),
    ]


def run_in_sd_scripts(script: str, payload: Any, timeout: float = 300) -> Any:
    """Run `script` in sd-scripts' root (offline), `payload` as JSON on stdin; return its `@@`-prefixed JSON line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], input=json.dumps(payload), cwd=SD_SCRIPTS,
                          capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("@@"))[2:])
