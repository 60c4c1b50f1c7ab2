import numpy as np
import pytest

from steerlab.base.errors import UserError
from steerlab.cli.options import parse_scales, parse_splits
from steerlab.store import StoreError, read_vector_groups, replace_group, writing


def _store_with(tmp_path, vectors):
    store = tmp_path / "store.h5"
    with writing(store, wait_seconds=0) as h5:
        replace_group(h5.require_group("m/b/vectors/caa"), "L1", {"vectors": vectors},
                      {"source_layer": 1, "sign_free": 0})
    return store


def test_vector_of_wrong_width_is_refused_naming_the_group(tmp_path):
    store = _store_with(tmp_path, np.ones((1, 32), np.float32))
    with pytest.raises(StoreError, match=r"m/b/vectors/caa/L1: vectors have shape \(1, 32\), but the model's width is 64"):
        read_vector_groups(str(store), "m", "b", 64)


def test_nan_in_a_vector_is_refused(tmp_path):
    vectors = np.ones((1, 64), np.float32)
    vectors[0, 3] = np.nan
    store = _store_with(tmp_path, vectors)
    before = store.read_bytes()
    with pytest.raises(StoreError, match="m/b/vectors/caa/L1: vectors contain NaN"):
        read_vector_groups(str(store), "m", "b", 64)
    assert store.read_bytes() == before


def test_scales_that_do_not_parse_are_refused():
    assert parse_scales("4, 2 8 2") == [2.0, 4.0, 8.0]
    for bad in ("2 x", "", "0 2", "-1", "nan"):
        with pytest.raises(UserError, match="SCALES must be positive numbers"):
            parse_scales(bad)


def test_unknown_split_is_refused():
    assert parse_splits("val test") == ["val", "test"]
    with pytest.raises(UserError, match=r"unknown split\(s\) \['dev'\]"):
        parse_splits("val dev")


def test_store_that_is_not_hdf5_is_refused_before_any_work(tmp_path):
    store = tmp_path / "store.h5"
    store.write_text("not a store")
    with pytest.raises(StoreError, match="is not an HDF5 file"):
        read_vector_groups(str(store), "m", "b", 64)
    assert read_vector_groups(str(tmp_path / "missing.h5"), "m", "b", 64) == []
