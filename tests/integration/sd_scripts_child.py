"""The pinned sd-scripts for integration tests: where it is, when to skip, and running a script inside it."""

from __future__ import annotations

import atexit
import functools
import importlib.util
import json
import os
import select
import subprocess
import sys
import tempfile
import time
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


SERVER = r"""
import contextlib, io, json, sys, traceback
MARK = sys.argv[1]
protocol = sys.stdout
for line in sys.stdin:
    job = json.loads(line)
    out, err, ok = io.StringIO(), io.StringIO(), True
    stdin, argv, path = sys.stdin, list(sys.argv), list(sys.path)
    sys.stdin = io.StringIO(json.dumps(job["payload"]))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            exec(compile(job["script"], "<sd-scripts test script>", "exec"), {"__name__": "__main__"})
    except SystemExit as exc:
        ok = exc.code in (0, None)
    except BaseException:
        ok = False
        err.write(traceback.format_exc())
    finally:
        sys.stdin, sys.argv, sys.path[:] = stdin, argv, path
    protocol.write(MARK + json.dumps({"ok": ok, "stdout": out.getvalue(), "stderr": err.getvalue()[-4000:]}) + "\n")
    protocol.flush()
"""
"""One Python in sd-scripts' root that runs the tests' scripts one after another, each in fresh globals with its
payload as stdin: torch and train_network are imported once per session instead of once per test (~4 s each)."""


class _Child:
    def __init__(self) -> None:
        self.mark = f"@@result-{os.getpid()}@@"
        # a file, not a pipe: sd-scripts' logging may write much to stderr; closed in close()
        self.log = tempfile.TemporaryFile()  # noqa: SIM115
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, self.mark], cwd=SD_SCRIPTS, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)

    def run(self, script: str, payload: Any, timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"script": script, "payload": payload}) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:  # lines that are not ours (a library printing to the real stdout) are skipped
            if not select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise AssertionError(f"sd-scripts child gave no result in {timeout:g} s")
            line = self.proc.stdout.readline()
            if not line:
                self.log.seek(0)
                raise AssertionError("sd-scripts child died: " + self.log.read().decode(errors="replace")[-4000:])
            if line.startswith(self.mark):
                result: dict[str, Any] = json.loads(line[len(self.mark):])
                return result

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@functools.cache
def _child() -> _Child:
    child = _Child()
    atexit.register(child.close)
    return child


def run_in_sd_scripts(script: str, payload: Any, timeout: float = 300) -> Any:
    """Run `script` in sd-scripts' root (offline), `payload` as JSON on stdin; return its `@@`-prefixed JSON line.
    Scripts share one child process (SERVER): each must leave sd-scripts' modules as it found them."""
    try:
        result = _child().run(script, payload, timeout)
    except AssertionError:
        _child().close()
        _child.cache_clear()  # the next script gets a fresh child
        raise
    assert result["ok"], result["stderr"]
    return json.loads(next(x for x in result["stdout"].splitlines() if x.startswith("@@"))[2:])
