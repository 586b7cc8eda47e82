"""`prepare` end to end on the bundled example and on bad input, through the real CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from kohya_1to2.cli import main

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "dataset"


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_prepare_on_the_example_builds_everything_and_leaves_sources_untouched(tmp_path):
    before = tree_hashes(EXAMPLE)
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "kohya_1to2", "prepare", str(EXAMPLE), "--out", str(out)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert tree_hashes(EXAMPLE) == before

    images = sorted((out / "composites" / "1_composite").glob("*.png"))
    assert len(images) == 12  # default budget: one composite per source image
    for image in images:
        caption = image.with_suffix(".txt").read_text(encoding="utf-8")
        left, right = image.stem.split("_", 1)[1].split("__")
        assert caption.split(", ")[0] == f"{left}/{right}/COMPOSITE"
        with Image.open(image) as opened:
            assert opened.size == (512, 256)  # two 256x256 sources side by side
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(manifest) == 12
    assert {entry["sha256"] for entry in manifest} == {hashlib.sha256(p.read_bytes()).hexdigest() for p in images}
    assert (out / "preview.png").stat().st_size > 0
    for name in ("stage1.dataset.toml", "stage1.train.toml", "stage2.dataset.toml", "stage2.train.toml",
                 "sample_prompts.txt", "job.json"):
        assert (out / name).is_file(), name


def test_second_run_reuses_every_composite(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["prepare", str(EXAMPLE), "--out", str(out)]) == 0
    first = tree_hashes(out / "composites")
    capsys.readouterr()
    assert main(["prepare", str(EXAMPLE), "--out", str(out)]) == 0
    assert "12 reused" in capsys.readouterr().out
    assert tree_hashes(out / "composites") == first


def test_dry_run_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["prepare", str(EXAMPLE), "--out", str(out), "--dry-run"]) == 0
    assert not out.exists()
    assert "dry run" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("breakage", "needle"),
    [
        (lambda folder: (folder / "x_00.txt").write_text(""), "x_00.txt"),
        (lambda folder: (folder / "x_00.png").write_bytes(b""), "x_00.png"),
        (lambda folder: (folder / "x_00.txt").write_bytes("caf\xe9".encode("latin-1")), "x_00.txt"),
    ],
)
def test_bad_input_is_one_line_exit_3_and_nothing_written(kohya_dataset, tmp_path, breakage, needle):
    root = kohya_dataset({"x": 2, "y": 2})
    breakage(root / "1_x")
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "kohya_1to2", "prepare", str(root), "--out", str(out)], capture_output=True, text=True
    )
    assert result.returncode == 3
    assert "Traceback" not in result.stderr + result.stdout
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and needle in error_lines[0]
    assert not out.exists()


def test_one_character_is_nothing_to_pair(kohya_dataset, tmp_path, capsys):
    root = kohya_dataset({"solo": 3})
    assert main(["prepare", str(root), "--out", str(tmp_path / "run")]) == 3
    assert "pair" in capsys.readouterr().err


def test_relative_base_model_and_sources_are_written_absolute(tmp_path, monkeypatch):
    model = tmp_path / "models" / "base.safetensors"
    model.parent.mkdir()
    model.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert main(["prepare", str(EXAMPLE), "--out", "run", "--base-model", "models/base.safetensors"]) == 0
    job = json.loads((tmp_path / "run" / "job.json").read_text(encoding="utf-8"))
    assert job["training"]["base_model"] == str(model.resolve())
    assert job["out"] == str((tmp_path / "run").resolve())
    assert str(model.resolve()) in (tmp_path / "run" / "stage1.train.toml").read_text(encoding="utf-8")


def test_a_base_model_that_is_not_a_local_path_is_kept_as_typed(tmp_path):
    assert main(["prepare", str(EXAMPLE), "--out", str(tmp_path / "run"), "--base-model", "org/some-model"]) == 0
    assert json.loads((tmp_path / "run" / "job.json").read_text())["training"]["base_model"] == "org/some-model"


def test_fix_sources_trains_both_stages_on_corrected_copies(kohya_dataset, tmp_path):
    root = kohya_dataset({"x": 2, "y": 2})
    rotated = root / "1_x" / "x_00.jpg"
    image = Image.new("RGB", (60, 40), (10, 200, 10))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    image.save(rotated, exif=exif)
    (root / "1_x" / "x_00.png").unlink()
    rotated.with_suffix(".txt").write_text("x, tag\n", encoding="utf-8")
    before = tree_hashes(root)
    out = tmp_path / "run"
    assert main(["prepare", str(root), "--out", str(out), "--fix-sources"]) == 0
    assert tree_hashes(root) == before
    dataset = (out / "stage1.dataset.toml").read_text(encoding="utf-8")
    assert str(out / "sources" / "1_x") in dataset
    with Image.open(out / "sources" / "1_x" / "x_00.jpg") as fixed:
        assert fixed.size == (40, 60) and fixed.getexif().get(0x0112) in (None, 1)
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    fixed_dir = str(out / "sources")
    used = [entry[side]["path"] for entry in manifest for side in ("left", "right")]
    assert any(path.startswith(fixed_dir) for path in used)
    assert not any(path.startswith(str(root / "1_x")) for path in used)


def test_dry_run_size_estimate_matches_the_real_build(tmp_path):
    from kohya_1to2.configs.prepare import header_sizes
    from kohya_1to2.configs.render import plan_composites
    from kohya_1to2.dataset.build import read_manifest
    from kohya_1to2.dataset.pairing import plan_pairs
    from kohya_1to2.dataset.scan import scan_sources
    from kohya_1to2.models import CompositeSettings, Job, SourceSettings

    out = tmp_path / "run"
    assert main(["prepare", str(EXAMPLE), "--out", str(out), "--max-side", "300", "--gap", "7"]) == 0
    job = Job(out=out, sources=SourceSettings(roots=[EXAMPLE]), composites=CompositeSettings(max_side=300, gap=7))
    plans = plan_pairs(scan_sources(job.sources).characters, None, 0)
    assert plan_composites(job, header_sizes(plans)).sizes == [tuple(entry.size) for entry in read_manifest(out)]


def test_switching_modes_moves_stale_stage_files_and_replay_folders_away(tmp_path, capsys):
    out = tmp_path / "run"
    before = tree_hashes(EXAMPLE)
    assert main(["prepare", str(EXAMPLE), "--out", str(out), "--mode", "replay"]) == 0
    replayed = sorted(p.relative_to(out / "replay").as_posix() for p in (out / "replay").rglob("*.png"))
    assert sorted({name.split("/")[0] for name in replayed}) == ["akari", "bluebell", "clover"]
    assert len(replayed) == 4  # 0.25 / 0.75 x 12 composites
    assert "25% of stage 2's images per epoch (--replay-share 0.25)" in " ".join(capsys.readouterr().out.split())
    stage2 = (out / "stage2.dataset.toml").read_text(encoding="utf-8")
    assert all(str(out / "replay" / name) in stage2 for name in ("akari", "bluebell", "clover"))

    assert main(["prepare", str(EXAMPLE), "--out", str(out), "--mode", "joint"]) == 0
    text = capsys.readouterr().out.replace("\n", " ")
    assert tree_hashes(EXAMPLE) == before, "replay links and their removal never touch the sources"
    assert not (out / "stage2.train.toml").exists() and not (out / "stage2.dataset.toml").exists()
    backups = sorted(p.name.split(".20")[0] for p in (out / ".1to2" / "backup").iterdir())
    assert backups == ["stage2.dataset.toml", "stage2.train.toml"]
    assert "joint mode trains no stage 2" in text and not (out / "replay").exists()
    assert json.loads((out / "job.json").read_text(encoding="utf-8"))["training"]["mode"] == "joint"
    assert main(["check", str(out)]) in (0, 4)  # no stage-2 file is asked for (no base model: 4 at most)
    assert "stage2" not in capsys.readouterr().out


def test_stale_stage_files_moved_twice_in_one_second_keep_both_backups(tmp_path):
    from rich.console import Console

    from kohya_1to2.configs.prepare import write_mode_folders
    from kohya_1to2.models import Job, SourceSettings, TrainingSettings

    out = tmp_path / "run"
    job = Job(out=out, sources=SourceSettings(roots=[tmp_path / "src"]), training=TrainingSettings(mode="joint"))
    for text in ("first", "second"):
        out.mkdir(exist_ok=True)
        (out / "stage2.train.toml").write_text(text, encoding="utf-8")
        write_mode_folders(job, [], 0, Console(file=None, quiet=True), "20260101T000000Z")
    kept = {p.name: p.read_text(encoding="utf-8") for p in (out / ".1to2" / "backup").iterdir()}
    assert kept == {"stage2.train.toml.20260101T000000Z": "first", "stage2.train.toml.20260101T000000Z-1": "second"}
    assert not (out / "stage2.train.toml").exists()


def test_a_reg_folder_inside_the_sources_is_offered_not_used(kohya_dataset, tmp_path, capsys):
    src = kohya_dataset({"alice": 2, "bob": 2})
    (src / "reg" / "1_person").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(src / "reg" / "1_person" / "p.png")
    assert main(["prepare", str(src), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    text = capsys.readouterr().out.replace("\n", "")
    assert f"pass --reg {src / 'reg'}" in text.replace(" ", "").replace("pass--reg", "pass --reg ")
    assert main(["prepare", str(src), "--out", str(tmp_path / "run"), "--reg", str(src / "reg"), "--dry-run"]) == 0
    assert "(reg)" in capsys.readouterr().out


def test_shares_outside_their_mode_are_one_line_errors(tmp_path, capsys):
    assert main(["prepare", str(EXAMPLE), "--out", str(tmp_path / "r"), "--replay-share", "0.3"]) == 2
    err = capsys.readouterr().err
    assert "replay_share applies to mode 'replay'" in err and "Traceback" not in err


def test_composites_no_bucket_set_holds_are_padded_not_cropped(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 19: portrait, square and wide sources give composites of many aspects; those stage 2's buckets
    would cut by more than 2% are built padded to their bucket's aspect, which plan, check and the manifest
    agree on."""
    import toml
    from fake_launch import make_fake_base_model
    from sample_images import write_image

    from kohya_1to2.configs.buckets import MAX_CROP, BucketSettings, buckets_for, select_bucket
    from kohya_1to2.dataset.build import read_manifest

    src = tmp_path / "src"
    shapes = {"alice": [(300, 400), (400, 300)], "bob": [(600, 150), (200, 200)], "cara": [(150, 500), (500, 360)]}
    for name, sizes in shapes.items():
        for i, size in enumerate(sizes):
            write_image(src / f"1_{name}" / f"{name}{i}.png", size=size).with_suffix(".txt").write_text(
                f"{name}, tag{i}", encoding="utf-8")
    out = tmp_path / "run"
    assert main(["prepare", str(src), "--out", str(out), "--background", "#00ff00", "--gap", "0",
                 "--base-model", str(make_fake_base_model(tmp_path))]) == 0
    said = " ".join(capsys.readouterr().out.split())
    entries = read_manifest(out)
    padded = [e for e in entries if e.padded_to]
    assert padded and len(padded) < len(entries), "some composites fit their bucket as they are, some do not"
    assert f"{len(padded)} of {len(entries)} composites have an aspect stage 2's buckets would crop" in said
    general = toml.loads((out / "stage2.dataset.toml").read_text(encoding="utf-8"))["general"]
    res = general["resolution"]
    settings = BucketSettings(resolution=(res, res) if isinstance(res, int) else tuple(res),
                              min_bucket_reso=general["min_bucket_reso"], max_bucket_reso=general["max_bucket_reso"],
                              bucket_reso_steps=general["bucket_reso_steps"])
    for entry in entries:
        with Image.open(out / entry.file) as image:
            assert image.size == tuple(entry.size)
            assert select_bucket(image.size, buckets_for(settings))[1] <= MAX_CROP, entry.file
            if entry.padded_to:  # the padding is the background colour, on two opposite edges
                rgb = image.convert("RGB")
                corners = {rgb.getpixel((0, 0)), rgb.getpixel((image.width - 1, image.height - 1))}
                assert corners == {(0, 255, 0)}, entry.file
    assert main(["check", str(out)]) == 0
    capsys.readouterr()
    assert main(["plan", str(out)]) == 0
    assert f"{len(padded)} composite(s) padded to their stage-2 bucket's aspect" in " ".join(
        capsys.readouterr().out.split())


