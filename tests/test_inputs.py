"""What a stage trains from, and the run/skip decision launch and launch --dry-run share (pure parts)."""

from __future__ import annotations

from pathlib import Path

from kohya_1to2.launch.inputs import (
    Attempt,
    Record,
    StageInputs,
    collect_inputs,
    decide,
    explain_changes,
    folder_digests,
)

BASE = StageInputs(
    config={"training TOML": "t", "dataset TOML": "d", "base model": "m", "network module": "lycoris.kohya 3.4.0"},
    folders={"/data/2_alice": {"a.png": "image 1:1", "a.txt": "caption x", "b.png": "image 2:2"},
             "/data/1_bob": {"c.png": "image 3:3", "c.txt": "caption y"}},
)


def changed(**folders: dict[str, str]) -> StageInputs:
    return BASE.model_copy(update={"folders": {**BASE.folders, **folders}})


def test_unchanged_inputs_explain_nothing() -> None:
    assert explain_changes(BASE, BASE) == []


def test_changes_are_counted_per_folder_and_kind() -> None:
    now = changed(**{"/data/2_alice": {"a.png": "image 1:9", "a.txt": "caption z", "b.png": "image 2:2",
                                       "b.txt": "caption new", "d.png": "image 4:4"}})
    assert explain_changes(BASE, now) == [
        "1 caption added in 2_alice", "1 caption changed in 2_alice", "1 image added in 2_alice",
        "1 image changed in 2_alice",
    ]


def test_removed_files_subsets_and_config_changes_are_named() -> None:
    now = StageInputs(config={**BASE.config, "base model": "other"},
                      folders={"/data/2_alice": {"a.png": "image 1:1", "a.txt": "caption x"},
                               "/data/3_carol": {}})
    assert explain_changes(BASE, now) == [
        "base model changed", "subset 1_bob removed", "1 image removed in 2_alice", "subset 3_carol added",
    ]


def test_decision_order_force_upstream_attempt_record_weights_changes() -> None:
    record = Record(inputs=BASE, finished=0.0)
    common = {"weights_exist": True, "force": False, "upstream_runs": False, "attempt": None, "resuming": False}
    assert not decide(1, BASE, record, **common).runs
    assert "unchanged since" in decide(1, BASE, record, **common).reason
    assert decide(1, BASE, record, **{**common, "force": True}).reason == "--force"
    assert decide(2, BASE, record, **{**common, "upstream_runs": True}).line.startswith("stage 2: runs (stage 1")
    assert decide(1, BASE, None, **common).reason == "never trained"
    assert decide(1, BASE, record, **{**common, "weights_exist": False}).reason == "its final weights are missing"
    interrupted = decide(1, BASE, record, **{**common, "attempt": Attempt(started=0.0, state_saved=True)})
    assert interrupted.runs and "was interrupted" in interrupted.reason and "--resume" in interrupted.reason
    resumed = decide(1, BASE, record, **{**common, "attempt": Attempt(0.0, True), "resuming": True})
    assert "resuming from its saved state" in resumed.reason
    edited = decide(1, changed(**{"/data/1_bob": {"c.png": "image 3:3", "c.txt": "caption q"}}), record, **common)
    assert edited.line == "stage 1: runs (1 caption changed in 1_bob since it was trained)"


def test_collect_reads_images_by_stat_and_captions_by_content(tmp_path: Path) -> None:
    folder = tmp_path / "2_alice"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"png")
    (folder / "a.txt").write_text("alice, smile")
    (folder / "notes.md").write_text("not trained")
    first = folder_digests(folder, ".txt")
    assert set(first) == {"a.png", "a.txt"}
    (folder / "a.txt").write_text("alice, frown")  # same size, new content
    assert folder_digests(folder, ".txt")["a.txt"] != first["a.txt"]
    assert folder_digests(folder, ".caption") == {"a.png": first["a.png"]}, "captions of another extension"

    dataset = tmp_path / "d.toml"
    dataset.write_text("[general]\n")
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"one")
    flat = {"pretrained_model_name_or_path": str(tmp_path / "missing.safetensors"), "network_weights": str(weights),
            "network_module": "lycoris.kohya"}
    subsets = [{"image_dir": str(folder), "caption_extension": ".txt"}]
    inputs = collect_inputs(effective_text="x", dataset_toml=dataset, subsets=subsets, flat=flat,
                            network_version="3.4.0")
    weights.write_bytes(b"two")
    again = collect_inputs(effective_text="x", dataset_toml=dataset, subsets=subsets, flat=flat,
                           network_version="3.4.1")
    assert explain_changes(inputs, again) == ["network module changed", "stage 1's weights changed"]
