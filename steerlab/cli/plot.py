"""Figures from the store: PNGs into --out/<behavior>/, every number read from the store alone.

Vectors are chosen on validation by --select-by and shown on test: violins of per-question scores,
dose-response curves with 95% bootstrap bands, Δ against KL, each val choice against the random
draws at its cost, the PI / PI@CAA spectrum, the Jacobian along the CAA path, the CAA layer sweep
and the MELBO traces (steerlab/render/plots.py draws them). A figure whose data is not in the
store is skipped with a message.
"""
from pathlib import Path

from steerlab.cli import defaults
from steerlab.cli.options import choice_parser, main_guard, parse_choice
from steerlab.render.plots import load, make_all
from steerlab.store import store_key


def run() -> None:
    p = choice_parser(__doc__, reads="model whose results to plot")
    p.add_argument("--out", default=defaults.RESULTS,
                   help="folder for the PNG files; they go to its subfolder <behavior>/")
    p.add_argument("--scale", type=float, default=defaults.REPORT_SCALE,
                   help="scale of the violin and layer-sweep figures, in the evals' unit (a KL target, "
                        "a fraction of ‖h_S‖), else an L2 norm")
    args = parse_choice(p)
    data = load(args.store, store_key(args.model), args.behavior, args.kl_max, args.select_by)
    for path in make_all(data, Path(args.out) / args.behavior, args.scale):
        print(path)


if __name__ == "__main__":
    main_guard(run)
