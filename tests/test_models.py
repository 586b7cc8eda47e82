"""Job model validation: every rejected value yields a one-line message naming the key and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from kohya_1to2.models import (
    CaptionRules,
    CompositeSettings,
    Job,
    SourceImage,
    SourceSettings,
    TrainingSettings,
    validation_message,
)


def rejection(model: type[BaseModel], **values: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        model(**values)
    message = validation_message(caught.value)
    assert "\n" not in message
    return message


def sources(tmp_path: Path, **values: Any) -> dict[str, Any]:
    return {"roots": [tmp_path / "src"], **values}


# ---------------------------------------------------------------- SourceSettings


def test_caption_extension_needs_its_dot(tmp_path: Path) -> None:
    """Issue 19: sd-scripts appends the extension to the stem as given, so "txt" would find no caption."""
    assert "write '.txt'" in rejection(SourceSettings, **sources(tmp_path, caption_extension="txt"))
    assert SourceSettings(**sources(tmp_path, caption_extension=".caption")).caption_extension == ".caption"
    for bad in (".t\nxt", "./txt"):
        assert rejection(SourceSettings, **sources(tmp_path, caption_extension=bad)).startswith("caption_extension")


@pytest.mark.parametrize(
    ("values", "key", "fix"),
    [
        ({"caption_extension": ""}, "caption_extension", "'.txt'"),
        ({"caption_extension": "."}, "caption_extension", "'.txt'"),
        ({"caption_encoding": "klingon-8"}, "caption_encoding", "'utf-8'"),
        ({"caption_separator": "  "}, "caption_separator", "','"),
        ({"trigger_from": "filename"}, "trigger_from", "'caption' or 'folder'"),
    ],
)
def test_source_settings_rejections_name_key_and_fix(tmp_path: Path, values: dict[str, Any], key: str,
                                                      fix: str) -> None:
    message = rejection(SourceSettings, **sources(tmp_path, **values))
    assert message.startswith(key + ":") and fix in message


def test_roots_must_not_be_empty() -> None:
    assert rejection(SourceSettings, roots=[]).startswith("roots:")


def test_known_encodings_are_accepted(tmp_path: Path) -> None:
    assert SourceSettings(**sources(tmp_path, caption_encoding="cp1252")).caption_encoding == "cp1252"


# ---------------------------------------------------------------- captions and composites


@pytest.mark.parametrize(
    ("template", "fix"),
    [
        ("{left}/{right}/{tag}, {who}", "allowed"),
        ("{left}/{tag}, {left_tags}", "{left} and {right}"),
        ("{left}/{right} {left_tags}, {right_tags}", "after the first comma"),
        ("{left}/{right}/{tag}, {left.__class__}", "only plain names"),
        ("{left}/{right}/{tag}, {left_tags[0]}", "only plain names"),
        ("{left!r}/{right}/{tag}, {left_tags}", "only plain names"),
        ("{left:>9}/{right}/{tag}", "only plain names"),
        ("{left}/{right}/{tag}, {left_tags", "literal brace"),
        ("{left}/{right}/{tag}\n{left_tags}", "line break"),
    ],
)
def test_template_rejections_explain(template: str, fix: str) -> None:
    message = rejection(CaptionRules, template=template)
    assert message.startswith("template:") and fix in message


def test_default_template_is_the_method_verbatim() -> None:
    assert CaptionRules().template == "{left}/{right}/{tag}, {left_tags}, {right_tags}"


@pytest.mark.parametrize(("given", "stored", "rgb"), [("#ABCDEF", "#abcdef", (171, 205, 239)),
                                                      ("102030", "#102030", (16, 32, 48))])
def test_background_colour_normalised(given: str, stored: str, rgb: tuple[int, int, int]) -> None:
    settings = CompositeSettings(background=given)
    assert settings.background == stored and settings.background_rgb == rgb


def test_background_colour_rejection_gives_example() -> None:
    message = rejection(CompositeSettings, background="red")
    assert message.startswith("background:") and "'#ffffff'" in message


@pytest.mark.parametrize(
    ("values", "key", "bound"),
    [({"gap": -1}, "gap", "0"), ({"quality": 0}, "quality", "1"), ({"repeats": 0}, "repeats", "1"),
     ({"budget": 0}, "budget", "1"), ({"max_side": 10}, "max_side", "64"), ({"format": "gif"}, "format", "'png'")],
)
def test_composite_bounds_name_key_and_limit(values: dict[str, Any], key: str, bound: str) -> None:
    message = rejection(CompositeSettings, **values)
    assert message.startswith(key + ":") and bound in message


def test_nested_key_is_named_with_its_path() -> None:
    message = rejection(CompositeSettings, captions={"template": "{left}"})
    assert message.startswith("captions.template:")


# ---------------------------------------------------------------- training and job


@pytest.mark.parametrize("name", ["a/b", "..", ".hidden", "x:y", ""])
def test_output_name_must_be_a_plain_stem(name: str) -> None:
    message = rejection(TrainingSettings, output_name=name)
    assert message.startswith("output_name:") and "'1to2'" in message


def test_resolution_and_epochs_bounds() -> None:
    assert rejection(TrainingSettings, resolution=32).startswith("resolution:")
    assert rejection(TrainingSettings, epochs=0).startswith("epochs:")


@pytest.mark.parametrize("inside", ["src", "src/run"])
def test_out_inside_the_sources_is_refused(tmp_path: Path, inside: str) -> None:
    message = rejection(Job, out=tmp_path / inside, sources=sources(tmp_path))
    assert "--out" in message and "outside" in message and str(tmp_path / "src") in message


def test_out_holding_the_sources_is_refused(tmp_path: Path) -> None:
    message = rejection(Job, out=tmp_path, sources=sources(tmp_path))
    assert "--out" in message and "contains the source tree" in message


def test_out_inside_a_reg_root_is_refused(tmp_path: Path) -> None:
    message = rejection(Job, out=tmp_path / "reg" / "run", sources={**sources(tmp_path), "reg": [tmp_path / "reg"]})
    assert "inside the regularisation tree" in message


def test_out_beside_the_sources_is_fine(tmp_path: Path) -> None:
    job = Job(out=tmp_path / "run", sources=SourceSettings(**sources(tmp_path)))
    assert job.composites.repeats == 1 and job.training.preset == "seed"


def test_job_round_trips_through_json(tmp_path: Path) -> None:
    job = Job(out=tmp_path / "run", sources=SourceSettings(**sources(tmp_path, caption_extension=".cap")),
              composites=CompositeSettings(seed=7, background="#000000"),
              training=TrainingSettings(epochs=3))
    assert Job.model_validate_json(job.model_dump_json()) == job


def test_unknown_key_is_refused_and_named(tmp_path: Path) -> None:
    message = rejection(SourceSettings, **sources(tmp_path, caption_extention=".txt"))
    assert message == "caption_extention: unknown key; did you mean 'caption_extension'?"
    nested = rejection(Job, out=tmp_path / "run", sources=sources(tmp_path), training={"zzzz": 1})
    assert nested.startswith("training.zzzz: unknown key;") and "spelling" in nested


def test_flags_form_names_the_cli_flag(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as caught:
        SourceSettings(**sources(tmp_path, caption_extension=""))
    assert validation_message(caught.value, as_flags=True).startswith("--caption-extension:")


def test_several_errors_share_one_line() -> None:
    message = rejection(CompositeSettings, gap=-1, quality=0)
    assert "gap:" in message and "quality:" in message and "; " in message


def test_non_validation_errors_pass_through() -> None:
    assert validation_message(ValueError("plain")) == "plain"


def test_models_are_frozen(tmp_path: Path) -> None:
    settings = SourceSettings(**sources(tmp_path))
    with pytest.raises(ValidationError):
        settings.strict = True  # type: ignore[misc]


def test_rel_key_is_folder_and_file_name() -> None:
    image = SourceImage(path=Path("/data/src/2_alice/a 1.png"), character="alice")
    assert image.rel_key == "2_alice/a 1.png"


@pytest.mark.parametrize("tag", ["COMP, OSITE", "COMP/OSITE", "  ", "COMP\nOSITE", "COMPOSITE\n", 'COMP"OSITE',
                                 "COMP'OSITE", "COMP\tOSITE"])
def test_composite_tag_must_stay_one_tag_of_the_group(tag: str) -> None:
    with pytest.raises(ValidationError, match="composite_tag"):
        CaptionRules(composite_tag=tag)
    with pytest.raises(ValidationError, match="'&'"):
        CaptionRules(template="{left}&{right}&{tag}, {left_tags}, {right_tags}", composite_tag="a&b")


def test_sample_pair_size_is_width_x_height() -> None:
    assert TrainingSettings(sample_pair_size="768X512").sample_pair_size == "768x512"
    with pytest.raises(ValidationError, match="WIDTHxHEIGHT"):
        TrainingSettings(sample_pair_size="wide")


def test_one_worker_default_for_preflight_and_build(monkeypatch):
    import os

    from kohya_1to2.models import CompositeSettings

    assert CompositeSettings(workers=3).worker_count == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, raising=False)
    assert CompositeSettings().worker_count == 10, "all cores this process may use, not capped elsewhere"
