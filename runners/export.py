"""Write steering vectors as files other tools load: .pt, .safetensors and a llama.cpp GGUF
control vector (engine/export.py says what each holds).

Without --vector: for every method, the vector and scale chosen on validation (as `make report`
chooses them). With --vector METHOD/RUN/INDEX: that stored vector, at --scale (the L2 norm of what
is added, signed) or, without --scale, raw. Files go to --out as <model>-<method>-<run>-<index>.*.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from engine.analysis import choose_for_method, methods, read_split, splits_in_store
from engine.errors import UserError
from engine.export import ExportedVector, gguf_direction_index, write_all
from engine.model import REPO_ROOT
from engine.store import open_for_reading, read_vector_group, store_key
from runners import defaults
from runners.cli import check_kl_max, main_guard, say


def parse_vector(text: str) -> tuple[str, str, int]:
    method, _, rest = text.partition("/")
    run, _, index = rest.rpartition("/")
    if not method or not run or not index.isdigit():
        raise UserError(f"VECTOR must be METHOD/RUN/INDEX, e.g. caa/L7/0, got {text!r}")
    return method, run, int(index)


def chosen_on_val(store: str, key: str, kl_max: float | None) -> list[tuple[str, str, int, float, bool]]:
    """(method, run, vector index, signed scale, raw) chosen on validation for every method, as
    the report chooses (answer mass kept, mean KL on neutral text at most ``kl_max``)."""
    with open_for_reading(store) as h5:
        if "val" not in splits_in_store(h5, key):
            raise UserError(f"no validation eval of {key} in {store}: run `make eval` first, or "
                            "name a vector with VECTOR=method/run/index")
        val = read_split(h5, key, "val")
    picked = []
    for method in methods(val):
        if method == "random":
            continue
        chosen = choose_for_method(method, val, kl_max)
        if chosen is None:
            say(f"{method}: no setting keeps the answer mass up (and KL ≤ {kl_max}) on val; nothing chosen")
            continue
        group, vector, s = chosen
        picked.append((method, group.run, vector, float(group.scales[s]), bool(group.attrs.get("raw", 0))))
    return picked


def exported(store: str, model: str, method: str, run: str, index: int, scale: float | None,
             raw: bool) -> ExportedVector:
    key = store_key(model)
    group = read_vector_group(store, key, method, run)
    if not 0 <= index < len(group.vectors):
        raise UserError(f"{group.label} has vectors 0..{len(group.vectors) - 1}, not {index}")
    vector = group.vectors[index].astype(np.float64)
    if scale is not None:
        vector = scale * (vector if raw else vector / np.linalg.norm(vector))
    return ExportedVector(vector.astype(np.float32), group.source_layer, model, method, run, index,
                          None if raw else scale,
                          {**group.settings, "eval_scale": scale, "raw": raw})


def run() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--store", default=defaults.STORE, help="the HDF5 store to read")
    p.add_argument("--model", default=str(REPO_ROOT / defaults.MODEL), help="model whose vectors to export")
    p.add_argument("--out", default=str(Path(defaults.RESULTS) / "export"), help="folder for the files")
    p.add_argument("--vector", default=None, metavar="METHOD/RUN/INDEX",
                   help="export this stored vector instead of the ones chosen on val")
    p.add_argument("--scale", type=float, default=None,
                   help="with --vector: signed L2 norm of what is added (default: the raw vector)")
    p.add_argument("--kl-max", type=float, default=defaults.KL_MAX,
                   help="without --vector: choose as the report does, among settings with mean KL ≤ this")
    args = p.parse_args()
    check_kl_max(args.kl_max)
    if args.scale is not None and args.vector is None:
        raise UserError("SCALE needs VECTOR=method/run/index (the val choice brings its own scale)")
    if args.scale is not None and not np.isfinite(args.scale):
        raise UserError(f"SCALE must be a finite number, got {args.scale}")
    key = store_key(args.model)
    if args.vector is not None:
        picks = [(*parse_vector(args.vector), args.scale, False)]
    else:
        picks = chosen_on_val(args.store, key, args.kl_max)
    vectors = [exported(args.store, args.model, *pick) for pick in picks]
    for vector in vectors:  # refuse what llama.cpp cannot load before writing anything
        gguf_direction_index(vector.source_layer)
    for vector in vectors:
        stem = f"{key}-{vector.method}-{vector.run}-{vector.index}"
        scale = "raw" if vector.scale is None else f"{vector.scale:+g}"
        for path in write_all(args.out, stem, vector):
            print(path)
        say(f"{vector.method} {vector.run} #{vector.index} at scale {scale}, layer "
            f"{vector.source_layer}: {stem}.pt/.safetensors/.gguf (GGUF direction."
            f"{gguf_direction_index(vector.source_layer)})")


if __name__ == "__main__":
    main_guard(run)
