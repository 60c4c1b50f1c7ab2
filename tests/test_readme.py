"""The README's "From Python" snippet runs as it stands there, so it cannot rot."""
import os

import pytest

from scripts.run_readme_snippet import README, snippet


def test_the_readme_python_snippet_runs(tmp_path, monkeypatch, capsys):
    """In a folder of its own (the store it writes lands there), with the repository's data and
    models folders linked in, as a user's working copy has them."""
    root = README.parent
    for name in ("data", "models"):
        os.symlink(root / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    code = snippet()
    assert 8 <= len(code.strip().splitlines()) <= 22
    exec(compile(code, "README.md: From Python", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "cloze Δ" in out and "polarity shift" in out and "letter Δ" in out
    assert (tmp_path / "my-vectors.h5").is_file()


@pytest.mark.parametrize("name", ["SteeringVector", "caa_from_pairs", "score_items", "load_model", "generate",
                                  "save_vector", "load_vector"])
def test_what_the_snippet_imports_is_the_public_api(name):
    import steerlab

    assert name in steerlab.__all__ and hasattr(steerlab, name)
