"""One source of defaults: the Makefile's `NAME ?= value` lines say what steerlab/cli/defaults.py says."""
import re
from pathlib import Path

from steerlab.base.files import REPO_ROOT
from steerlab.cli import defaults
from steerlab.lm.model import DEFAULT_MODEL_DIR

MAKEFILE = Path(__file__).resolve().parent.parent / "Makefile"


def makefile_defaults() -> dict[str, str]:
    pattern = re.compile(r"^([A-Z_]+)\s+\?=\s*([^#\n]*?)\s*##", re.MULTILINE)
    return dict(pattern.findall(MAKEFILE.read_text()))


def test_every_default_is_the_makefiles():
    make = makefile_defaults()
    names = [name for name in vars(defaults) if name.isupper()]
    assert len(names) > 20
    for name in names:
        assert make.get(name) == getattr(defaults, name), name


def test_the_default_model_is_where_make_model_converts_it():
    assert REPO_ROOT / defaults.MODEL == DEFAULT_MODEL_DIR
