"""README.md and docs/*.md: every relative link resolves, and every command they show runs.

A command is a line of a ```bash block. Lines that run `python -m kohya_1to2 ...` run here through the real
CLI (`cli.main`, in this process), in a workspace whose files are the names the docs use:

| name in the docs              | here                                                          |
|-------------------------------|---------------------------------------------------------------|
| my_characters/                | a copy of the bundled example (examples/dataset)              |
| my_regularisation/1_girl/     | two of the example's images, as class images                  |
| base.safetensors              | a fake SD1 base model (prepare accepts it, nothing loads it)  |
| illustrious-xl.safetensors    | a fake SDXL base whose header says nothing about prediction   |
| noobai-xl-vpred.safetensors   | a fake SDXL base carrying NoobAI's `v_pred` and `ztsnr` keys  |
| my_prompts.txt                | two extra prompts in sd-scripts' syntax                       |
| my_masks/                     | a copy of the bundled example's masks (examples/masks)        |
| tiny-model/                   | a stand-in for `make-tiny-model tiny-model`'s diffusers folder |
| ../kohya_ss/                  | a kohya_ss install: `sd-scripts/` (the pin's parser, fake training) and `venv/` |
| templates/                    | a copy of the repository's presets                            |
| runs/...                      | run directories the commands create                           |

Training and image generation are the fakes of tests/fake_launch.py (a stand-in `accelerate launch` runs
FAKE_TRAIN below, a stand-in gen_img.py draws flat images); everything else is the real code. README.md runs
first in a fresh workspace (the quickstart: prepare, check, plan, launch, evaluate); each docs page then runs
in its own copy of the workspace README.md left, top to bottom, so a page may use `runs/mine`.

Each command must exit 0, or the code its line's comment names (`# exits 4`). `sed -i` and `cp` lines run too
(the hand edits the next command shows). Any other line must be in NOT_RUN_COMMANDS or NOT_RUN_LINES with the
reason it is not run here and the test that covers it: a line this test does not know fails, never skips.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from fake_launch import FAKE_GEN_IMG, make_fake_base_model, make_fake_kohya_ss, make_fake_sd_scripts
from sample_images import write_image

from kohya_1to2.cli import main
from kohya_1to2.environment.vendor import default_sd_scripts
from kohya_1to2.errors import SetupError

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CLI = re.compile(r"(?:^|&&\s*)(?:\S*/)?python -m kohya_1to2 (?P<args>.*)$")
SHELL = ("sed -i ", "cp ")
"""Shell lines that run as shown, in the workspace."""

NOT_RUN_COMMANDS: dict[str, str] = {
    "demo": "trains for real: tests/integration (the smoke runs), its wiring in tests/test_demo.py",
    "make-tiny-model": "builds a torch model: tests/test_tiny_model.py, tests/integration/smoke_runs.py",
    "setup": "fetches sd-scripts and installs torch: tests/test_vendor.py, ./bootstrap.sh in CI",
}
"""kohya_1to2 commands shown but not run here (minutes, torch, network), with the tests that cover them."""

NOT_RUN_LINES: dict[str, str] = {
    "./bootstrap.sh": "installs the venv and the training stack: CI runs it (.ci/run, tests/test_readme.py)",
    "SD_SCRIPTS_ARCHIVE=": "./bootstrap.sh from an archive: CI runs it (.ci/run)",
    ".venv/bin/python -m pytest": "the test suite itself (CI: .ci/run)",
    ".venv/bin/ruff check": "the linter (CI)",
    ".venv/bin/mypy": "the type checker (CI)",
    ".venv/bin/pip install": "installs an optional extra (tests/test_identity.py covers the code it enables)",
    "hf download": "needs the network (Hugging Face)",
    "tensorboard --logdir": "a server that does not exit",
    "$EDITOR": "opens an editor",
    ".venv/bin/python tools/snapshot_kohya_parser.py": "needs the real sd-scripts parser: tests/integration",
    ".venv/bin/python tools/make_example.py": "redraws examples/: tests/test_examples.py runs it",
}
"""Other lines shown in bash blocks but not run here, by how the line starts, each with why."""

FAKE_TRAIN = r'''
import json, os, struct, sys, time, toml
from PIL import Image
args = sys.argv
cfg = {}
for key, table in toml.load(args[args.index("--config_file") + 1]).items():  # as sd-scripts reads it
    cfg.update(table if isinstance(table, dict) else {key: table})
out, name = cfg["output_dir"], cfg["output_name"]
epochs = int(cfg.get("max_train_epochs", 1))
os.makedirs(os.path.join(out, "sample"), exist_ok=True)
def network(path, epoch):
    header = json.dumps({"__metadata__": {"ss_epoch": str(epoch), "ss_output_name": name}}).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(header)) + header)
if cfg.get("network_weights"):
    print(f"load network weights from {cfg['network_weights']}: {{}}", flush=True)
for step in range(1, 4):
    print(f"steps: {33 * step}%|###| {step}/3 [00:01<00:00, avr_loss=0.{10 - step}]", flush=True)
if os.environ.get("FAKE_INTERRUPT"):  # stopped after saving epoch 1's state, as a killed run leaves it
    state = os.path.join(out, f"{name}-000001-state")
    os.makedirs(state, exist_ok=True)
    open(os.path.join(state, "train_state.json"), "w").write('{"current_step": 1}')
    open(os.path.join(state, "random_states_0.pkl"), "wb").close()
    print("Killed", flush=True)
    sys.exit(137)
for epoch in range(max(1, epochs - 1), epochs):  # the last two epochs only, to keep evaluate's rows few
    network(os.path.join(out, f"{name}-{epoch:06d}.safetensors"), epoch)
network(os.path.join(out, f"{name}.safetensors"), epochs)
Image.new("RGB", (64, 64), (120, 160, 200)).save(
    os.path.join(out, "sample", f"{name}_e{epochs:06d}_00_{time.strftime('%Y%m%d%H%M%S')}.png"))
'''
"""A stand-in train_network.py: reads the config as sd-scripts does, prints progress lines with a loss, and
writes the last two epochs' networks (header-only safetensors with `ss_epoch`), the final one and a sample. With
FAKE_INTERRUPT set it leaves a saved state and dies, as a killed stage does."""


@dataclass(frozen=True)
class Line:
    page: Path
    number: int
    text: str

    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.number}: {self.text}"


def bash_lines(page: Path) -> Iterator[Line]:
    """The command lines of a page's ```bash blocks (continuations joined, comment-only lines left out)."""
    inside, pending, start = False, "", 0
    for number, raw in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if raw.startswith("```"):
            inside = raw.strip() == "```bash" if not inside else False
            continue
        if not inside or (not pending and (not raw.strip() or raw.lstrip().startswith("#"))):
            continue
        start = start if pending else number
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        yield Line(page, start, (pending + raw).strip())
        pending = ""


