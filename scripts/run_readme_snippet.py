"""Run the README's "From Python" block as a user would: `python scripts/run_readme_snippet.py`
from a folder that has the clone's data/ and models/ (``make check-install`` runs it so against
an installed copy of the package; tests/test_readme.py runs the same block in the test process)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def snippet(readme: Path = README) -> str:
    """The first python block after the README's "## From Python" heading."""
    section = readme.read_text(encoding="utf-8").split("## From Python", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    if not found:
        raise SystemExit(f"{readme}: the From Python section has no python block")
    return found.group(1)


if __name__ == "__main__":
    code = snippet(Path(sys.argv[1]) if len(sys.argv) > 1 else README)
    exec(compile(code, "README.md: From Python", "exec"), {"__name__": "readme"})
