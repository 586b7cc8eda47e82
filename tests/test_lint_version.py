"""Keys the pin has that another sd-scripts install lacks (configs/lint/version.py): removed, or renamed to a
close new name, reported by `check` as one line naming the key and the install (pure, from snapshots)."""

from __future__ import annotations

import copy
from typing import Any

from kohya_1to2 import kohya
from kohya_1to2.configs.lint import lint_dataset, lint_training, load_snapshot
from kohya_1to2.configs.lint.version import install_label, renamed_to, version_gap
from kohya_1to2.kohya import options as opt

SCRIPT = kohya.TRAINING_SCRIPTS["sd1"]
INSTALL = "/opt/kohya_ss/sd-scripts"


def other_install(removed: str = "seed", renamed: tuple[str, str] = (opt.MAX_TRAIN_STEPS, "max_train_steps_total"),
                  ) -> dict[str, Any]:
    """The pin's snapshot with one option removed and one renamed in every parser, as environment.install
    returns it for another tree."""
    snap = copy.deepcopy(load_snapshot())
    for actions in snap["parsers"].values():
        actions[:] = [a for a in actions if a["dest"] != removed]
        for action in actions:
            if action["dest"] == renamed[0]:
                action["dest"] = renamed[1]
                action["option_strings"] = [f"--{renamed[1]}"]
    return {**snap, "sd_scripts": "v0.11.0", "install": INSTALL}


def test_the_pins_snapshot_has_no_install_and_no_gap() -> None:
    assert install_label(load_snapshot()) is None
    assert version_gap("seed", SCRIPT, load_snapshot()) is None


def test_a_removed_and_a_renamed_option_name_the_key_and_the_install() -> None:
    snap = other_install()
    document = {"training": {"seed": 42, opt.MAX_TRAIN_STEPS: 10, opt.LEARNING_RATE: 1e-4}}
    problems = {p.key: p for p in lint_training(document, SCRIPT, "stage1.train.toml", snap)}
    assert set(problems) == {"training.seed", f"training.{opt.MAX_TRAIN_STEPS}"}
    removed, renamed = problems["training.seed"], problems[f"training.{opt.MAX_TRAIN_STEPS}"]
    assert f"sd-scripts v0.11.0 at {INSTALL} has no option 'seed'" in removed.line
    assert "which the pinned v0.10.1 has" in removed.problem and "\n" not in removed.line
    assert "renamed to 'max_train_steps_total'?" in renamed.problem
    assert renamed.fix == "rename it to max_train_steps_total if it means the same there"
    assert removed.severity == renamed.severity == "error", "sd-scripts would silently train without them"


def test_the_new_name_is_accepted_and_an_unknown_key_stays_unknown() -> None:
    snap = other_install()
    assert lint_training({"training": {"max_train_steps_total": 10}}, SCRIPT, "f", snap) == []
    [typo] = lint_training({"training": {"learnin_rate": 1e-4}}, SCRIPT, "f", snap)
    assert "unknown option" in typo.problem, "a key the pin lacks too is a typo, not a version gap"


def test_an_unknown_version_is_said_short_in_every_line() -> None:
    snap = {**other_install(), "sd_scripts": "unknown (not a git checkout; train_network.py differs from v0.10.1)"}
    assert install_label(snap) == f"sd-scripts at {INSTALL} (version unknown)"


def test_a_rename_is_only_taken_among_names_the_pin_lacks() -> None:
    pinned = {"network_dim": {}, "network_alpha": {}}
    assert renamed_to("network_dim", pinned, {"network_alpha": {}}) is None
    assert renamed_to("network_dim", pinned, {"network_alpha": {}, "network_dims": {}}) == "network_dims"


def test_a_dataset_key_the_install_lacks_or_renamed_names_the_key_and_the_install() -> None:
    """sd-scripts' dataset schema is strict: a key another version dropped fails its config load; check says
    which install lacks it, and a close new name, where the pin's "unknown option" would mislead."""
    snap = other_install()
    for level in snap["dataset_schema"].values():
        level.pop("alpha_mask", None)
        if "keep_tokens" in level:
            level["keep_tokens_count"] = level.pop("keep_tokens")
    document = {"datasets": [{"subsets": [{"image_dir": "/x", "alpha_mask": True, "keep_tokens": 1}]}]}
    problems = {p.key.rsplit(".", 1)[1]: p for p in lint_dataset(document, "stage2.dataset.toml", snap)}
    assert set(problems) == {"alpha_mask", "keep_tokens"}
    assert f"sd-scripts v0.11.0 at {INSTALL} has no dataset option 'alpha_mask', which the pinned v0.10.1 has" \
        in problems["alpha_mask"].problem
    assert "renamed to 'keep_tokens_count'?" in problems["keep_tokens"].problem
    assert lint_dataset(document, "f", load_snapshot()) == [], "the pin has both"
    [typo] = lint_dataset({"datasets": [{"subsets": [{"image_dir": "/x", "keep_tokenz": 1}]}]}, "f", snap)
    assert "unknown dataset option" in typo.problem, "a key the pin lacks too is a typo, not a version gap"
