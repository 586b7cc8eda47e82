"""CLI edge: flags come from the models, user mistakes are one line with an exit code, never a traceback."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from kohya_1to2.cli import build_parser, main, model_overrides
from kohya_1to2.commands.prepare import job_from_args
from kohya_1to2.errors import DatasetError, UsageError
from kohya_1to2.models import CompositeSettings


def test_flag_help_shows_the_model_default():
    help_text = build_parser()._subparsers._group_actions[0].choices["prepare"].format_help()  # type: ignore[union-attr]
    assert f"(default: {CompositeSettings().gap})" in help_text
    assert "--caption-extension" in help_text and "--merge-count-tags" in help_text


def test_only_given_flags_override_the_model(tmp_path):
    args = build_parser().parse_args(["prepare", str(tmp_path / "src"), "--out", str(tmp_path / "run"), "--gap", "8"])
    assert model_overrides(args, "composites") == {"gap": 8}
    job = job_from_args(args)
    assert job.composites.gap == 8
    assert job.composites.seed == CompositeSettings().seed


def test_boolean_flags_have_no_forms(tmp_path):
    args = build_parser().parse_args(["prepare", "s", "--out", "o", "--no-sample", "--drop-solo"])
    assert model_overrides(args, "training") == {"sample": False}
    assert model_overrides(args, "captions") == {"drop_solo": True}


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--background", "blue"], "--background: "),
        (["--caption-encoding", "klingon"], "--caption-encoding: "),
        (["--template", "{left_tags}, {left}/{right}"], "first comma-separated token"),
        (["--output-name", "a/b"], "--output-name: "),
    ],
)
def test_bad_settings_name_the_key(tmp_path, flags, needle):
    args = build_parser().parse_args(["prepare", str(tmp_path / "src"), "--out", str(tmp_path / "run"), *flags])
    with pytest.raises(UsageError) as info:
        job_from_args(args)
    assert needle in info.value.message


def test_out_inside_the_sources_is_refused(tmp_path):
    source = tmp_path / "src"
    for out in (source, source / "run"):
        args = build_parser().parse_args(["prepare", str(source), "--out", str(out)])
        with pytest.raises(UsageError, match="inside the source tree"):
            job_from_args(args)


def test_errors_map_to_exit_codes_and_one_line(monkeypatch, capsys):
    def boom(args, console):
        raise DatasetError("bad file x.png: truncated", hint="re-export it")

    monkeypatch.setitem(sys.modules, "kohya_1to2.commands.plan", types.SimpleNamespace(run=boom))
    assert main(["plan", "somewhere"]) == DatasetError.exit_code == 3
    err = capsys.readouterr().err
    assert "error: bad file x.png: truncated" in err and "hint: re-export it" in err
    assert "Traceback" not in err


def test_error_text_with_brackets_is_printed_verbatim(monkeypatch, capsys):
    def boom(args, console):
        raise UsageError("file [bold]odd[/].png")

    monkeypatch.setitem(sys.modules, "kohya_1to2.commands.plan", types.SimpleNamespace(run=boom))
    assert main(["plan", "x"]) == 2
    assert "file [bold]odd[/].png" in capsys.readouterr().err


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "kohya_1to2", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "kohya-1to2" in result.stdout
