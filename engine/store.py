"""The HDF5 store: one file, all-or-nothing writes, one writer at a time.

Layout (design section 5)::

    /                                       attrs: schema_version, created, updated
    /<model>/                               attrs: source, n_layers, d_model, dtype
    /<model>/vectors/<method>/<run>/        vectors [k, d] f32, sigmas, trace, ... ; attrs: settings
    /<model>/evals/<split>/                 question_ids, baseline logit diffs
    /<model>/evals/<split>/<method>/<run>/  logit_diff [k, n_scales, n_q], scales, ...

A write works on a copy of the store and replaces the original with ``os.replace`` only after the
copy is complete and flushed, so an exception or a SIGKILL mid-write leaves the previous store
intact. A lock file (``flock``) keeps a second writer out.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

SCHEMA_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parent.parent


class StoreError(RuntimeError):
    pass


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def code_version() -> str:
    """Hash of the engine and runner sources: a group computed by other code is recomputed, a
    group computed by the same code is skipped (a commit that changes no source keeps them)."""
    digest = hashlib.sha256()
    for folder in ("engine", "runners"):
        for path in sorted((REPO_ROOT / folder).glob("*.py")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return "src-" + digest.hexdigest()[:12]


def git_commit() -> str:
    """The checkout's commit, recorded for provenance ("" outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def file_checksum(path: str | Path) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def settings_json(settings: dict) -> str:
    return json.dumps(settings, sort_keys=True, default=str)


def open_for_reading(path: str | Path) -> h5py.File:
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path} does not exist: run `make caa` (or another method) first")
    if not h5py.is_hdf5(path):
        raise StoreError(f"{path} is not an HDF5 file: move it away or point STORE= elsewhere")
    return h5py.File(path, "r")


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
        tmp = path.with_name(path.name + ".partial")
        if path.exists():
            shutil.copyfile(path, tmp)
        elif tmp.exists():
            tmp.unlink()  # left by a killed writer; the store never saw it
        try:
            with h5py.File(tmp, "a") as h5:
                h5.attrs.setdefault("schema_version", SCHEMA_VERSION)
                h5.attrs.setdefault("created", now())
                h5.attrs["updated"] = now()
                yield h5
            with open(tmp, "rb") as flushed:
                os.fsync(flushed.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def model_group(h5: h5py.File, lm) -> h5py.Group:
    group = h5.require_group(lm.key)
    group.attrs.update(source=str(lm.source), n_layers=lm.n_layers, d_model=lm.d_model,
                       dtype=lm.dtype)
    return group


def is_current(path: str | Path, group_path: str, settings: dict) -> bool:
    """True when ``group_path`` exists with the same settings and code version (skip the work)."""
    path = Path(path)
    if not path.exists() or not h5py.is_hdf5(path):
        return False
    with h5py.File(path, "r") as h5:
        if group_path not in h5:
            return False
        attrs = h5[group_path].attrs
        return (attrs.get("settings") == settings_json(settings)
                and attrs.get("code_version") == code_version())


def replace_group(parent: h5py.Group, name: str, datasets: dict[str, np.ndarray],
                  attrs: dict) -> h5py.Group:
    """Write ``parent/name`` afresh: the datasets, then the attributes (settings as JSON)."""
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


def run_attrs(settings: dict, started: str, seconds: float, **extra) -> dict:
    """The attributes every computed group carries."""
    return {"settings": settings_json(settings), "code_version": code_version(),
            "git_commit": git_commit(), "started": started, "seconds": round(seconds, 3), **extra}