def expected_code(text: str) -> int:
    found = re.search(r"#\s*exits (\d+)", text)
    return int(found.group(1)) if found else 0


def not_run_reason(text: str) -> str | None:
    """Why a line is shown but not run here (None: it must run)."""
    if command := CLI.search(text):
        return NOT_RUN_COMMANDS.get(command.group("args").split()[0])
    return next((reason for prefix, reason in NOT_RUN_LINES.items() if text.startswith(prefix)), None)


# ---------------------------------------------------------------- links


HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, inside = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        inside = not inside if line.startswith("```") else inside
        if not inside and (match := HEADING.match(line)):
            found.add(anchor(match.group(1)))
    return found


def links(page: Path) -> Iterator[tuple[int, str]]:
    inside = False
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        inside = not inside if line.startswith("```") else inside
        if not inside:
            for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
                yield number, target


def test_there_are_docs_pages_and_the_readme_links_each_one() -> None:
    docs = PAGES[1:]
    assert len(docs) >= 7, "the docs pages are missing"
    linked = {target.split("#")[0] for _, target in links(REPO / "README.md")}
    assert {f"docs/{page.name}" for page in docs} <= linked


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves_to_a_file_and_heading(page: Path) -> None:
    broken = []
    for number, target in links(page):
        if re.match(r"[a-z]+:", target):  # https:, mailto: ...: not checked offline
            continue
        path_part, _, fragment = target.partition("#")
        path = (page.parent / path_part).resolve() if path_part else page
        if not path.exists():
            broken.append(f"{page.name}:{number}: {target}: no such file")
        elif fragment and (path.suffix != ".md" or fragment not in anchors(path)):
            broken.append(f"{page.name}:{number}: {target}: no heading #{fragment} in {path.name}")
    assert not broken, "\n".join(broken)


