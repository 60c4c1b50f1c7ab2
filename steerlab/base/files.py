"""Nothing half-written: every file or folder the lab writes appears whole or not at all.

What is written goes to a sibling path first (``<name>.partial``) and replaces the real one with
``os.replace`` only once the writing has finished and been flushed to disk; an exception, or a
SIGKILL, leaves the old file (or none) in place and at most a ``.partial`` the next writer
removes. The store, exported vectors, converted models and ingested data files all write so.

Also where the lab's folders are (``REPO_ROOT``: its data/, models/, results/).
"""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


def lab_root(environ=os.environ, package_parent: Path = Path(__file__).resolve().parents[2],
             cwd: Path | None = None) -> Path:
    """Where data/, models/ and results/ are: $STEERLAB_HOME if set; else the clone this package
    runs from (``pip install -e .`` or the make targets); else, for an installed copy
    (``pip install .``), the working directory, as a user runs it from their clone."""
    if environ.get("STEERLAB_HOME"):
        return Path(environ["STEERLAB_HOME"]).resolve()
    if (package_parent / "steerlab").is_dir() and (package_parent / "data").is_dir():
        return package_parent
    return (cwd or Path.cwd()).resolve()


REPO_ROOT = lab_root()


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def replaced_on_success(path: str | Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write (a file, or a folder); moved into place when the
    block completes, removed when it does not."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    _remove(partial)  # left by a writer that was killed: nobody ever read it
    try:
        yield partial
        if partial.is_file():
            with open(partial, "rb") as written:
                os.fsync(written.fileno())
        os.replace(partial, path)
    except BaseException:
        _remove(partial)
        raise


def write_atomically(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Run ``write`` on a temporary sibling of ``path``; move it into place only if it completes."""
    with replaced_on_success(path) as partial:
        write(partial)
    return Path(path)
