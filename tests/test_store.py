import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from engine.store import StoreError, is_current, replace_group, run_attrs, writing


def _write_vectors(path, name="L7", value=1.0):
    with writing(path, wait_seconds=0) as h5:
        replace_group(h5.require_group("m/vectors/caa"), name, {"vectors": np.full((1, 4), value)},
                      run_attrs({"layer": 7}, "now", 0.1))


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
    from engine.store import writing, replace_group
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
    store = tmp_path / "store.h5"
    _write_vectors(store, value=1.0)
    proc = _start_writer(store)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(_read(store)) == ["L7"] and (_read(store)["L7"] == 1.0).all()
    _write_vectors(store, "L9", 2.0)  # the next writer gets the lock and a clean copy
    assert sorted(_read(store)) == ["L7", "L9"]


def test_second_writer_gets_a_clear_message_while_the_first_holds_the_lock(tmp_path):
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


def test_group_with_same_settings_and_code_is_current(tmp_path):
    store = tmp_path / "store.h5"
    _write_vectors(store)
    assert is_current(store, "m/vectors/caa/L7", {"layer": 7})
    assert not is_current(store, "m/vectors/caa/L7", {"layer": 8})
    assert not is_current(store, "m/vectors/caa/L9", {"layer": 7})