def test_the_link_checker_finds_a_missing_file_and_a_missing_heading(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Title `x`\n## Data and pre-flight\n", encoding="utf-8")
    assert anchors(tmp_path / "a.md") == {"title-x", "data-and-pre-flight"}
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#data-and-pre-flight) [bad](a.md#nope) [gone](c.md) `[not](a link)`\n"
                    "```\n[in code](nowhere.md)\n```\n", encoding="utf-8")
    assert [t for _, t in links(page)] == ["a.md#data-and-pre-flight", "a.md#nope", "c.md"]


# ---------------------------------------------------------------- commands


def test_every_line_of_a_bash_block_is_run_or_says_why_not() -> None:
    unknown = [line.where() for page in PAGES for line in bash_lines(page)
               if not CLI.search(line.text) and not line.text.startswith(SHELL) and not not_run_reason(line.text)]
    assert not unknown, "lines the docs test neither runs nor lists in NOT_RUN:\n" + "\n".join(unknown)


def test_the_extraction_joins_continuations_and_reads_expected_codes(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("```bash\n# a comment\n.venv/bin/python -m kohya_1to2 check runs/x \\\n    --y  # exits 4\n```\n"
                    "```\n.venv/bin/python -m kohya_1to2 not-bash\n```\n", encoding="utf-8")
    lines = list(bash_lines(page))
    assert [(line.number, line.text) for line in lines] == [
        (3, ".venv/bin/python -m kohya_1to2 check runs/x      --y  # exits 4")]
    assert expected_code(lines[0].text) == 4
    assert not_run_reason("./bootstrap.sh && .venv/bin/python -m kohya_1to2 demo")
    assert not_run_reason(".venv/bin/python -m kohya_1to2 launch runs/mine") is None


def fake_sdxl_base(path: Path, *keys: str) -> None:
    """A header-only .safetensors with an SDXL text-encoder key and `keys` (what check reads, no weights)."""
    header = {key: {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
              for key in ("conditioner.embedders.1.model.ln_final.weight", *keys)}
    data = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(data)) + data)


def make_workspace(root: Path) -> None:
    """The files the docs' commands name (see the table above), and the fake sd-scripts in .fakes/."""
    shutil.copytree(REPO / "examples" / "dataset", root / "my_characters")
    shutil.copytree(REPO / "examples" / "masks", root / "my_masks")
    for n in range(2):
        write_image(root / "my_regularisation" / "1_girl" / f"girl_{n}.png", (128, 128), (90 + 40 * n, 120, 160))
    make_fake_base_model(root)  # base.safetensors
    fake_sdxl_base(root / "illustrious-xl.safetensors")
    fake_sdxl_base(root / "noobai-xl-vpred.safetensors", "v_pred", "ztsnr")
    (root / "my_prompts.txt").write_text("akari, sitting, park --n lowres\nbluebell, walking --n lowres\n",
                                         encoding="utf-8")
    (root / "tiny-model" / "unet").mkdir(parents=True)
    (root / "tiny-model" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}\n')
    shutil.copytree(REPO / "templates", root / "templates")
    sd, _ = make_fake_sd_scripts(root / ".fakes", FAKE_TRAIN)
    shutil.copy(sd / "train_network.py", sd / "sdxl_train_network.py")
    (sd / "gen_img.py").write_text(FAKE_GEN_IMG, encoding="utf-8")
    if not (root.parent / "kohya_ss").exists():  # beside the workspace, as the docs' ../kohya_ss
        make_fake_kohya_ss(root.parent / "kohya_ss", FAKE_TRAIN, FAKE_GEN_IMG)


