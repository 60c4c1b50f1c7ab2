"""Partial progress of one group, kept beside the store while the group is computed, so that a
killed run picks up where it stopped (docs/DESIGN.md, "The store").

A checkpoint is one ``.npz`` file in ``<store>.resume/``, named after the group it belongs to and a
fingerprint of what the group is computed from: its settings, the code version (which covers the
computing libraries' releases) and anything else the runner names. A rerun with the same
fingerprint continues from it; a checkpoint of the same group with another fingerprint (other
settings, code or releases) is removed with a message, never mixed in. It is rewritten whole after
each unit of work (atomically: a kill mid-save leaves the previous one) and removed once the group
is in the store; it never looks like a finished group, since nothing reads the store's groups
from it.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np

from steerlab.base.errors import StoreError
from steerlab.base.files import replaced_on_success
from steerlab.base.progress import say

SUFFIX = ".resume"


def resume_folder(store: str | Path) -> Path:
    """Where ``store``'s checkpoints live: a folder beside it."""
    return Path(str(store) + SUFFIX)


class Checkpoint:
    """The partial state of the group at ``group_path`` of ``store``, for one fingerprint."""

    def __init__(self, store: str | Path, group_path: str, fingerprint: dict):
        self.folder = resume_folder(store)
        self.name = re.sub(r"[^A-Za-z0-9_.-]+", "_", group_path.strip("/"))
        digest = hashlib.sha256(
            json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.path = self.folder / f"{self.name}@{digest}.npz"
        self.store, self.group_path = Path(store), group_path.strip("/")

    def load(self) -> dict[str, np.ndarray]:
        """The saved arrays (empty when there are none); checkpoints of this group saved under
        another fingerprint are removed first, each with a message."""
        if self.folder.is_dir():
            for other in sorted(self.folder.glob(f"{self.name}@*.npz")):
                if other != self.path:
                    say(f"discarding {other}: partial work on /{self.group_path} computed with other "
                        "settings, code or library releases")
                    other.unlink(missing_ok=True)
        if not self.path.is_file():
            return {}
        try:
            with np.load(self.path, allow_pickle=False) as saved:
                found = {key: saved[key] for key in saved.files}
        except (OSError, ValueError) as err:
            say(f"discarding {self.path}: it cannot be read ({err})")
            self.path.unlink(missing_ok=True)
            return {}
        say(f"resuming /{self.group_path} from {self.path} ({len(found)} saved arrays)")
        return found

    def save(self, arrays: dict[str, np.ndarray]) -> None:
        """Replace the checkpoint with ``arrays``, all or nothing; a disk without room for it is a
        StoreError that names the folder and the size needed (the previous checkpoint stays)."""
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        data = buffer.getvalue()
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            with replaced_on_success(self.path) as partial:
                partial.write_bytes(data)
        except OSError as err:
            raise StoreError(f"could not save partial work on /{self.group_path} into {self.folder}: "
                             f"{err.strerror or err} (it needs {len(data) / 1e6:.1f} MB there); "
                             "free space there or set STORE= to a folder with room. The last saved "
                             "checkpoint is kept") from err

    def discard(self) -> None:
        """Remove the checkpoint (its group is written), and the folder once it is empty."""
        self.path.unlink(missing_ok=True)
        if self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()
