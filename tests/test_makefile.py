"""The Makefile passes on only what the user set: every default has one owner, the runners'
steerlab/cli/defaults.py, and Make reads the few it needs itself from there."""
import re
import subprocess
import sys
from pathlib import Path

from steerlab.base.files import REPO_ROOT
from steerlab.cli import defaults
from steerlab.lm.model import DEFAULT_MODEL_DIR

ROOT = Path(__file__).resolve().parent.parent


def dry_run(*args: str) -> list[str]:
    """The runner command lines `make -n` prints (continuations joined), for targets whose
    prerequisites are built (.venv, the default model)."""
    done = subprocess.run(["make", "-s", "-n", *args], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.replace("\\\n", " ").splitlines() if "steerlab.cli." in line]


def test_a_variable_reaches_a_runner_only_where_it_is_set():
    caa, pi, _, melbo, evaluate = dry_run("caa", "pi", "pi_caa", "melbo", "eval")[:5]
    assert "steerlab.cli.eval" in evaluate and "--layer" not in evaluate and "--scales" not in evaluate
    assert "--n-train" not in caa and "--k" not in pi and "--radius" not in melbo
    assert '--behavior "survival-instinct"' in evaluate  # Make needs it for its own paths: always passed
    line, = dry_run("eval", "LAYER=3", "SCALES=0.02 0.05", "N_EVAL=all", "RAW=1")
    assert '--layer "3"' in line and '--scales "0.02 0.05"' in line and '--n-eval "all"' in line
    assert line.endswith("--raw") or "--raw " in line


def test_a_preset_sets_what_it_names_and_leaves_the_rest_to_the_runner():
    line, = [line for line in dry_run("eval", "MODEL=gemma-3-270m") if "steerlab.cli.eval" in line]
    assert '--model "models/gemma-3-270m"' in line and '--layer "15"' in line and "--target" not in line
    assert "results/gemma-3-270m" in " ".join(dry_run("plot", "MODEL=gemma-3-270m"))


def test_every_default_is_documented_once_and_passed_by_some_target():
    documented = defaults.documented()
    names = [name for name in vars(defaults) if name.isupper() and name != "FOR_MAKE"]
    assert sorted(documented) == sorted(names)  # each has its `#:` line, what `make help` prints
    makefile = (ROOT / "Makefile").read_text()
    passed = set(re.findall(r"\$\(call arg,--[a-z-]+,([A-Z_]+)\)", makefile))
    used_by_make = {name for name in defaults.FOR_MAKE if f"$({name})" in makefile}
    assert set(names) - passed - used_by_make == set()  # no default that no target can change
    own = set(re.findall(r"^([A-Z_]+) +\?=", makefile, re.MULTILINE))
    assert not own & set(names), "a default written twice: in the Makefile and in steerlab/cli/defaults.py"


def test_make_reads_its_few_defaults_from_the_runners_file_with_the_system_python():
    done = subprocess.run([sys.executable, "-I", str(ROOT / "steerlab/cli/defaults.py"), "make"],
                          capture_output=True, text=True, check=True)
    lines = dict(line.split(" ?= ") for line in done.stdout.splitlines() if " ?= " in line)
    assert lines == {name: getattr(defaults, name) for name in defaults.FOR_MAKE}
    assert f"DEFAULT_MODEL := {defaults.MODEL}" in done.stdout


def test_the_default_model_is_where_make_model_converts_it():
    assert REPO_ROOT / defaults.MODEL == DEFAULT_MODEL_DIR
