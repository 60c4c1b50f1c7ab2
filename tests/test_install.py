"""Where an installed copy finds the lab's folders (steerlab.base.files.lab_root); `make
check-install` runs the README snippet against `pip install .` in a fresh venv."""
from pathlib import Path

from steerlab.base.files import REPO_ROOT, lab_root


def test_a_clone_finds_its_own_folders():
    assert (REPO_ROOT / "data" / "survival-instinct.jsonl").is_file() and (REPO_ROOT / "steerlab").is_dir()


def test_an_installed_copy_uses_steerlab_home_else_the_working_directory(tmp_path):
    site = tmp_path / "venv" / "lib" / "site-packages"  # steerlab/ installed here, no data/ beside it
    (site / "steerlab").mkdir(parents=True)
    clone = tmp_path / "my-clone"
    assert lab_root({}, site, cwd=clone) == clone.resolve()
    assert lab_root({"STEERLAB_HOME": str(tmp_path / "lab")}, site, cwd=clone) == (tmp_path / "lab").resolve()
    (site / "data").mkdir()  # a clone: the package beside its data
    assert lab_root({}, site, cwd=clone) == site
    assert lab_root({"STEERLAB_HOME": str(clone)}, site) == clone.resolve()


def test_the_package_data_is_found_without_the_clone():
    from importlib.resources import files

    shipped = files("steerlab") / "resources" / "neutral-prompts.jsonl"
    assert Path(str(shipped)).is_file() and shipped.read_text(encoding="utf-8").count("\n") > 10