def cli(argv: list[str]) -> tuple[int, str]:
    """`main(argv)` with its output captured (launch copies the trainer's bytes to stdout's buffer):
    (exit code, stdout + stderr)."""
    out, err = (io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True) for _ in range(2))
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, b"".join(stream.buffer.getvalue() for stream in (out, err)).decode(errors="replace")  # type: ignore[attr-defined]


@contextmanager
def in_workspace(workspace: Path) -> Iterator[pytest.MonkeyPatch]:
    """In `workspace`, where launch and evaluate find its fake sd-scripts in place of the pin (any other tree
    is an external install, as the real check would find it), and option snapshots are cached in .cache/."""
    def fake(path: Path | None) -> Path:
        if path is None or path.resolve() == default_sd_scripts().resolve():
            return (workspace / ".fakes" / "sd-scripts").resolve()
        raise SetupError(f"{path}: not the pin")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("kohya_1to2.commands.launch.require_sd_scripts", fake)
        patch.setattr("kohya_1to2.evaluate.session.require_sd_scripts", fake)
        patch.chdir(workspace)
        patch.setenv("PYTHONPATH", str(workspace / ".fakes" / "shim"))  # the stand-in accelerate first
        patch.setenv("XDG_CACHE_HOME", str(workspace / ".cache"))
        patch.setenv("COLUMNS", "240")  # a wide terminal: a path in a table stays on one line for the asserts
        for name in ("FAKE_INTERRUPT", "KOHYA_1TO2_SD_SCRIPTS", "KOHYA_1TO2_PYTHON"):  # the pin's default, here faked
            patch.delenv(name, raising=False)
        yield patch


def run_page(page: Path, workspace: Path) -> list[tuple[str, str]]:
    """Run a page's commands in `workspace`, top to bottom, against the fakes; return each line run with its
    output."""
    ran = []
    with in_workspace(workspace) as patch:
        for line in bash_lines(page):
            if not_run_reason(line.text):
                continue
            if line.text.startswith(SHELL):
                proc = subprocess.run(["bash", "-c", line.text], capture_output=True, text=True)
                assert proc.returncode == 0, f"{line.where()}\n{proc.stderr}"
                ran.append((line.text, proc.stdout))
                continue
            command = CLI.search(line.text)
            if command is None:
                pytest.fail(f"{line.where()}\nneither a kohya_1to2 command, nor {SHELL}, nor listed in NOT_RUN_LINES")
            argv = shlex.split(command.group("args"), comments=True)
            if "--resume" in argv:  # only an interrupted stage resumes: interrupt this run's first stage
                patch.setenv("FAKE_INTERRUPT", "1")
                assert cli(["launch", argv[1], "--force"])[0] == 6, line.where()
                patch.delenv("FAKE_INTERRUPT")
            code, output = cli(argv)
            assert code == expected_code(line.text), f"{line.where()}\nexit {code}\n{output}"
            assert "--resume" not in argv or "resuming from" in output, f"{line.where()}\n{output}"
            ran.append((line.text, output))
    return ran


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """The workspace after README.md's commands, and the lines that ran. A copy is kept beside it: run
    directories hold absolute paths, so each page gets the copy back at this same path (`fresh_workspace`)."""
    workspace = tmp_path_factory.mktemp("docs") / "workspace"
    make_workspace(workspace)
    ran = [text for text, _ in run_page(REPO / "README.md", workspace)]
    shutil.copytree(workspace, workspace.with_name("after-readme"), symlinks=True)
    return workspace, ran


