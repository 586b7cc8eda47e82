"""evaluate/generate.py: one child per row writes every cell; unchanged cells are reused; failures are errors."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from rich.console import Console

from kohya_1to2.errors import TrainingError
from kohya_1to2.evaluate.argv import GenerateCommand
from kohya_1to2.evaluate.generate import plan_row, run_rows
from kohya_1to2.evaluate.prompts import EvalPrompt
from kohya_1to2.evaluate.rows import Row

# A stand-in for gen_img.py: reads --from_file/--outdir, writes each line's `--f` image, coloured by its seed.
FAKE_GEN_IMG = r'''
import os, sys, re
from PIL import Image
args = sys.argv[1:]
prompts, outdir = args[args.index("--from_file") + 1], args[args.index("--outdir") + 1]
fail = os.environ.get("FAKE_GEN_IMG_FAIL") == "1"
for n, line in enumerate(l for l in open(prompts, encoding="utf-8").read().splitlines() if l.strip()):
    if fail and n == 1:
        print("boom: out of memory"); sys.exit(3)
    seed = int(re.search(r" --d (\d+)", line).group(1))
    name = line.split(" --f ")[1]
    print(f"steps: 100%|##| 2/2 writing {name}", flush=True)
    Image.new("RGB", (32, 32), (seed % 256, 10, 20)).save(f"{outdir}/{name}")
'''

PROMPTS = [EvalPrompt(id="single_a", kind="single", text="a", width=32, height=32),
           EvalPrompt(id="pair_a__b", kind="pair", text="a/b", width=48, height=32)]


def job_for(tmp_path: Path, row: Row, fail: bool = False):  # type: ignore[no-untyped-def]
    script = tmp_path / "fake_gen_img.py"
    script.write_text(FAKE_GEN_IMG, encoding="utf-8")
    folder = tmp_path / "eval" / "images" / row.id
    command = GenerateCommand(row=row.id, cwd=tmp_path, env={"FAKE_GEN_IMG_FAIL": "1" if fail else "0"}, argv=(
        sys.executable, str(script), "--from_file", str(folder / "prompts.txt"), "--outdir", str(folder)))
    return plan_row(row, folder, command, PROMPTS, [1, 2], steps=2, model_hash="m")


def quiet() -> Console:
    return Console(file=io.StringIO(), width=100)


def test_every_cell_is_generated_then_reused_until_its_inputs_change(tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"one")
    rows = [Row(id="base", label="base model"), Row(id="stage1", label="stage 1", weights=weights, stage=1)]
    jobs = [job_for(tmp_path, row) for row in rows]
    assert run_rows(jobs, quiet(), tmp_path / "logs") == (8, 0)
    names = sorted(p.name for p in (tmp_path / "eval/images/base").glob("*.png"))
    assert names == ["pair_a__b_s1.png", "pair_a__b_s2.png", "single_a_s1.png", "single_a_s2.png"]
    assert (tmp_path / "logs" / "stage1.log").is_file()
    before = (tmp_path / "eval/images/base/single_a_s1.png").stat().st_mtime_ns
    jobs = [job_for(tmp_path, row) for row in rows]
    assert run_rows(jobs, quiet(), tmp_path / "logs") == (0, 8)
    assert (tmp_path / "eval/images/base/single_a_s1.png").stat().st_mtime_ns == before
    weights.write_bytes(b"two")  # new weights: only that row is generated again
    jobs = [job_for(tmp_path, row) for row in rows]
    assert run_rows(jobs, quiet(), tmp_path / "logs") == (4, 4)
    (tmp_path / "eval/images/base/pair_a__b_s2.png").unlink()  # a deleted image comes back alone
    jobs = [job_for(tmp_path, row) for row in rows]
    assert run_rows(jobs, quiet(), tmp_path / "logs") == (1, 7)


def test_a_failing_child_is_one_error_naming_the_row_and_its_log(tmp_path: Path) -> None:
    job = job_for(tmp_path, Row(id="base", label="base model"), fail=True)
    with pytest.raises(TrainingError, match=r"row 'base model' failed .*out of memory") as info:
        run_rows([job], quiet(), tmp_path / "logs")
    assert "base.log" in (info.value.hint or "")
    # the image written before the failure is recorded and reused next time
    good = job_for(tmp_path, Row(id="base", label="base model"))
    assert run_rows([good], quiet(), tmp_path / "logs") == (3, 1)
