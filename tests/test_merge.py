"""Hand edits are never lost: three-way merge of generated TOMLs, records, backups, conflicts."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import toml
import tomlkit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kohya_1to2.configs.generate import render_run_files, write_generated_file, write_run_configs
from kohya_1to2.configs.merge import MISSING, canonical, leaves, merge_toml, path_name
from kohya_1to2.models import Character, Job, SourceImage, SourceSettings, TrainingSettings
from kohya_1to2.rundir import RunDir

RUN = Path("/runs/example")


def chars(names: tuple[str, ...] = ("alice", "bob")) -> list[Character]:
    out = []
    for name in names:
        folder = Path("/data/src") / f"1_{name}"
        images = (SourceImage(path=folder / "a.png", character=name, tags=(name,)),)
        out.append(Character(name=name, trigger=name, repeats=1, folder=folder, images=images))
    return out


def files_for(names: tuple[str, ...] = ("alice", "bob"), **training: Any) -> dict[str, str]:
    training.setdefault("base_model", "/models/base.safetensors")
    job = Job(out=RUN, sources=SourceSettings(roots=[Path("/data/src")]), training=TrainingSettings(**training))
    return render_run_files(job, chars(names), composite_dir=RUN / "composites" / "1_composite",
                            composite_repeats=1, composite_count=4, run_dir=RUN)


@functools.cache
def cached_files(training: tuple[tuple[str, Any], ...]) -> dict[str, str]:
    """files_for, rendered once per distinct job (the property test draws from about a hundred)."""
    return files_for(**dict(training))


def edit(text: str, section: str, key: str, value: Any) -> str:
    doc = tomlkit.parse(text)
    doc[section][key] = value  # type: ignore[index]
    return tomlkit.dumps(doc)


def test_untouched_keys_update_edited_keys_stay_added_keys_and_comments_survive() -> None:
    base = files_for(epochs=10)["stage1.train.toml"]
    ours = edit(base, "network", "network_dim", 16)
    ours = ours.replace("[optimizer]\n", "[optimizer]\n# my note: lr tuned by hand\nmy_extra = 1\n")
    new = files_for(epochs=20, base_model="/models/other.safetensors")["stage1.train.toml"]
    result = merge_toml(base, ours, new)
    merged = toml.loads(result.text)
    assert merged["network"]["network_dim"] == 16
    assert merged["training"]["max_train_epochs"] == 20
    assert merged["model"]["pretrained_model_name_or_path"] == "/models/other.safetensors"
    assert merged["optimizer"]["my_extra"] == 1 and "# my note: lr tuned by hand" in result.text
    assert result.conflicts == () and "network.network_dim" in result.kept_edits


def test_key_changed_by_both_is_a_conflict_that_keeps_the_users_value() -> None:
    base = files_for(epochs=10)["stage1.train.toml"]
    ours = edit(base, "training", "max_train_epochs", 3)
    result = merge_toml(base, ours, files_for(epochs=20)["stage1.train.toml"])
    assert toml.loads(result.text)["training"]["max_train_epochs"] == 3
    [conflict] = result.conflicts
    assert (conflict.key, conflict.user, conflict.generated, conflict.previous) == (
        "training.max_train_epochs", "3", "20", "10")


def test_type_change_counts_as_an_edit() -> None:
    base = files_for()["stage1.train.toml"]
    ours = edit(base, "network", "network_alpha", 1)  # 1 is not 1.0 for sd-scripts
    assert canonical(1) != canonical(1.0)
    assert "network.network_alpha" in merge_toml(base, ours, base).kept_edits


def test_deleted_key_stays_deleted() -> None:
    base = files_for()["stage1.train.toml"]
    doc = tomlkit.parse(base)
    del doc["training"]["xformers"]  # type: ignore[union-attr]
    result = merge_toml(base, tomlkit.dumps(doc), files_for(epochs=5)["stage1.train.toml"])
    assert "xformers" not in toml.loads(result.text)["training"]


def test_keys_the_generator_drops_leave_no_orphan_comments() -> None:
    base = files_for(sample=True)["stage1.train.toml"]
    ours = base.replace("[sampling]\n", "[sampling]\n# my own note\n") + "\n[extra]\nmine = 1\n"
    ours = edit(ours, "network", "network_dim", 4)
    result = merge_toml(base, ours, files_for(sample=False)["stage1.train.toml"])
    merged = toml.loads(result.text)
    assert "sample_sampler" not in result.text and "# Sampler used for samples." not in result.text
    assert "# my own note" in result.text and merged["sampling"] == {}, "a section with user comments stays"
    assert merged["network"]["network_dim"] == 4 and merged["extra"] == {"mine": 1}
    plain = merge_toml(base, edit(base, "network", "network_dim", 4), files_for(sample=False)["stage1.train.toml"])
    assert "[sampling]" not in plain.text


def test_characters_added_and_removed_merge_by_image_dir() -> None:
    base = files_for(("alice", "bob"))["stage1.dataset.toml"]
    doc = tomlkit.parse(base)
    doc["datasets"][0]["subsets"][0]["num_repeats"] = 5  # type: ignore[index]
    ours = tomlkit.dumps(doc)
    new = files_for(("alice", "cid"))["stage1.dataset.toml"]
    merged = toml.loads(merge_toml(base, ours, new).text)
    subsets = {Path(s["image_dir"]).name: s["num_repeats"] for s in merged["datasets"][0]["subsets"]}
    assert subsets == {"1_alice": 5, "1_cid": 1}


def test_removed_character_with_user_edits_is_kept_and_reported() -> None:
    base = files_for(("alice", "bob"))["stage1.dataset.toml"]
    doc = tomlkit.parse(base)
    doc["datasets"][0]["subsets"][1]["num_repeats"] = 7  # type: ignore[index]
    result = merge_toml(base, tomlkit.dumps(doc), files_for(("alice",))["stage1.dataset.toml"])
    assert len(toml.loads(result.text)["datasets"][0]["subsets"]) == 2
    assert [c.generated for c in result.conflicts] == ["<removed>"]


def test_without_a_record_every_difference_is_a_conflict_and_the_file_is_kept() -> None:
    ours = edit(files_for()["stage1.train.toml"], "network", "network_dim", 4)
    result = merge_toml(None, ours, files_for(epochs=9)["stage1.train.toml"])
    assert result.text == ours
    assert {c.key for c in result.conflicts} == {"network.network_dim", "training.max_train_epochs"}


def test_write_run_configs_records_backs_up_and_overwrites_on_request(tmp_path: Path) -> None:
    run = tmp_path / "run"
    job = Job(out=run, sources=SourceSettings(roots=[Path("/data/src")]),
              training=TrainingSettings(base_model="/m", epochs=4))
    kwargs: dict[str, Any] = dict(composite_dir=run / "c", composite_repeats=1, composite_sizes=[(2, 1)], run_dir=run)
    first = write_run_configs(job, chars(), **kwargs)
    assert {f.status for f in first.files} == {"written"}
    assert (RunDir(run).generated / "stage1.train.toml").read_text() == (run / "stage1.train.toml").read_text()
    assert {f.status for f in write_run_configs(job, chars(), **kwargs).files} == {"unchanged"}

    train = run / "stage1.train.toml"
    train.write_text(edit(train.read_text(), "training", "max_train_epochs", 99))
    (run / "sample_prompts.txt").write_text("my own prompt --w 512\n")
    job2 = job.model_copy(update={"training": TrainingSettings(base_model="/m", epochs=6)})
    second = write_run_configs(job2, chars(), **kwargs)
    assert second.status_of("stage1.train.toml") == "kept"
    assert second.status_of("stage2.train.toml") == "updated"
    assert [c.key for _, c in second.conflicts] == ["training.max_train_epochs"]
    assert toml.load(train)["training"]["max_train_epochs"] == 99
    assert (run / "sample_prompts.txt").read_text() == "my own prompt --w 512\n"  # txt edits are left alone

    train.write_text(edit(train.read_text(), "network", "network_dim", 32))
    third = write_run_configs(job2, chars(("alice", "bob", "cid")), **kwargs)
    assert third.status_of("stage1.train.toml") in {"kept", "merged"}
    assert toml.load(train)["network"]["network_dim"] == 32

    forced = write_run_configs(job2, chars(), overwrite_edits=True, **kwargs)
    assert forced.status_of("stage1.train.toml") == "overwritten"
    assert toml.load(train)["training"]["max_train_epochs"] == 6
    backups = list((run / ".1to2" / "backup").glob("stage1.train.toml.*"))
    assert any("network_dim = 32" in b.read_text() for b in backups)


def test_unparsable_user_file_is_kept_and_reported(tmp_path: Path) -> None:
    (tmp_path / "stage1.train.toml").write_text("[training\n")
    RunDir(tmp_path).generated.mkdir(parents=True)
    (RunDir(tmp_path).generated / "stage1.train.toml").write_text("[training]\n")
    result = write_generated_file(tmp_path, "stage1.train.toml", "[training]\nx = 1\n", overwrite_edits=False,
                                  stamp="t")
    assert result.status == "kept" and "not valid TOML" in result.conflicts[0].user
    assert (tmp_path / "stage1.train.toml").read_text() == "[training\n"


# ------------------------------------------------------------------------------------------- property

_values = st.one_of(st.integers(-5, 500), st.floats(0.0, 10.0, allow_nan=False).map(lambda f: round(f, 3)),
                    st.booleans(), st.text("abcxyz_ é/\\\"'", min_size=0, max_size=8),
                    st.lists(st.sampled_from(["algo=loha", "conv_dim=4", "x=1"]), max_size=3))
_jobs = st.fixed_dictionaries({
    "epochs": st.sampled_from([None, 5, 40]), "base_model": st.sampled_from(["/m/a", "/m/b c"]),
    "resolution": st.sampled_from([None, 512, 768]), "sample": st.booleans(),
    "stage1_batch_size": st.sampled_from([None, 2, 4]),
})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), before=_jobs, after=_jobs,
       name=st.sampled_from(["stage1.train.toml", "stage2.train.toml", "stage1.dataset.toml"]))
def test_random_edits_are_never_lost(data: st.DataObject, before: dict[str, Any], after: dict[str, Any],
                                     name: str) -> None:
    base_text = cached_files(tuple(sorted(before.items())))[name]
    new_text = cached_files(tuple(sorted(after.items())))[name]
    doc = tomlkit.parse(base_text)
    base_leaves = {p: v for p, v in leaves(doc.unwrap()) if v is not MISSING}
    # image_dir is a subset's identity (subsets are matched by it), so it is not among the random edits
    paths = sorted((p for p in base_leaves if p[-1] != "image_dir"), key=path_name)
    changed = data.draw(st.lists(st.sampled_from(paths), unique=True, max_size=4), label="changed")
    deleted = data.draw(st.lists(st.sampled_from([p for p in paths if p not in changed] or paths), unique=True,
                                 max_size=2), label="deleted")
    deleted = [p for p in deleted if p not in changed]
    user: dict[Any, Any] = {}
    for path in changed:
        value = data.draw(_values.filter(lambda v, p=path: canonical(v) != canonical(base_leaves[p])))
        _container(doc, path)[path[-1]] = value
        user[path] = value
    for path in deleted:
        del _container(doc, path)[path[-1]]
    section = data.draw(st.sampled_from(["general"] if "dataset" in name else ["training", "network"]))
    doc[section].add(tomlkit.comment("hand note"))  # type: ignore[union-attr]
    doc[section]["my_added_key"] = 7  # type: ignore[index]
    ours_text = tomlkit.dumps(doc)

    result = merge_toml(base_text, ours_text, new_text)
    merged = dict(leaves(tomlkit.parse(result.text).unwrap()))
    new_leaves = dict(leaves(tomlkit.parse(new_text).unwrap()))
    toml.loads(result.text)  # sd-scripts' parser reads the merged file
    assert merged[(section, "my_added_key")] == 7 and "# hand note" in result.text
    conflicts = {c.key for c in result.conflicts}
    for path, value in user.items():
        assert canonical(merged[path]) == canonical(value), f"edit of {path_name(path)} lost"
        generator_changed = canonical(new_leaves.get(path, MISSING)) != canonical(base_leaves[path])
        assert (path_name(path) in conflicts) == (generator_changed and
                                                  canonical(new_leaves.get(path, MISSING)) != canonical(value))
    for path in deleted:
        assert path not in merged, f"deletion of {path_name(path)} lost"
    for path, value in new_leaves.items():
        if path not in user and path not in deleted and value is not MISSING:
            assert canonical(merged.get(path, MISSING)) == canonical(value), f"{path_name(path)} not updated"


def _container(doc: Any, path: tuple[Any, ...]) -> Any:
    node = doc
    for part in path[:-1]:
        if isinstance(part, tuple):
            key, ident = part
            node = next(e for i, e in enumerate(node[key])
                        if f"image_dir={e.get('image_dir')}" == ident or f"#{i}" == ident)
        else:
            node = node[part]
    return node
