"""README opens with the two commands, and CI runs the second one verbatim; the exit-code table in
docs/development.md and `--help` come from errors.EXIT_CODES."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def first_code_block() -> list[str]:
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("```"))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
    return lines[start + 1 : end]


def test_readme_opens_with_the_main_job_and_the_test_command():
    block = first_code_block()
    assert len(block) == 2
    assert block[0].endswith("-m kohya_1to2 demo")
    assert "pytest" in block[1]


def test_ci_extracts_exactly_the_readme_test_command():
    script = "awk '/^```/{n++; next} n==1{print}' README.md | sed -n 2p"
    extracted = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert extracted.strip() == first_code_block()[1]
    assert script in (REPO / ".ci" / "run").read_text(encoding="utf-8")


def test_docs_exit_code_table_and_help_come_from_the_one_table():
    from kohya_1to2.cli import build_parser
    from kohya_1to2.errors import EXIT_CODES, OneToTwoError

    text = (REPO / "docs" / "development.md").read_text(encoding="utf-8")
    rows = text[text.index("## Exit codes"):].split("\n\n")[1].splitlines()[2:]
    assert rows == [f"| {code} | {meaning} |" for code, _, meaning in EXIT_CODES]
    epilog = build_parser().epilog or ""
    assert all(f"{code} {short}" in epilog for code, short, _ in EXIT_CODES)
    classes = {cls.exit_code for cls in OneToTwoError.__subclasses__()}
    assert classes <= {code for code, _, _ in EXIT_CODES}
