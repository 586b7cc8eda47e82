"""sd-scripts facts: log-line parsing, output naming, config flattening."""

from __future__ import annotations

from pathlib import Path

import pytest

from kohya_1to2 import kohya


def test_lycoris_empty_report_is_clean() -> None:
    log = "noise\nload network weights from /r/o u/net_stage1.safetensors: {}\nmore\n"
    report = kohya.parse_weights_report(log)
    assert report is not None and report.clean and report.file == "/r/o u/net_stage1.safetensors"


def test_lycoris_report_with_missing_and_unexpected_keys() -> None:
    line = ("load network weights from /w.safetensors: {'missing keys': ['lora_unet_a.hada_w1_a', "
            "'lora_unet_b.hada_w1_a'], 'unexpected keys': ['lora_te_x.lora_up.weight']}")
    report = kohya.parse_weights_report(line)
    assert report is not None and not report.clean
    assert report.missing == ("lora_unet_a.hada_w1_a", "lora_unet_b.hada_w1_a")
    assert report.unexpected == ("lora_te_x.lora_up.weight",)


@pytest.mark.parametrize(("info", "clean"), [
    ("_IncompatibleKeys(missing_keys=[], unexpected_keys=[])", True),
    ("_IncompatibleKeys(missing_keys=['a.weight'], unexpected_keys=[])", False),
    ("<All keys matched successfully>", True),
    ("{broken", None),
])
def test_builtin_lora_reports(info: str, clean: bool | None) -> None:
    report = kohya.parse_weights_report(f"load network weights from /w.safetensors: {info}")
    if clean is None:
        assert report is None  # not a report line at all
    else:
        assert report is not None and report.clean is clean


def test_no_report_line_gives_none() -> None:
    assert kohya.parse_weights_report("training...\nsteps: 100%\n") is None


def test_final_weights_naming_follows_sd_scripts_defaults() -> None:
    assert kohya.final_weights_path("/o", "net", None) == Path("/o/net.safetensors")
    assert kohya.final_weights_path("/o", None, "ckpt") == Path("/o/last.ckpt")
    assert kohya.final_weights_of({"output_name": "x"}) is None


def test_flatten_merges_one_level_and_the_last_table_wins() -> None:
    flat = kohya.flatten_training_config({"top": 1, "a": {"k": 1, "x": 2}, "b": {"k": 3}})
    assert flat == {"top": 1, "k": 3, "x": 2}


def test_training_script_per_family() -> None:
    assert kohya.training_script("sdxl") == "sdxl_train_network.py"
    assert kohya.training_script("sd1") == kohya.training_script("sd2") == "train_network.py"


def test_dataset_scope_is_general_then_dataset_then_subset() -> None:
    document = {
        "general": {"resolution": 512, "keep_tokens": 1, "caption_extension": ".txt"},
        "datasets": [
            {"resolution": 768, "subsets": [{"image_dir": "/a", "keep_tokens": 2}, {"image_dir": "/b"}]},
            "not a table",
            {"subsets": [{"image_dir": "/c", "caption_extension": ".cap"}, "not a table"]},
        ],
    }
    assert kohya.dataset_scopes(document) == [
        (0, {"resolution": 768, "keep_tokens": 1, "caption_extension": ".txt"}),
        (2, {"resolution": 512, "keep_tokens": 1, "caption_extension": ".txt"}),
    ]
    assert [(i, j, values["image_dir"], values["keep_tokens"], values["resolution"])
            for i, j, values in kohya.subset_scopes(document)] == [(0, 0, "/a", 2, 768), (0, 1, "/b", 1, 768),
                                                                  (2, 0, "/c", 1, 512)]
    assert [s["caption_extension"] for s in kohya.resolved_subsets(document)] == [".txt", ".txt", ".cap"]
    assert kohya.resolved_subsets({"datasets": [{"subsets": [{"image_dir": "/d"}]}]}) == [
        {"caption_extension": ".caption", "num_repeats": 1, "image_dir": "/d"}]
    assert kohya.general_scope({"general": "oops"}) == {}


def test_table_of_key_is_where_the_flattened_value_comes_from() -> None:
    document = {"seed": 1, "a": {"lr": 1}, "b": {"lr": 2}}
    assert kohya.table_of_key(document, "lr") is document["b"]
    assert kohya.table_of_key(document, "seed") is document
    assert kohya.table_of_key(document, "missing") is None


def test_caption_facts() -> None:
    assert kohya.caption_path_for(Path("/d/a.b.PNG"), ".txt") == Path("/d/a.b.txt")
    assert kohya.first_caption_line("\ufeffalice, smile\r\nsecond line") == "alice, smile"
    assert kohya.globbed_suffixes((".png",)) == {".png", ".PNG"}


def test_saved_state_folders_need_train_state_and_random_states(tmp_path: Path) -> None:
    for name, complete in (("net-000001-state", True), ("net-state", True), ("net-000002-state", False),
                           ("other-state", True)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "train_state.json").write_text("{}")
        if complete:
            (folder / "random_states_0.pkl").write_bytes(b"")
    assert sorted(p.name for p in kohya.saved_state_dirs(tmp_path, "net")) == ["net-000001-state", "net-state"]
    assert kohya.network_output({"output_dir": "/o"}) == (Path("/o"), "last", "safetensors")


def test_requirements_skip_comments_the_editable_install_and_cuda_only_ones(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("accelerate==1.6.0\n# note\nbitsandbytes==0.45\ntoml  # x\n-e .\n")
    assert kohya.install_requirements(tmp_path, cuda=True) == ["accelerate==1.6.0", "bitsandbytes==0.45", "toml"]
    assert kohya.install_requirements(tmp_path, cuda=False) == ["accelerate==1.6.0", "toml"]
    assert not kohya.is_sd_scripts_tree(tmp_path)


def test_prompt_line_grammar() -> None:
    assert kohya.prompt_parts("alice --n bad --s 20") == ["alice", "n bad", "s 20"]
    assert kohya.OPTION_LIKE.match("w 512") and not kohya.OPTION_LIKE.match("alice")
    assert kohya.EPOCH_LINE.match("epoch 3/10")
