"""The seed experiment's comparison on one model, decided (`make study`): the page.

`make study` computes every method's vectors, evaluates them on val (every scale), then evaluates
on test only the costs val chose, with a distribution of random directions at those costs; this
runner reads that store and writes docs/study-<model>-<date>.md with its figure:

- a ranking table per score (cloze, the choice's score, and letter): each group's setting chosen on
  val, its test Δ, the random draws' mean Δ, Δ − random with a paired 95% interval (questions and
  draws resampled), the share of random draws it beats, its confound and KL, and whether its rank
  above the next is decided (the paired interval of their difference excludes 0);
- the random distribution's spread at each cost;
- the seed's own table format (method × scale: survival %, mean logit diff, Δ) on val, where every
  scale was scored, beside the seed's Qwen3 figures.

With --test-scales it prints the positive scales val chose (what `make study` evaluates test at).
"""
import argparse
import datetime
import os
import platform
from pathlib import Path

from steerlab.base.errors import UserError
from steerlab.base.files import write_atomically
from steerlab.cli import defaults
from steerlab.cli.options import add_behavior, add_select_by, check_kl_max, main_guard
from steerlab.measure.analysis import read_split, splits_in_store
from steerlab.measure.study import (
    SCORES,
    entries,
    ranking,
    ranking_table,
    seed_format,
    seed_reference,
    seed_table,
    spread_table,
    spreads,
    test_scales,
)
from steerlab.render.figures import random_distribution_figure
from steerlab.store import open_for_reading, store_key


def run() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="the study's store")
    p.add_argument("--model", required=True, help="the model as the store names it (its path or id)")
    add_behavior(p, data=False)
    p.add_argument("--kl-max", type=float, default=float(defaults.KL_MAX),
                   help="the val choice considers settings with mean KL ≤ this (nats/token)")
    add_select_by(p)
    p.add_argument("--test-scales", action="store_true", help="print the scales val chose and exit")
    p.add_argument("--out", default="docs", help="folder of the page and its figure")
    p.add_argument("--command", default="make study", help="the command the page names")
    p.add_argument("--seconds", type=float, default=None, help="the study's wall time, for the page")
    args = p.parse_args()
    check_kl_max(args.kl_max)
    key = store_key(args.model)
    if not Path(args.store).is_file():
        raise UserError(f"no store at {args.store}: run `make study` first")
    with open_for_reading(args.store) as h5:
        present = splits_in_store(h5, key, args.behavior)
        if "val" not in present:
            raise UserError(f"no val eval of {args.behavior} for {key} in {args.store}")
        val = read_split(h5, key, args.behavior, "val")
        test = read_split(h5, key, args.behavior, "test") if "test" in present else None
    if args.test_scales:
        print(" ".join(f"{s:g}" for s in test_scales(val, args.kl_max, args.select_by)))
        return
    if test is None:
        raise UserError(f"no test eval of {args.behavior} for {key} in {args.store}")
    found = entries(val, test, args.kl_max, args.select_by)
    date = datetime.date.today().isoformat()
    name = f"study-{key.replace('/', '_')}-{date}"
    out = Path(args.out)
    figure = random_distribution_figure(found, out, f"{name}.png",
                                        f"{key}, {args.behavior}: test Δ against random directions at the same cost")
    lines = [f"# The seed experiment's question on {key} ({date})", "",
             f"Command: `{args.command}`. Machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores"
             + (f"; wall time {args.seconds / 60:.0f} min" if args.seconds else "") + ".",
             f"Behaviour {args.behavior}; val {val.n_questions} questions (the choice, by {args.select_by}, "
             f"KL ≤ {args.kl_max}), test {test.n_questions} questions (what is reported).", ""]
    for score in SCORES:
        ranks = ranking(found, score, test.polarity if score == "cloze" else None)
        if not ranks:
            continue
        lines += [f"## Ranking by the {score} score (test)", ""] + ranking_table(ranks, score) + [""]
    lines += ["## The random distribution at each chosen cost (test)", ""] + spread_table(spreads(test, found))
    lines += ["", "## The seed's table format (val: every scale; both orders)", ""]
    lines += seed_format(seed_table(val), val)
    lines += ["", "The seed's figures (single order, chosen on the questions they were scored on, "
              "scales as L2 norms at layer 7 of Qwen3):", ""] + seed_reference()
    lines += ["", "## Figure", "", f"![test Δ against random]({figure.name})", ""]
    path = write_atomically(out / f"{name}.md", lambda p_: p_.write_text("\n".join(lines)))
    print(f"wrote {path} and {figure}")


if __name__ == "__main__":
    main_guard(run)
