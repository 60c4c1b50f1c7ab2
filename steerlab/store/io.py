"""Locked, all-or-nothing access to the store file, and the migration of older layouts.

A write works on a copy of the store and replaces the original with ``os.replace`` only after the
copy is complete and flushed, so an exception or a SIGKILL mid-write leaves the previous store
intact. A lock file (``flock``) keeps a second writer out."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from steerlab.base.errors import StoreError
from steerlab.base.files import replaced_on_success
from steerlab.store.layout import PER_BEHAVIOR, SCHEMA_VERSION
from steerlab.store.provenance import now, settings_json


def _open(path: Path, mode: str, shown: Path | None = None) -> h5py.File:
    """h5py.File, with a store that HDF5 cannot read (a copy cut short, a disk that filled up
    outside the lab's all-or-nothing writes) named as damaged, with what to do."""
    try:
        return h5py.File(path, mode)
    except OSError as err:
        store = shown or path
        raise StoreError(
            f"{store} is damaged: HDF5 cannot read it ({err}). The lab's own writes are all-or-nothing, "
            f"so it was cut short or changed elsewhere. Restore your last good copy, or move it aside "
            f"(mv {store} {store}.damaged) and rerun the targets: every group is recomputed from the "
            "data and the model") from err


def open_for_reading(path: str | Path) -> h5py.File:
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path} does not exist: run `make caa` (or another method) first")
    if not h5py.is_hdf5(path):
        raise StoreError(f"{path} is not an HDF5 file: move it away or point STORE= elsewhere")
    h5 = _open(path, "r")
    if _unmigrated(h5):
        schema = int(h5.attrs.get("schema_version", 1))
        h5.close()
        raise StoreError(f"{path} was written by schema {schema}, before each behaviour had its "
                         f"own group: `make migrate STORE={path}` moves its groups (any target "
                         "that writes the store does it too)")
    return h5


def _unmigrated(h5: h5py.File) -> list[h5py.Group]:
    """Model groups still in the schema-1/2 layout (per-behaviour groups right under them)."""
    if int(h5.attrs.get("schema_version", 1)) >= 3:
        return []
    return [node for node in h5.values()
            if isinstance(node, h5py.Group) and any(name in node for name in PER_BEHAVIOR)]


def migrate(h5: h5py.File, dry_run: bool = False) -> list[str]:
    """Move a schema-1/2 model's vectors, evals and generations under its behaviour (with
    ``dry_run``, only say what would move). The behaviour is the one its eval splits recorded,
    else the stem of the data file its vectors were computed from, else survival-instinct (the
    only data set then)."""
    moved = []
    for model in _unmigrated(h5):
        target = f"{model.name}/{_old_behavior(model)}"
        for name in PER_BEHAVIOR:
            if name in model:
                if not dry_run:
                    h5.move(f"{model.name}/{name}", f"{target}/{name}")
                moved.append(f"{model.name}/{name} -> {target}/{name}")
    return moved


def _old_behavior(model: h5py.Group) -> str:
    for split in model.get("evals", {}).values():
        if "behavior" in split.attrs:
            return str(split.attrs["behavior"])
    for runs in model.get("vectors", {}).values():
        for node in runs.values():
            data = json.loads(node.attrs.get("settings", "{}")).get("data")
            if data:
                return Path(data).stem
    return "survival-instinct"


@contextmanager
def _lock(path: Path, wait_seconds: float) -> Iterator[None]:
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a+") as handle:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    raise StoreError(
                        f"{path} is being written by {holder}; wait for it to finish "
                        f"(waited {wait_seconds:.0f}s; STORE_WAIT=<seconds> waits longer)"
                    ) from None
                time.sleep(0.2)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {now()}")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def writing(path: str | Path, wait_seconds: float | None = None) -> Iterator[h5py.File]:
    """An h5py file to write into; the store is replaced by it only if the block completes."""
    path = Path(path)
    if wait_seconds is None:
        wait_seconds = float(os.environ.get("STORE_WAIT", "60"))
    if path.exists() and not h5py.is_hdf5(path):
        raise StoreError(f"{path} is not an HDF5 file: move it away or point STORE= elsewhere")
    with _lock(path, wait_seconds):
        try:
            with replaced_on_success(path) as partial:
                if path.exists():
                    shutil.copyfile(path, partial)
                with _open(partial, "a", path) as h5:
                    migrate(h5)
                    h5.attrs["schema_version"] = SCHEMA_VERSION
                    h5.attrs.setdefault("created", now())
                    h5.attrs["updated"] = now()
                    yield h5
        except (OSError, RuntimeError) as err:
            if not _out_of_space(err):
                raise
            size = path.stat().st_size if path.exists() else 0
            free = shutil.disk_usage(path.parent).free
            raise StoreError(
                f"could not write {path}: no room on its disk ({_reason(err)}). An update writes a whole "
                f"copy of the store ({size / 1e6:.1f} MB) beside it plus the new results, and "
                f"{free / 1e6:.0f} MB are free in {path.parent}: free at least "
                f"{max(size, 1) / 1e6:.1f} MB more there, or point STORE= at a disk with room. "
                "The store is as it was before this run") from err


# errno values of a write that found no room: no space, a file too large, a quota reached
_NO_ROOM = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def _out_of_space(err: BaseException) -> bool:
    """Whether ``err`` (an OSError, or the RuntimeError h5py raises when closing a file it could not
    extend) says the disk or the file size limit ran out."""
    if isinstance(err, OSError) and err.errno in _NO_ROOM:
        return True
    return any(f"errno = {code}," in str(err) for code in _NO_ROOM) or "No space left" in str(err)


def _reason(err: BaseException) -> str:
    return (err.strerror if isinstance(err, OSError) and err.strerror
            else str(err).split("error message = ")[-1].strip(" ')"))


def is_current(path: str | Path, group_path: str, settings: dict, version: str) -> bool:
    """True when ``group_path`` exists with the same settings and code version (skip the work)."""
    path = Path(path)
    if not path.exists() or not h5py.is_hdf5(path):
        return False
    with _open(path, "r") as h5:
        if group_path not in h5:
            return False
        attrs = h5[group_path].attrs
        return (attrs.get("settings") == settings_json(settings)
                and attrs.get("code_version") == version)


def replace_group(parent: h5py.Group, name: str, datasets: dict[str, np.ndarray],
                  attrs: dict) -> h5py.Group:
    """Write ``parent/name`` afresh: the datasets, then the attributes (non-scalars as JSON)."""
    if name in parent:
        del parent[name]
    group = parent.create_group(name)
    for key, value in datasets.items():
        value = np.asarray(value)
        if value.dtype.kind == "U":
            value = value.astype(h5py.string_dtype())
        group.create_dataset(key, data=value)
    for key, value in attrs.items():
        group.attrs[key] = value if isinstance(value, (str, int, float, np.number)) else json.dumps(value)
    return group
