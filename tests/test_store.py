import json
import os
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from steerlab.store import (
    SCHEMA_VERSION,
    StoreError,
    VectorGroup,
    code_version,
    is_current,
    migrate,
    read_vector_group,
    read_vector_groups,
    replace_group,
    run_attrs,
    write_vector_group,
    writing,
)
from steerlab.store.provenance import PACKAGE_PARENT, _reached


def _write_vectors(path, name="L7", value=1.0):
    with writing(path, wait_seconds=0) as h5:
        replace_group(h5.require_group("m/vectors/caa"), name, {"vectors": np.full((1, 4), value)},
                      run_attrs({"layer": 7}, "src-test", "now", 0.1))


def _read(path):
    with h5py.File(path, "r") as h5:
        return {name: h5[f"m/vectors/caa/{name}/vectors"][()] for name in h5["m/vectors/caa"]}


def test_exception_mid_write_leaves_previous_store_intact(tmp_path):
    store = tmp_path / "store.h5"
    _write_vectors(store, value=1.0)
    with pytest.raises(RuntimeError, match="boom"):
        with writing(store, wait_seconds=0) as h5:
            del h5["m/vectors/caa/L7"]
            replace_group(h5.require_group("m/vectors/caa"), "L9", {"vectors": np.zeros((1, 4))}, {})
            raise RuntimeError("boom")
    assert list(_read(store)) == ["L7"] and (_read(store)["L7"] == 1.0).all()
    assert not (tmp_path / "store.h5.partial").exists()


WRITER = textwrap.dedent("""
    import sys, time, numpy as np
    from steerlab.store import writing, replace_group
    with writing(sys.argv[1], wait_seconds=0) as h5:
        del h5["m/vectors/caa/L7"]
        replace_group(h5.require_group("m/vectors/caa"), "L9", {"vectors": np.zeros((1, 4))}, {})
        h5.flush()
        print("writing", flush=True)
        time.sleep(60)
""")


def _start_writer(store):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(store)], stdout=subprocess.PIPE,
                            text=True, cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.stdout.readline().strip() == "writing"
    return proc


def test_writer_killed_mid_write_leaves_previous_store_intact(tmp_path):
    """The writer runs in a process of its own: SIGKILL is what it must survive, and only another
    process can be killed mid-write without killing the test (it imports h5py alone: quick)."""
    store = tmp_path / "store.h5"
    _write_vectors(store, value=1.0)
    proc = _start_writer(store)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(_read(store)) == ["L7"] and (_read(store)["L7"] == 1.0).all()
    _write_vectors(store, "L9", 2.0)  # the next writer gets the lock and a clean copy
    assert sorted(_read(store)) == ["L7", "L9"]


def test_second_writer_gets_a_clear_message_while_the_first_holds_the_lock(tmp_path):
    """The first writer is another process, as a second `make` would be: flock locks belong to
    an open file, and the message names the holder's pid."""
    store = tmp_path / "store.h5"
    _write_vectors(store)
    proc = _start_writer(store)
    try:
        with pytest.raises(StoreError, match=rf"is being written by pid {proc.pid}.*STORE_WAIT"):
            _write_vectors(store, "L9")
    finally:
        proc.kill()
        proc.wait()
    assert list(_read(store)) == ["L7"]


def test_file_that_is_not_hdf5_is_refused_and_left_alone(tmp_path):
    store = tmp_path / "store.h5"
    store.write_text("not a store")
    with pytest.raises(StoreError, match="is not an HDF5 file"):
        _write_vectors(store)
    assert store.read_text() == "not a store"


