"""The seed experiment's comparison on one model, decided (`make study`): the page.

`make study` computes every method's vectors, evaluates them on val (every scale), then evaluates
on test only the costs val chose, with a distribution of random directions at those costs; this
runner reads that store and writes docs/study-<model>-<date>.md with its figure (what the page
holds: steerlab/render/study.py).

With --test-scales it prints the positive scales val chose (what `make study` evaluates test at).
"""

from pathlib import Path

from steerlab.base.errors import UserError
from steerlab.cli.options import choice_parser, main_guard, parse_choice
from steerlab.measure.analysis import read_prompting, read_splits
from steerlab.measure.study import test_scales
from steerlab.render.study import study_page
from steerlab.store import store_key


def run() -> None:
    p = choice_parser(__doc__, reads="the model as the store names it (its path or id)")
    p.add_argument("--test-scales", action="store_true", help="print the scales val chose and exit")
    p.add_argument("--out", default="docs", help="folder of the page and its figure")
    p.add_argument("--command", default="make study", help="the command the page names")
    p.add_argument("--seconds", type=float, default=None, help="the study's wall time, for the page")
    args = parse_choice(p)
    key = store_key(args.model)
    if not Path(args.store).is_file():
        raise UserError(f"no store at {args.store}: run `make study` first")
    splits = read_splits(args.store, key, args.behavior)
    if "val" not in splits:
        raise UserError(f"no val eval of {args.behavior} for {key} in {args.store}")
    if args.test_scales:
        print(" ".join(f"{s:g}" for s in test_scales(splits["val"], args.kl_max, args.select_by)))
        return
    if "test" not in splits:
        raise UserError(f"no test eval of {args.behavior} for {key} in {args.store}")
    try:
        prompting = read_prompting(args.store, key, args.behavior, "test")
    except UserError:
        prompting = None  # the page says nothing of asking
    path, figure = study_page(args.store, splits["val"], splits["test"], model_key=key, kl_max=args.kl_max,
                              by=args.select_by, out=Path(args.out), command=args.command,
                              seconds=args.seconds, prompting=prompting)
    print(f"wrote {path} and {figure}")


if __name__ == "__main__":
    main_guard(run)
