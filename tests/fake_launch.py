"""A fake sd-scripts behind a stand-in `accelerate launch`, shared by tests/test_run.py and
bench/bench_launch.py: the launch chain runs for real, the training does not (fast, no torch)."""

from __future__ import annotations

import json
import site
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

from kohya_1to2.kohya.facts import PARSER_SNAPSHOT

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


FAKE_GEN_IMG = r'''
import hashlib, re, sys
from pathlib import Path
from PIL import Image
args = sys.argv[1:]
prompts, outdir = args[args.index("--from_file") + 1], Path(args[args.index("--outdir") + 1])
weights = Path(args[args.index("--network_weights") + 1]).read_bytes() if "--network_weights" in args else b""
model = Path(args[args.index("--ckpt") + 1]).read_bytes()
for line in (l for l in open(prompts, encoding="utf-8").read().splitlines() if l.strip()):
    size = (int(re.search(r" --w (\d+)", line).group(1)) // 8, int(re.search(r" --h (\d+)", line).group(1)) // 8)
    seed = re.search(r" --d (\d+)", line).group(1)
    colour = hashlib.sha256(model + weights + line.split(" --")[0].encode() + seed.encode()).digest()[:3]
    Image.new("RGB", size, tuple(colour)).save(outdir / line.split(" --f ")[1])
    print(f"wrote {line.split(' --f ')[1]}", flush=True)
'''
"""A stand-in for sd-scripts' gen_img.py: one image per `--from_file` line, named by its `--f`, an eighth of its
`--w`x`--h`, its colour a hash of the base model, the network file, the prompt and the seed (so rows differ by
weights only, and the same inputs give the same image)."""


def make_fake_base_model(root: Path) -> Path:
    """A base-model file `prepare` accepts; the fakes never load it (the fake gen_img.py hashes its bytes)."""
    base = root / "base.safetensors"
    base.write_bytes(b"fake model")
    return base


def write_safetensors_header(path: Path, keys: tuple[str, ...] = (), metadata: dict[str, str] | None = None) -> Path:
    """A header-only .safetensors file (empty tensors named `keys`, and `__metadata__`): a base model whose
    header says what it predicts, for `check`'s v-pred tests."""
    header: dict[str, object] = {key: {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for key in keys}
    if metadata is not None:
        header["__metadata__"] = metadata
    data = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(data)) + data)
    return path


def make_fake_gen_img(root: Path) -> Path:
    """An sd-scripts folder holding only the fake gen_img.py (pass it as `--sd-scripts`)."""
    sd = root / "sd-scripts-gen"
    sd.mkdir(parents=True)
    (sd / "gen_img.py").write_text(FAKE_GEN_IMG, encoding="utf-8")
    return sd


FAKE_KOHYA_PARSER = r'''
def setup_parser():
    """The pinned parser rebuilt from the snapshot beside this file (options.json): the same options, types
    and defaults, without importing torch."""
    import argparse, json, os

    def named(name):
        def convert(value):
            return value
        convert.__name__ = name
        return {"int": int, "float": float, "str": str}.get(name, convert)

    data = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "options.json")))
    parser = argparse.ArgumentParser()
    for action in data["parsers"][os.path.basename(__file__)]:
        options = {"dest": action["dest"], "default": action["default"]}
        if action["store_true"]:
            options["action"] = "store_true"
        else:
            options.update({key: action[key] for key in ("nargs", "choices") if action[key] is not None})
            options.update({"type": named(action["type"])} if action["type"] else {})
        parser.add_argument(*action["option_strings"], **options)
    return parser


if __name__ == "__main__":
'''
"""The head of a fake kohya_ss install's training script: a real argparse parser equal to the pin's (what
kohya/parser_snapshot.py reads), then the fake training, indented under `__main__`."""

FAKE_CONFIG_UTIL = r'''
import functools, json, os
from voluptuous import Any, Optional, Required

def twodim(klass, value): return value
def scalar_or_twodim(klass, value): return value

def validator(text):
    kinds = {"None": None, "list": [], **{k.__name__: k for k in (bool, dict, float, int, str)}}
    parts = text.split("|")
    if len(parts) == 2 and parts[1] == parts[0] + "[2]":
        return functools.partial(scalar_or_twodim, kinds[parts[0]])
    if len(parts) > 1:
        return Any(*(validator(part) for part in parts))
    return functools.partial(twodim, kinds[text[:-3]]) if text.endswith("[2]") else kinds[text]

def schema(table):
    return {(Required if spec["required"] else Optional)(key): validator(spec["type"]) for key, spec in table.items()}

class ConfigSanitizer:
    def __init__(self, *flags):
        data = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "options.json")))
        tables = data["dataset_schema"]
        self.general_schema = schema(tables["general"])
        self.db_dataset_schema = schema(tables["dataset"])
        self.db_subset_schema = schema(tables["subset"])
        self.ft_subset_schema = schema(tables["finetune_subset"])
'''
"""A fake `library/config_util.py`: sd-scripts' dataset schema rebuilt from options.json, voluptuous markers and
validators of the shapes kohya/parser_snapshot.py describes."""


def make_fake_kohya_ss(root: Path, train_source: str, gen_img_source: str) -> Path:
    """A kohya_ss-laid-out install at `root`: `sd-scripts/` whose training scripts have the pin's parser (from
    the bundled snapshot) and run `train_source`, and `venv/`, a real virtual environment that sees this
    environment's packages. Returns the sd-scripts folder."""
    tree = root / "sd-scripts"
    (tree / "library").mkdir(parents=True)
    script = FAKE_KOHYA_PARSER + textwrap.indent(train_source, "    ")
    for name in ("train_network.py", "sdxl_train_network.py"):
        (tree / name).write_text(script, encoding="utf-8")
    (tree / "gen_img.py").write_text(gen_img_source, encoding="utf-8")
    (tree / "options.json").write_bytes(PARSER_SNAPSHOT.read_bytes())
    (tree / "library" / "__init__.py").write_text("", encoding="utf-8")
    (tree / "library" / "config_util.py").write_text(FAKE_CONFIG_UTIL, encoding="utf-8")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    [packages] = (root / "venv" / "lib").glob("python*/site-packages")
    ours = [path for path in site.getsitepackages() if Path(path).is_dir()]
    (packages / "kohya_1to2_tests.pth").write_text(
        "".join(f"import site; site.addsitedir({path!r})\n" for path in ours), encoding="utf-8")
    return tree
