"""Captions and sample prompts as the REAL pinned sd-scripts processes them: stage-1 captions built by its own
dataset classes from the generated stage1.dataset.toml (`process_caption`), and its LPW prompt parser.

Runs sd-scripts in a subprocess (cwd = its root), like test_configs_sd_scripts.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sample_images import write_image
from sd_scripts_child import DATASET_GROUP, requires_sd_scripts, run_in_sd_scripts

from kohya_1to2.configs.generate import render_run_files
from kohya_1to2.configs.presets import load_preset
from kohya_1to2.configs.prompts import escape_attention, sample_prompt_lines
from kohya_1to2.dataset.captions import composite_caption
from kohya_1to2.dataset.scan import scan_sources
from kohya_1to2.models import CaptionRules, Job, SourceSettings, TrainingSettings

pytestmark = requires_sd_scripts()

READER = DATASET_GROUP + r"""
from library import lpw_stable_diffusion, sdxl_lpw_stable_diffusion

out = {"captions": [], "attention": []}
for path in request["training"]:
    args, group = dataset_group(path)
    captions = {}
    for dataset in group.datasets:
        for key, info in dataset.image_data.items():
            subset = dataset.image_to_subset[key]
            captions[key] = [dataset.process_caption(subset, info.caption) for _ in range(8)]
    out["captions"].append(captions)
for text in request["prompts"]:
    out["attention"].append([lpw_stable_diffusion.parse_prompt_attention(text),
                             sdxl_lpw_stable_diffusion.parse_prompt_attention(text)])
print("@@" + json.dumps(out))
"""


def _sd_scripts(request: dict[str, Any]) -> dict[str, Any]:
    return run_in_sd_scripts(READER, request)


def _add(folder: Path, stem: str, caption: bytes | None) -> None:
    write_image(folder / f"{stem}.png", size=(64, 64))
    if caption is not None:
        (folder / f"{stem}.txt").write_bytes(caption)


def _run(tmp_path: Path, name: str, **sources: Any) -> tuple[Path, dict[str, str]]:
    """Scan `<tmp>/<name>/src`, write the run's configs; returns the stage-1 train TOML and image -> trigger."""
    settings = SourceSettings(roots=[tmp_path / name / "src"], **sources)
    scan = scan_sources(settings)
    run = tmp_path / name / "run"
    job = Job(out=run, sources=settings, training=TrainingSettings(base_model=str(tmp_path / "base.safetensors")))
    files = render_run_files(job, scan.characters, composite_dir=run / "composites" / "1_composite",
                             composite_repeats=1, composite_count=1, run_dir=run)
    run.mkdir(parents=True)
    for file_name, text in files.items():
        (run / file_name).write_text(text, encoding="utf-8")
    triggers = {str(image.path): c.trigger for c in scan.characters for image in c.images}
    return run / "stage1.train.toml", triggers


def test_stage1_captions_start_with_the_trigger_and_the_separator_round_trips(tmp_path: Path) -> None:
    # --trigger-from folder, captions without the trigger (and one folder where only some have it)
    folder = tmp_path / "folder" / "src"
    for stem in ("a", "b"):
        _add(folder / "2_akari (genshin impact)", stem, b"1girl, smile, red hair")
    _add(folder / "1_bob", "a", b"bob, hat")
    _add(folder / "1_bob", "b", b"hat, 1boy")
    _add(folder / "1_bob", "c", None)
    # triggers from captions: a folder with no captions gets its name as the trigger
    caption = tmp_path / "caption" / "src"
    _add(caption / "1_carol", "a", None)
    _add(caption / "1_dave", "a", b"dave, 1boy, hat")
    # --caption-separator ";"
    semi = tmp_path / "semi" / "src"
    _add(semi / "1_erin", "a", b"erin; red hair; smile; long hair")
    _add(semi / "1_finn", "a", b"1boy; hat")

    # a whitespace-only caption (issue 19): what does sd-scripts do with it? (prepare refuses it as an empty caption)
    blank = tmp_path / "blank" / "src"
    _add(blank / "1_gina", "a", b"  \t\n")
    _add(blank / "1_gina", "b", b"gina, smile")  # a caption with the trigger: no caption_prefix for the folder
    _add(blank / "1_hal", "a", b"hal, hat")

    runs = [_run(tmp_path, "folder", trigger_from="folder"), _run(tmp_path, "caption"),
            _run(tmp_path, "semi", caption_separator=";", trigger_from="folder")]
    blank_toml, _ = _run(tmp_path, "blank")
    result = _sd_scripts({"training": [str(toml) for toml, _ in runs] + [str(blank_toml)], "prompts": []})
    gina = next(v for k, v in result["captions"][3].items() if k.endswith("a.png") and "gina" in k)
    assert gina == [""] * 8, "no AssertionError: trained with an empty caption, the trigger lost"

    for (_, triggers), captions in zip(runs, result["captions"][:3], strict=True):
        assert set(captions) == set(triggers)
        for image, processed in captions.items():
            for text in processed:  # shuffled 8 times, keep_tokens = 1
                assert text.split(",", 1)[0].strip() == triggers[image], (image, text)
    semi_captions = result["captions"][2]
    erin = next(v for k, v in semi_captions.items() if k.endswith("a.png") and "erin" in k)
    assert all(sorted(t.strip() for t in text.split(",")) == ["erin", "long hair", "red hair", "smile"]
               for text in erin), "split on ';' and re-joined: every tag intact, trigger first"
    assert len({text for text in erin}) > 1, "the tags after the trigger are shuffled"
    finn = next(v for k, v in semi_captions.items() if "finn" in k)
    assert all(sorted(t.strip() for t in text.split(",")) == ["1boy", "finn", "hat"] for text in finn)

    scan = scan_sources(SourceSettings(roots=[folder], trigger_from="folder"))
    akari, bob = scan.characters
    text = composite_caption(akari, bob, akari.images[0], bob.images[1], CaptionRules())
    assert text.startswith("akari (genshin impact)/bob/COMPOSITE, "), "composites use the same trigger"


def test_lpw_parser_reads_escaped_triggers_literally() -> None:
    triggers = ["akari (genshin impact)", "ruby [oshi no ko]", "c:3", r"back\slash", "x (y:1.2)"]
    settings = load_preset("seed").settings
    lines = sample_prompt_lines([(f"c{i}", t) for i, t in enumerate(triggers)], settings, CaptionRules(),
                                pairs="all")
    prompts = [line.split(" --", 1)[0] for line in lines]
    result = _sd_scripts({"training": [], "prompts": [escape_attention(t) for t in triggers] + prompts})
    parsed = result["attention"]

    def literal(pieces: list[list[Any]]) -> str:
        assert all(weight == 1.0 for _, weight in pieces), pieces
        return "".join(text for text, _ in pieces)

    for trigger, (sd1, sdxl) in zip(triggers, parsed[: len(triggers)], strict=True):
        assert literal(sd1) == trigger and literal(sdxl) == trigger
    singles = parsed[len(triggers): 2 * len(triggers)]
    assert [literal(sd1) for sd1, _ in singles] == triggers
    pair = parsed[2 * len(triggers)]
    assert literal(pair[0]) == f"{triggers[0]}/{triggers[1]}"