@pytest.mark.parametrize(("reg", "said"), [("src", "is the source root"), (".", "contains the source root"),
                                          ("src/1_alice", "is (inside) the character folder 1_alice")])
def test_reg_overlapping_the_training_images_is_refused(kohya_dataset, tmp_path, capsys, reg, said):
    """Issue 19: --reg naming a source root, a folder holding it or a character folder of it."""
    kohya_dataset({"alice": 2, "bob": 2})
    out = tmp_path.parent / f"{tmp_path.name}-run"  # beside "." too
    assert main(["prepare", str(tmp_path / "src"), "--out", str(out), "--reg", str(tmp_path / reg), "--dry-run"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert said in err and "regularisation of themselves" in err and "Traceback" not in err


def test_prepare_never_announces_a_run_check_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 19: prepare runs check on what it wrote; a kept hand edit check refuses is exit 4, not 'next: launch'."""
    from fake_launch import make_fake_base_model

    out, base = tmp_path / "run", str(make_fake_base_model(tmp_path))
    assert main(["prepare", str(EXAMPLE), "--out", str(out), "--base-model", base]) == 0
    assert "then: python -m kohya_1to2 launch" in " ".join(capsys.readouterr().out.split())
    toml2 = out / "stage2.train.toml"
    toml2.write_text(toml2.read_text(encoding="utf-8").replace("network_dim = 8", "network_dim = 16"),
                     encoding="utf-8")  # stage 2 must continue stage 1's network: check refuses this
    assert main(["prepare", str(EXAMPLE), "--out", str(out), "--base-model", base]) == 4
    captured = capsys.readouterr()
    said = " ".join((captured.out + captured.err).split())
    assert "but check finds 1 problem(s) launch would refuse" in said and "network_dim" in said
    assert "then: python -m kohya_1to2 launch" not in said


def test_without_a_base_model_the_next_step_is_to_set_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare", str(EXAMPLE), "--out", str(tmp_path / "run")]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "set the base model" in said and "--base-model PATH" in said


def test_extreme_sources_are_padded_so_check_accepts_what_prepare_announces(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 19: 4000x100 sources made composites half cropped by the buckets: check refused, prepare said launch."""
    from fake_launch import make_fake_base_model
    from sample_images import write_image

    for name in ("alice", "bob"):
        for i in range(2):
            write_image(tmp_path / "src" / f"1_{name}" / f"{name}{i}.png", size=(4000, 100)).with_suffix(
                ".txt").write_text(f"{name}, strip", encoding="utf-8")
    out = tmp_path / "run"
    assert main(["prepare", str(tmp_path / "src"), "--out", str(out), "--base-model",
                 str(make_fake_base_model(tmp_path))]) == 0
    assert "then: python -m kohya_1to2 launch" in " ".join(capsys.readouterr().out.split())
    assert main(["check", str(out)]) == 0


# ------------------------------------------------------------- issue 20: scene composites


def _figures(root: Path, names: tuple[str, ...] = ("alice", "bob", "carol"), alpha: bool = True) -> Path:
    """Characters drawn as ellipses: on a transparent background (alpha = the mask), or opaque on grey."""
    from PIL import ImageDraw

    for n, name in enumerate(names):
        folder = root / f"1_{name}"
        folder.mkdir(parents=True)
        for i in range(2):
            image = Image.new("RGBA" if alpha else "RGB", (120 + 30 * i, 200), (0, 0, 0, 0) if alpha else (90,) * 3)
            ImageDraw.Draw(image).ellipse((10, 10, 110 + 30 * i, 200), fill=(50 + 80 * n, 90, 200 - 60 * n))
            image.save(folder / f"{name}_{i}.png")
            (folder / f"{name}_{i}.txt").write_text(f"{name}, tag{i}, 1girl\n", encoding="utf-8")
    return root


def test_scene_composites_carry_the_union_mask_as_alpha_and_stage_2_trains_on_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import toml

    src, out = _figures(tmp_path / "src"), tmp_path / "run"
    base = tmp_path / "base.safetensors"
    base.write_bytes(b"not read")
    argv = ["prepare", str(src), "--out", str(out), "--composite-style", "scene", "--workers", "1",
            "--base-model", str(base)]
    assert main(argv) == 0
    assert "masks: 6 from the images' alpha channel" in capsys.readouterr().out
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    general = toml.load(out / "stage2.dataset.toml")
    [subset] = general["datasets"][0]["subsets"]
    assert subset["alpha_mask"] is True
    for entry in manifest:
        with Image.open(out / entry["file"]) as image:
            assert image.mode == "RGBA" and image.size == tuple(entry["size"])
            low, high = image.getchannel("A").getextrema()
            assert (low, high) == (0, 255), "background masked out, characters kept"
        bucket = entry["padded_to"]
        assert abs(entry["size"][0] / entry["size"][1] - bucket[0] / bucket[1]) < 0.01, "lands in its bucket"
    assert main(["check", str(out)]) == 0
    mtimes = {e["file"]: (out / e["file"]).stat().st_mtime_ns for e in manifest}
    assert main(argv) == 0  # a second prepare reuses every scene
    assert {e: (out / e).stat().st_mtime_ns for e in mtimes} == mtimes
    first = out / manifest[0]["file"]
    Image.open(first).convert("RGB").save(first)  # an editor dropped the alpha: the mask is gone
    assert main(["check", str(out)]) == 4
    assert f"have no alpha channel, so no mask: {first.name}" in capsys.readouterr().out.replace("\n", "")
    side = tmp_path / "side"
    assert main(["prepare", str(src), "--out", str(side), "--workers", "1"]) == 0
    assert "alpha_mask" not in (side / "stage2.dataset.toml").read_text()


def test_scene_without_masks_names_the_images_and_a_mask_tree_supplies_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _figures(tmp_path / "src", ("alice", "bob"), alpha=False)
    argv = ["prepare", str(src), "--out", str(tmp_path / "run"), "--composite-style", "scene", "--workers", "1"]
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "4 image(s) have no alpha channel" in err and "1_alice/alice_0.png" in err
    masks = tmp_path / "masks"
    for folder in src.iterdir():
        (masks / folder.name).mkdir(parents=True)
        for image in folder.glob("*.png"):
            with Image.open(image) as opened:
                mask = Image.new("L", opened.size, 0)
            from PIL import ImageDraw

            ImageDraw.Draw(mask).rectangle((20, 20, 60, opened.size[1] - 1), fill=255)
            mask.save(masks / folder.name / image.name)
    assert main([*argv, "--masks", str(masks)]) == 0
    assert "masks: 4 from --masks files" in capsys.readouterr().out
    (src / "1_alice" / "alice_0_mask.png").write_bytes((masks / "1_alice" / "alice_0.png").read_bytes())
    (src / "1_alice" / "alice_0_mask.txt").write_text("alice, x\n")
    (masks / "1_alice" / "alice_0_mask.png").write_bytes((masks / "1_alice" / "alice_0.png").read_bytes())
    assert main([*argv, "--masks", str(masks)]) == 0
    assert "looks like a mask inside a character folder" in capsys.readouterr().out.replace("\n", "")


def test_scene_refuses_jpeg_which_has_no_alpha(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _figures(tmp_path / "src", ("alice", "bob"))
    assert main(["prepare", str(src), "--out", str(tmp_path / "run"), "--composite-style", "scene",
                 "--format", "jpg"]) == 2
    assert "use --format png or webp" in capsys.readouterr().err


def test_prepare_group_size_3_builds_three_wide_composites_and_resumes(kohya_dataset, tmp_path, capsys):
    src = kohya_dataset({"alice": 3, "bob": 2, "carol": 2, "dan": 2})
    out = tmp_path / "run"
    args = ["prepare", str(src), "--out", str(out), "--group-size", "3", "--workers", "1"]
    assert main([*args, "--dry-run"]) == 0
    assert "9 composites of 3 characters each (--group-size 3) planned" in " ".join(capsys.readouterr().out.split())
    assert not out.exists()

    assert main(args) == 0
    capsys.readouterr()
    images = sorted((out / "composites" / "1_composite").glob("*.png"))
    assert len(images) == 9  # one per source image
    for image in images:
        names = image.stem.split("_", 1)[1].split("__")
        caption = image.with_suffix(".txt").read_text(encoding="utf-8")
        group, *tags = caption.strip().split(", ")
        assert group == "/".join(names) + "/COMPOSITE" and len(set(names)) == 3
        assert [t.removeprefix("tag_").rstrip("0123456789") for t in tags if t.startswith("tag_")] == names
        assert tags.count("1girl") == 3, "each member's tags, in caption order"
        with Image.open(image) as opened:  # three 96x128 sources side by side (padded to its bucket's aspect)
            assert opened.width == 288 and 128 <= opened.height <= 140
    assert json.loads((out / "job.json").read_text(encoding="utf-8"))["composites"]["group_size"] == 3
    prompts = (out / "sample_prompts.txt").read_text(encoding="utf-8")
    assert "groups of 3" in prompts
    first = tree_hashes(out / "composites")

    assert main(args) == 0
    assert "9 reused" in " ".join(capsys.readouterr().out.split())
    assert tree_hashes(out / "composites") == first


def test_prepare_refuses_a_group_larger_than_the_cast_in_one_line(kohya_dataset, tmp_path, capsys):
    src = kohya_dataset({"alice": 2, "bob": 2, "carol": 2})
    assert main(["prepare", str(src), "--out", str(tmp_path / "run"), "--group-size", "4", "--dry-run"]) == 3
    err = capsys.readouterr().err
    assert "need at least 4 characters with images to make composites of 4" in err
    assert main(["prepare", str(src), "--out", str(tmp_path / "run"), "--group-size", "5"]) == 2
