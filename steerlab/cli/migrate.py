"""Bring a store written by an older schema to the current layout (steerlab/store.py): vectors,
evals and generations of schema 1 and 2 move under /<model>/<behavior>/. The move is one atomic
write; nothing is recomputed."""
import argparse
from pathlib import Path

import h5py

from steerlab.base.progress import say
from steerlab.cli import defaults
from steerlab.cli.options import main_guard
from steerlab.store import migrate, writing


def run() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--store", default=defaults.STORE, help="the HDF5 store to migrate")
    args = p.parse_args()
    if not Path(args.store).exists():
        say(f"{args.store} does not exist: nothing to migrate")
        return
    with h5py.File(args.store, "r") as h5:
        moved = migrate(h5, dry_run=True)
    with writing(args.store):  # every write brings the store to the current layout
        pass
    for line in moved:
        say(f"moved {line}")
    say(f"{args.store}: {len(moved)} group(s) moved" if moved else f"{args.store} is current")


if __name__ == "__main__":
    main_guard(run)