def fresh_workspace(quickstart: tuple[Path, list[str]]) -> Path:
    workspace = quickstart[0]
    shutil.rmtree(workspace)
    shutil.copytree(workspace.with_name("after-readme"), workspace, symlinks=True)
    return workspace


def test_readme_commands_run_prepare_to_evaluate(quickstart: tuple[Path, list[str]]) -> None:
    subcommands = [shlex.split(CLI.search(text).group("args"))[0] for text in quickstart[1]]  # type: ignore[union-attr]
    assert subcommands[0] == "prepare" and subcommands[-1] == "evaluate", subcommands
    assert {"check", "launch"} <= set(subcommands)
    workspace = fresh_workspace(quickstart)
    assert (workspace / "runs" / "mine" / "eval" / "metrics.jsonl").is_file()


@pytest.mark.parametrize("page", PAGES[1:], ids=lambda p: p.name)
def test_docs_page_commands_run(page: Path, quickstart: tuple[Path, list[str]]) -> None:
    run_page(page, fresh_workspace(quickstart))


def test_the_sd_scripts_commands_run_the_kohya_ss_install_with_its_venv(quickstart: tuple[Path, list[str]]) -> None:
    """launch.md's --sd-scripts lines really use ../kohya_ss: its snapshot is generated by its venv's Python and
    cached, doctor names it, launch trains with that Python (not this one, not the pin)."""
    workspace = fresh_workspace(quickstart)
    ran = [(text, output) for text, output in run_page(REPO / "docs" / "launch.md", workspace)
           if "--sd-scripts" in text]
    assert [shlex.split(text)[3] for text, _ in ran] == ["doctor", "check", "launch"], ran
    install, python = (workspace.parent / "kohya_ss" / rel for rel in ("sd-scripts", "venv/bin/python"))
    doctor, check, launch = (" ".join(output.split()) for _, output in ran)  # rich wraps long lines
    assert str(install.resolve()) in doctor and "external, --sd-scripts" in doctor, doctor
    assert f"sd-scripts unknown (not a git checkout; train_network.py differs from v0.10.1) at {install.resolve()}" \
        in check, check
    assert f"run by {python.absolute()}" in launch and "load network weights" in launch, launch
    assert len(list((workspace / ".cache" / "kohya-1to2" / "snapshots").glob("*.json"))) == 1


def test_the_report_picture_shows_the_real_reports_sections_in_order(quickstart: tuple[Path, list[str]]) -> None:
    """README's picture of report.html names the sections of a real report, comparison included."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    picture = text[text.index("| kohya-1to2 run report"):]
    drawn = re.findall(r"^\| == (.+?) =+", picture[:picture.index("```")], flags=re.MULTILINE)
    workspace = fresh_workspace(quickstart)
    with in_workspace(workspace):  # a second run of the same sources, compared with the quickstart's
        assert cli(["prepare", "my_characters", "--out", "runs/other", "--base-model", "base.safetensors"])[0] == 0
        assert cli(["launch", "runs/other"])[0] == 0
        assert cli(["evaluate", "runs/mine", "runs/other", "--seeds", "1", "--singles", "1", "--pairs", "1"])[0] == 0
    real = re.findall(r"<h2>(.*?)</h2>", (workspace / "runs" / "mine" / "report.html").read_text(encoding="utf-8"))
    assert drawn == real


if __name__ == "__main__":  # list what would run, page by page
    for doc in PAGES:
        for found in bash_lines(doc):
            print(("skip " if not_run_reason(found.text) else "run  ") + found.where())
    sys.exit(0)
