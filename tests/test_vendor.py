"""sd-scripts set-up: pin verification by file hashes, safe archive extraction, the install plan."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from kohya_1to2 import kohya
from kohya_1to2.environment import vendor
from kohya_1to2.errors import SetupError

REQUIREMENTS = "accelerate==1.6.0\n# a comment\nbitsandbytes\ntoml==0.10.2  # inline\n\n-e .\n"


@pytest.fixture
def fake_pin(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """Pin a tiny fake tree instead of the real v0.10.1 files."""
    files = {"train_network.py": b"print('train')\n", "requirements.txt": REQUIREMENTS.encode()}
    monkeypatch.setattr(kohya, "PIN_FILE_SHA256", {k: hashlib.sha256(v).hexdigest() for k, v in files.items()})
    return files


def make_archive(path: Path, files: dict[str, bytes], top: str = "sd-scripts") -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_extract_verifies_and_replaces_the_tree_but_keeps_the_mount_point(tmp_path: Path,
                                                                            fake_pin: dict[str, bytes]) -> None:
    dest = tmp_path / "vendor" / "sd-scripts"
    dest.mkdir(parents=True)
    (dest / "stale.py").write_text("old")
    (dest / ".git").write_text("gitdir: ../../.git/modules/sd-scripts")
    vendor.extract_archive(make_archive(tmp_path / "a.tar.gz", fake_pin), dest)
    assert vendor.pin_mismatches(dest) == []
    assert not (dest / "stale.py").exists()
    assert (dest / ".git").read_text().startswith("gitdir"), "the submodule's gitlink file is left alone"


def test_an_archive_of_another_version_is_refused(tmp_path: Path, fake_pin: dict[str, bytes]) -> None:
    other = {**fake_pin, "train_network.py": b"print('newer')\n"}
    dest = tmp_path / "sd-scripts"
    with pytest.raises(SetupError, match=r"train_network\.py differs"):
        vendor.extract_archive(make_archive(tmp_path / "a.tar.gz", other), dest)
    assert not dest.exists() or not any(dest.iterdir()), "nothing of a wrong archive is installed"


def test_entries_outside_the_top_folder_are_refused(tmp_path: Path, fake_pin: dict[str, bytes]) -> None:
    with pytest.raises(SetupError, match="outside sd-scripts/"):
        vendor.extract_archive(make_archive(tmp_path / "a.tar.gz", fake_pin, top="other"), tmp_path / "d")


def test_missing_or_unreadable_archive_is_a_setup_error(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match="not found"):
        vendor.extract_archive(tmp_path / "nope.tar.gz", tmp_path / "d")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not an archive")
    with pytest.raises(SetupError, match="not a readable archive"):
        vendor.extract_archive(junk, tmp_path / "d")


def test_require_sd_scripts_explains_how_to_get_it(tmp_path: Path, fake_pin: dict[str, bytes]) -> None:
    with pytest.raises(SetupError, match="not found") as err:
        vendor.require_sd_scripts(tmp_path)
    assert err.value.hint and "bootstrap.sh" in err.value.hint
    (tmp_path / "train_network.py").write_bytes(b"edited\n")
    with pytest.raises(SetupError, match="not the pinned"):
        vendor.require_sd_scripts(tmp_path)


def test_install_plan_pins_torch_lycoris_and_drops_the_editable_line(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text(REQUIREMENTS)
    cpu = vendor.install_plan("py", tmp_path, cuda=False)
    flat = [arg for step in cpu for arg in step]
    assert kohya.LYCORIS_PIN in flat and all(p in cpu[0] for p in kohya.TORCH_PAIR)
    assert "-e" in cpu[-1] and str(tmp_path) in cpu[-1] and "--no-deps" in cpu[-1]
    assert "accelerate==1.6.0" in cpu[1] and "toml==0.10.2" in cpu[1] and "." not in cpu[1]
    assert "bitsandbytes" not in flat, "bitsandbytes only where CUDA is"
    assert "bitsandbytes" in [arg for step in vendor.install_plan("py", tmp_path, cuda=True) for arg in step]
    assert vendor.optional_install_plan("py", cuda=False) == []
    assert "xformers" in vendor.optional_install_plan("py", cuda=True)[0]


def test_the_stamp_makes_a_rerun_a_no_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vendor, "stamp_path", lambda: tmp_path / "stamp.json")
    plan = [["true"]]
    assert not vendor.installed_matches(plan)
    vendor.run_install(plan, tmp_path / "log.txt")
    assert vendor.installed_matches(plan)
    assert not vendor.installed_matches([["true"], ["true", "more"]]), "a changed plan re-installs"
    with pytest.raises(SetupError, match="failed"):
        vendor.run_install([["false"]], tmp_path / "log.txt")


@pytest.mark.skipif(not (vendor.default_sd_scripts() / "train_network.py").is_file(),
                    reason="vendor/sd-scripts not set up (run ./bootstrap.sh)")
def test_the_vendored_tree_is_the_pin() -> None:
    assert vendor.pin_mismatches(vendor.default_sd_scripts()) == []


def _pinned_archive() -> Path | None:
    import os

    named = os.environ.get("SD_SCRIPTS_ARCHIVE")
    beside = vendor.repo_root().parent / "shared" / "vendor" / "sd-scripts-v0.10.1.tar.gz"
    return Path(named) if named else beside if beside.is_file() else None


@pytest.mark.integration
def test_the_real_archive_extracts_to_the_pin(tmp_path: Path) -> None:
    archive = _pinned_archive()
    if archive is None:
        pytest.skip("no sd-scripts archive (set SD_SCRIPTS_ARCHIVE or put it in ../shared/vendor/)")
    vendor.extract_archive(archive, tmp_path / "sd-scripts")
    assert vendor.pin_mismatches(tmp_path / "sd-scripts") == []
    assert vendor.require_sd_scripts(tmp_path / "sd-scripts") == (tmp_path / "sd-scripts").resolve()


def test_setup_installs_tensorboard_which_the_presets_log_to() -> None:
    """The presets set log_with = "tensorboard"; the pinned requirements.txt brings the package, so setup's
    install step (no extra pin of ours) must keep it, on CPU and CUDA machines alike."""
    pinned = vendor.default_sd_scripts()
    if not (pinned / "requirements.txt").is_file():
        pytest.skip(f"sd-scripts not set up at {pinned}")
    for cuda in (False, True):
        install = vendor.install_plan("python", pinned, cuda=cuda)[1]
        assert any(arg.split("=")[0].split("<")[0].split(">")[0].strip() == "tensorboard" for arg in install)
