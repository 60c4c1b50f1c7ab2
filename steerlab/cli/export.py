"""Write steering vectors as files other tools load: .pt, .safetensors, a llama.cpp GGUF
control vector and an lm-evaluation-harness `steered` file (steerlab/interop/export.py says what each holds).

Without --vector: for every method, the vector and scale chosen on validation (as `make report`
chooses them). With --vector METHOD/RUN/INDEX: that stored vector, at --scale (the L2 norm of what
is added, signed) or, without --scale, raw. Files go to --out as
<model>-<behavior>-<method>-<run>-<index>.*.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from steerlab.base.errors import UserError
from steerlab.base.progress import say
from steerlab.cli import defaults
from steerlab.cli.options import add_scale_unit, choice_parser, main_guard, parse_choice
from steerlab.interop.export import exported_choice, gguf_direction_index, write_all
from steerlab.measure.choice import named_choices, stored_val_choices
from steerlab.store import store_key


def run() -> None:
    p = choice_parser(__doc__, reads="model whose vectors to export")
    p.add_argument("--out", default=str(Path(defaults.RESULTS) / "export"), help="folder for the files")
    p.add_argument("--vector", default=None, metavar="METHOD/RUN/INDEX",
                   help="export this stored vector instead of the ones chosen on val")
    p.add_argument("--scale", type=float, default=None,
                   help="with --vector: signed size of what is added, in --scale-unit (a fraction of "
                        "‖h_S‖, or an L2 norm; default: the raw vector)")
    add_scale_unit(p)
    args = parse_choice(p)
    if args.scale is not None and args.vector is None:
        raise UserError("SCALE needs VECTOR=method/run/index (the val choice brings its own scale)")
    if args.scale is not None and not np.isfinite(args.scale):
        raise UserError(f"SCALE must be a finite number, got {args.scale}")
    key = store_key(args.model)
    if args.vector is not None:
        picks = named_choices(args.store, key, args.behavior, args.vector, [args.scale], args.scale_unit)
    else:
        picks, notes = stored_val_choices(args.store, key, args.behavior, args.kl_max,
                                     by=args.select_by)
        for note in notes:
            say(note)
    vectors = [exported_choice(args.store, args.model, args.behavior, pick) for pick in picks]
    for vector in vectors:  # refuse what llama.cpp cannot load before writing anything
        gguf_direction_index(vector.source_layer)
    for vector in vectors:
        stem = f"{key}-{args.behavior}-{vector.method}-{vector.run}-{vector.index}"
        scale = "raw" if vector.scale is None else f"{vector.scale:+g}"
        for path in write_all(args.out, stem, vector):
            print(path)
        say(f"{vector.method} {vector.run} #{vector.index} at scale {scale}, layer "
            f"{vector.source_layer}: {stem}.pt/.safetensors/.gguf/.lm-eval.pt (GGUF direction."
            f"{gguf_direction_index(vector.source_layer)})")


if __name__ == "__main__":
    main_guard(run)