def test_a_truncated_store_is_named_damaged_with_what_to_do_and_left_alone(tmp_path):
    """A copy cut short keeps the HDF5 signature, so it passes is_hdf5 and fails inside h5py."""
    from steerlab.store import open_for_reading

    store = tmp_path / "store.h5"
    for value in range(40):  # enough data that the cut falls inside it
        _write_vectors(store, f"L{value}", float(value))
    data = store.read_bytes()
    store.write_bytes(data[: len(data) // 2])
    for attempt in (lambda: open_for_reading(store), lambda: _write_vectors(store),
                    lambda: is_current(store, "m/vectors/caa/L1", {"layer": 7}, "src-test")):
        with pytest.raises(StoreError,
                           match=r"store\.h5 is damaged: HDF5 cannot read it .*last good copy.*\.damaged"):
            attempt()
    assert store.read_bytes() == data[: len(data) // 2]


def test_group_with_same_settings_and_code_is_current(tmp_path):
    store = tmp_path / "store.h5"
    _write_vectors(store)
    assert is_current(store, "m/vectors/caa/L7", {"layer": 7}, "src-test")
    assert not is_current(store, "m/vectors/caa/L7", {"layer": 8}, "src-test")
    assert not is_current(store, "m/vectors/caa/L9", {"layer": 7}, "src-test")
    assert not is_current(store, "m/vectors/caa/L7", {"layer": 7}, "src-other")


def test_code_version_covers_what_computes_a_group_and_not_the_report():
    reached = {entry.split("\0")[0] for entry in _reached("steerlab.cli.caa", None, PACKAGE_PARENT)}
    assert {"run", "caa_vector", "compute_groups", "answer_tokens", "injection_site", "write_vector_group",
            "code_version"} <= reached
    assert not reached & {"melbo", "displacement_objective", "write_matrix_page",
                          "random_distribution_figure",
                          "generations_page", "load"}  # another method, the pages, the figures
    assert code_version("steerlab.cli.caa") != code_version("steerlab.cli.melbo")
    assert code_version("steerlab.cli.caa") == code_version("steerlab.cli.caa")


def test_a_group_computed_under_other_library_releases_is_not_current(tmp_path, monkeypatch):
    import steerlab.store.provenance as provenance

    store, where, settings = tmp_path / "s.h5", "/m/g", {"k": 1}
    version = code_version("steerlab.cli.caa")
    with writing(store) as h5:
        replace_group(h5, "m/g", {"x": np.zeros(2)}, run_attrs(settings, version, "t", 1.0))
        assert json.loads(h5["m/g"].attrs["libraries"]) == provenance.library_versions()
    assert is_current(store, where, settings, code_version("steerlab.cli.caa"))
    for name in provenance.COMPUTING_LIBRARIES:
        real = provenance.library_versions

        def other(real=real, name=name):
            return {**real(), name: "0.0.1"}

        monkeypatch.setattr(provenance, "library_versions", other)
        assert not is_current(store, where, settings, code_version("steerlab.cli.caa")), name
        monkeypatch.setattr(provenance, "library_versions", real)


def _package(root, **files):
    for name, text in files.items():
        path = root / "steerlab" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_code_version_follows_names_not_files(tmp_path):
    """Where a definition sits, its docstring and its comments do not count; its code does."""
    run = "from steerlab.maths import double\n\ndef main():\n    return double(2)\n"
    maths = 'def double(x):\n    """Twice x."""\n    return 2 * x\n\ndef unused():\n    return 0\n'
    _package(tmp_path, **{"__init__.py": "", "run.py": run, "maths.py": maths})
    first = code_version("steerlab.run", parent=tmp_path)
    _package(tmp_path, **{"maths.py": maths.replace("Twice x.", "x, doubled.").replace("return 0", "return 1")
                          .replace("return 2 * x", "return 2 * x  # exact in floats")})
    assert code_version("steerlab.run", parent=tmp_path) == first  # a docstring, a comment, unreached code
    _package(tmp_path, **{"maths.py": "", "shelf/__init__.py": "from steerlab.shelf.twice import *\n",
                          "shelf/twice.py": "def double(x):\n    return 2 * x\n",
                          "run.py": run.replace("steerlab.maths", "steerlab.shelf")})
    assert code_version("steerlab.run", parent=tmp_path) == first  # moved to another module, re-exported
    _package(tmp_path, **{"shelf/twice.py": "def double(x):\n    return x + x\n"})
    assert code_version("steerlab.run", parent=tmp_path) != first  # the code it runs changed
    assert code_version("steerlab.run:main", parent=tmp_path) == code_version("steerlab.run", parent=tmp_path)
    changed = code_version("steerlab.run", parent=tmp_path)
    # left by a package made a module
    (tmp_path / "steerlab" / "shelf" / "twice" / "__pycache__").mkdir(parents=True)
    assert code_version("steerlab.run", parent=tmp_path) == changed


def test_code_version_reaches_what_runs_on_import_and_every_import_of_a_name(tmp_path):
    """Code a module runs on import (its package's too), names defined inside a top-level ``try``,
    and both of two local imports under one name count; a root that names nothing is an error."""
    _package(tmp_path, **{
        "__init__.py": "SETUP = []\nSETUP.append(1)\n",
        "run.py": ("try:\n    from steerlab.fast import helper\nexcept ImportError:\n    helper = None\n\n"
                   "def one():\n    from steerlab.a import step as go\n    return go()\n\n"
                   "def two():\n    from steerlab.b import step as go\n    return go(helper)\n"),
        "fast.py": "def helper():\n    return 1\n", "a.py": "def step():\n    return 1\n",
        "b.py": "def step(x=None):\n    return 2\n"})
    first = code_version("steerlab.run", parent=tmp_path)
    for name, text in {"__init__.py": "SETUP = []\nSETUP.append(2)\n",
                       "fast.py": "def helper():\n    return 3\n",
                       "a.py": "def step():\n    return 4\n",
                       "b.py": "def step(x=None):\n    return 5\n"}.items():
        before = (tmp_path / "steerlab" / name).read_text(encoding="utf-8")
        _package(tmp_path, **{name: text})
        assert code_version("steerlab.run", parent=tmp_path) != first, name
        _package(tmp_path, **{name: before})
    assert code_version("steerlab.run", parent=tmp_path) == first
    with pytest.raises(ValueError, match="names no project module"):
        code_version("steerlab.run:three", parent=tmp_path)
    with pytest.raises(ValueError, match="names no project module"):
        code_version("steerlab.nowhere", parent=tmp_path)


class _Model:
    key, source, n_layers, d_model, dtype = "m", "m", 2, 4, "fp32"


def test_vector_group_reads_back_as_written(tmp_path):
    store = tmp_path / "store.h5"
    written = VectorGroup("pi", "L1-T2", np.arange(8, dtype=np.float32).reshape(2, 4), 1, True,
                          {"k": 2, "tol": 0.01}, 2, {"sigmas": np.array([2.0, 1.0])},
                          {"code_version": "src-x", "steps": 3})
    with writing(store, wait_seconds=0) as h5:
        write_vector_group(h5, _Model(), "b", written)
    got = read_vector_group(store, "m", "b", "pi", "L1-T2", d_model=4)
    assert (got.vectors == written.vectors).all() and got.settings == written.settings
    assert (got.source_layer, got.target_layer, got.sign_free) == (1, 2, True)
    assert (got.arrays["sigmas"] == [2.0, 1.0]).all() and got.attrs["steps"] == 3
    assert got.fingerprint == written.fingerprint
    assert [g.label for g in read_vector_groups(store, "m", "b")] == ["pi/L1-T2"]
    assert (read_vector_groups(store, "other", "b") == []
            and read_vector_groups(tmp_path / "no.h5", "m", "b") == [])
    with pytest.raises(StoreError, match="no caa vectors at m/b/vectors/caa/L1 .* run `make caa`"):
        read_vector_group(store, "m", "b", "caa", "L1")


def _schema2_store(path, behavior_attr="power-seeking-inclination"):
    """A store as schema 2 wrote it: vectors and evals right under the model."""
    with h5py.File(path, "w") as h5:
        h5.attrs["schema_version"] = 2
        caa = h5.create_group("m/vectors/caa/L7")
        caa["vectors"] = np.ones((1, 4), np.float32)
        caa.attrs.update(source_layer=7, sign_free=0, settings=json.dumps({"data": "/x/data/other.jsonl"}))
        split = h5.create_group("m/evals/val")
        split["question_ids"] = np.array([b"q"])
        if behavior_attr:
            split.attrs["behavior"] = behavior_attr
        h5.create_group("m/neutral/val")


def test_a_schema2_store_is_refused_for_reading_and_migrated_by_a_write(tmp_path):
    store = tmp_path / "old.h5"
    _schema2_store(store)
    with pytest.raises(StoreError, match="schema 2, before each behaviour had its own group: `make migrate"):
        read_vector_groups(store, "m", "power-seeking-inclination")
    with writing(store, wait_seconds=0):
        pass
    got = read_vector_groups(store, "m", "power-seeking-inclination", d_model=4)
    assert [g.label for g in got] == ["caa/L7"]
    with h5py.File(store, "r") as h5:
        assert h5.attrs["schema_version"] == SCHEMA_VERSION
        assert set(h5["m"]) == {"power-seeking-inclination", "neutral"}  # neutral stays per model
        assert "question_ids" in h5["m/power-seeking-inclination/evals/val"]


def test_migration_takes_the_behaviour_from_the_vectors_data_file_without_evals(tmp_path):
    store = tmp_path / "old.h5"
    _schema2_store(store, behavior_attr=None)
    with h5py.File(store, "a") as h5:
        assert migrate(h5) == ["/m/vectors -> /m/other/vectors", "/m/evals -> /m/other/evals"]
