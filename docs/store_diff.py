"""Compare two stores written by the same experiment: every group and dataset present in both,
numbers equal to a tolerance (fp32 by default), strings and settings exactly; provenance that
differs between any two runs is left out: times and durations (attributes and the generations'
``seconds``), the commit, code hashes (``src-…``, also inside settings strings), and the folder
each store's checkout lives in (each store's parent folder, in paths inside settings).

    .venv/bin/python docs/store_diff.py A.h5 B.h5 [--rtol 1e-5] [--atol 1e-6]

Prints the largest differences and exits 1 if anything differs beyond the tolerance.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import h5py
import numpy as np

PROVENANCE = {"started", "seconds", "git_commit", "code_version", "created", "updated"}
TIMING_DATASETS = {"seconds"}
HASH = re.compile(r"src-[0-9a-f]{12}")
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00")


def normalised(value, root: str):
    """A string attribute with its checkout folder, code hashes and times replaced."""
    if isinstance(value, bytes):
        value = value.decode()
    if not isinstance(value, str):
        return value
    return TIME.sub("<time>", HASH.sub("src-<hash>", value.replace(root + "/", "<checkout>/")))


def walk(h5: h5py.File) -> dict[str, h5py.Dataset | h5py.Group]:
    nodes = {"/": h5}
    h5.visititems(lambda name, node: nodes.__setitem__("/" + name, node))
    return nodes


def attrs_of(node) -> dict:
    return {k: v for k, v in node.attrs.items() if k not in PROVENANCE}


def same(a, b, rtol: float, atol: float) -> tuple[bool, float]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False, float("inf")
    if a.dtype.kind in "fc" or b.dtype.kind in "fc":
        a, b = a.astype(np.float64), b.astype(np.float64)
        both_nan = np.isnan(a) & np.isnan(b)
        gap = np.where(both_nan, 0.0, np.abs(a - b))
        ok = bool(np.all(both_nan | np.isclose(a, b, rtol=rtol, atol=atol)))
        return ok, float(gap.max()) if gap.size else 0.0
    return bool(np.array_equal(a, b)), 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-6)
    args = p.parse_args()
    root_a, root_b = (str(Path(x).resolve().parent) for x in (args.a, args.b))
    with h5py.File(args.a, "r") as fa, h5py.File(args.b, "r") as fb:
        na, nb = walk(fa), walk(fb)
        problems, largest, datasets = [], [], 0
        for path in sorted(set(na) ^ set(nb)):
            problems.append(f"only in {'A' if path in na else 'B'}: {path}")
        for path in sorted(set(na) & set(nb)):
            a, b = na[path], nb[path]
            for key in sorted(set(attrs_of(a)) | set(attrs_of(b))):
                if key not in a.attrs or key not in b.attrs:
                    problems.append(f"{path} attribute {key}: only in one")
                    continue
                ok, gap = same(normalised(a.attrs[key], root_a), normalised(b.attrs[key], root_b),
                               args.rtol, args.atol)
                if not ok:
                    problems.append(f"{path} attribute {key}: {a.attrs[key]!r} vs {b.attrs[key]!r}")
            if isinstance(a, h5py.Dataset) and path.rsplit("/", 1)[-1] not in TIMING_DATASETS:
                datasets += 1
                ok, gap = same(a[()], b[()], args.rtol, args.atol)
                largest.append((gap, path))
                if not ok:
                    problems.append(f"{path}: differs (max abs {gap:.3g})")
    largest.sort(reverse=True)
    print(f"{datasets} datasets in both; largest differences:")
    for gap, path in largest[:5]:
        print(f"  {gap:.3g}  {path}")
    for line in problems:
        print(line)
    print("same to the tolerance" if not problems else f"{len(problems)} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
