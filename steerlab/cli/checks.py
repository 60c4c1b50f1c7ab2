"""What the round-trip checks share (check_gguf, check_lm_eval): which stored vector they export,
at which size. Apart from options.py, so that the code hash of every computing runner does not
cover the export and the val choice these import."""
from __future__ import annotations

import argparse

from steerlab.base.errors import UserError
from steerlab.cli import defaults
from steerlab.cli.options import add_scale_unit, unit_norms
from steerlab.interop.export import exported_choice
from steerlab.lm.model import LoadedModel
from steerlab.measure.choice import named_choices
from steerlab.store import caa_run


def add_check_vector(p: argparse.ArgumentParser, what: str) -> None:
    """The options of a check that exports one stored vector and reads it back in another program
    (check_gguf, check_lm_eval): which vector, at which size."""
    p.add_argument("--layer", type=int, default=int(defaults.LAYER), help="source layer S of the CAA vector")
    p.add_argument("--vector", default=None, metavar="METHOD/RUN/INDEX",
                   help="the stored vector to export (default: caa/L<layer>-answer/0)")
    p.add_argument("--scale", type=float, default=float(defaults.CHECK_SCALE),
                   help=f"signed size of the exported vector, in --scale-unit (a size, not a cost: the "
                        f"check compares {what} at one θ)")
    add_scale_unit(p, ("resid", "abs"), "resid")


def check_vector(args: argparse.Namespace, lm: LoadedModel):
    """(its name, the choice, the ``ExportedVector``) of a check's --vector at --scale, refused
    unless it is a vector of --layer."""

    name = args.vector or f"caa/{caa_run(args.layer, position='answer')}/0"
    unit_norms(args, lm, [args.layer])
    choice, = named_choices(args.store, lm.key, args.behavior, name, [args.scale], args.scale_unit)
    exported = exported_choice(args.store, args.model, args.behavior, choice)
    if exported.source_layer != args.layer:
        raise UserError(f"{name} is a layer-{exported.source_layer} vector, not layer {args.layer}")
    return name, choice, exported
