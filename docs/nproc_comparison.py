"""One process against several: every compute target with NPROC=1 and NPROC=N into two stores,
wall time of each, and the largest absolute difference of every float dataset the target wrote.

    .venv/bin/python docs/nproc_comparison.py [N] [make variables ...]

e.g. `docs/nproc_comparison.py 2` on the default model (the README's table), or
`docs/nproc_comparison.py 2 MODEL=... N_EVAL=64`. Stores go to a temporary folder.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

TARGETS = ("caa", "pi", "pi_caa", "melbo", "eval", "generate")
# what each target writes: dataset paths containing one of these
WRITES = {"caa": "/vectors/caa/", "pi": "/vectors/pi/", "pi_caa": "/vectors/pi_caa/",
          "melbo": "/vectors/melbo/", "eval": "/evals/", "generate": "/generations/"}


def float_datasets(path: Path) -> dict[str, np.ndarray]:
    found = {}
    with h5py.File(path, "r") as h5:
        def keep(name, node):
            if isinstance(node, h5py.Dataset) and node.dtype.kind == "f" and not name.endswith("seconds"):
                found["/" + name] = node[()]
        h5.visititems(keep)
    return found


def main(nproc: int, variables: list[str]) -> None:
    folder = Path(tempfile.mkdtemp(prefix="nproc-"))
    seconds: dict[tuple[str, int], float] = {}
    for n in (1, nproc):
        for target in TARGETS:
            start = time.perf_counter()
            subprocess.run(["make", "-s", target, f"NPROC={n}", f"STORE={folder / f'store-{n}.h5'}",
                            f"RESULTS={folder / f'results-{n}'}", *variables], check=True)
            seconds[target, n] = time.perf_counter() - start
    one, many = float_datasets(folder / "store-1.h5"), float_datasets(folder / f"store-{nproc}.h5")
    print(f"| target | NPROC=1 | NPROC={nproc} | largest abs. difference "
          "| relative to that dataset's largest value | in |")
    print("|---|---|---|---|---|---|")
    for target in TARGETS:
        names = [name for name in one if WRITES[target] in name]
        diffs = {name: float(np.abs(one[name] - many[name]).max()) if one[name].size else 0.0
                 for name in names}
        worst = max(diffs, key=diffs.get)
        scale = float(np.abs(one[worst]).max()) or 1.0
        print(f"| {target} | {seconds[target, 1]:.1f} s | {seconds[target, nproc]:.1f} s | "
              f"{diffs[worst]:.2g} | {diffs[worst] / scale:.2g} | "
              f"`{worst.rsplit('/', 2)[-2]}/{worst.rsplit('/', 1)[-1]}` |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2, sys.argv[2:])
