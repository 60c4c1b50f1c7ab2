"""Markdown tables of the stored evals, with 95% bootstrap intervals over questions.

Per split and method: the vector chosen on validation, at every scale, next to the unsteered
baseline; the random control pools all its directions. Then the summary: per method the vector
and scale chosen on validation with its test numbers, and beside it, labelled, the best-on-test
setting (the optimistic selection that picks on the same questions it scores).

Counterbalanced evals (every question as written and mirrored) show the order-mean logit
difference (the behaviour), the letter shift (half the difference between the orders) and the
consistency of the two orders; single-order evals say that their numbers mix both.
"""
import argparse

from engine.analysis import (
    MIN_MASS_SHARE,
    Row,
    Split,
    choose_for_method,
    chosen_on,
    methods,
    read_split,
    row_at,
    scale_rows,
    splits_in_store,
)
from engine.errors import UserError
from engine.model import REPO_ROOT
from engine.store import open_for_reading, store_key
from runners import defaults
from runners.cli import main_guard

# Where the baseline's orders agree on fewer questions than this (the upper end of its interval),
# its preferences are no better than a coin toss across orders.
CHANCE_CONSISTENCY = 60.0


def header(split: Split) -> str:
    if split.counterbalanced:
        return (f"| Scale | {split.positive_label} | Avg logit diff (order mean) | Δ from baseline | "
                "letter shift | consistency % | correlation | answer mass |\n"
                "|---|---|---|---|---|---|---|---|")
    return (f"| Scale | {split.positive_label} | Avg logit diff | Δ from baseline | answer mass |\n"
            "|---|---|---|---|---|")


def table_row(r: Row, label: str | None = None) -> str:
    scale = label if label is not None else f"{r.scale:+g}"
    cells = [scale, r.survival.fmt(), r.mean_diff.fmt(2, True), r.delta.fmt(2, True)]
    if r.letter_shift is not None:
        cells += [r.letter_shift.fmt(2, True), r.consistency.fmt(), r.correlation.fmt(2, True)]
    return "| " + " | ".join(cells + [r.mass.fmt(2)]) + " |"


def orders_note(split: Split) -> list[str]:
    if not split.counterbalanced:
        return [f"**Single order ({split.orders}).** Every question was asked in one answer order "
                "only, so these logit differences mix the behaviour with a preference for a letter "
                "(an ablation, or a store written before schema 2; `make eval` asks both).", ""]
    base = split.baseline_row()
    lines = [f"Unsteered, the two orders prefer the same answer on {base.consistency.fmt()}% of "
             f"questions; their logit differences correlate at {base.correlation.fmt(2, True)} "
             f"across questions; the letter shift is {base.letter_shift.fmt(2, True)}."]
    if base.consistency.high < CHANCE_CONSISTENCY or base.correlation.low <= 0:
        lines.append(f"**This model shows no order-stable preference on {split.behavior}:** its "
                     "logit differences as written mostly measure which letter it likes. Read the "
                     "order-mean columns, and expect little from any vector.")
    return lines + [""]


def method_tables(split: Split, val: Split) -> list[str]:
    out = orders_note(split)
    base = split.baseline_row()
    for method in methods(split):
        chosen = chosen_on(method, val, split)
        if chosen is None:
            continue
        group, vector, _ = chosen
        if method == "random":
            title = f"random control ({group.logit_diff.shape[0]} directions pooled, {group.run})"
            rows = scale_rows(group, None, split)
        else:
            title = f"{group.label}, vector {vector} (chosen on val)"
            rows = scale_rows(group, vector, split)
        out += [f"#### {title}", "", header(split), table_row(base, "0 (baseline)")]
        out += [table_row(r) for r in rows] + [""]
    return out


def summary(val: Split, test: Split) -> list[str]:
    both = test.counterbalanced
    extra_head = " letter shift (test) | consistency % (test) |" if both else ""
    out = ["### Summary: chosen on validation, scored on test", "",
           f"| Method | Vector | Scale | {test.positive_label} (test) | Δ (test) |{extra_head} "
           "answer mass (test) | best-on-test (optimistic): vector, scale, %, Δ |",
           "|" + "---|" * (9 if both else 7)]
    base = test.baseline_row()
    base_extra = f" {base.letter_shift.fmt(2, True)} | {base.consistency.fmt()} |" if both else ""
    out.append(f"| baseline | – | 0 | {base.survival.fmt()} | – |{base_extra} {base.mass.fmt(2)} | – |")
    for method in methods(test):
        chosen = chosen_on(method, val, test)
        if chosen is None:
            out.append(f"| {method} | no setting keeps answer mass ≥ {MIN_MASS_SHARE:.0%} of baseline on val |"
                       + " |" * (7 if both else 5))
            continue
        on_test, vector, scale = chosen
        r = row_at(on_test, vector, scale, test)
        extra = f" {r.letter_shift.fmt(2, True)} | {r.consistency.fmt()} |" if both else ""
        out.append(f"| {method} | {on_test.run} #{vector} | {r.scale:+g} | {r.survival.fmt()} | "
                   f"{r.delta.fmt(2, True)} |{extra} {r.mass.fmt(2)} | {best_on_test(method, test)} |")
    orders = ("Both answer orders: Δ is the order-mean (behaviour); letter shift is half the "
              "difference as written − mirrored. " if both else
              f"Single order ({test.orders}): numbers mix behaviour and letter preference. ")
    return out + ["", f"Chosen: the largest mean logit difference on validation among settings whose "
                      f"answer mass stays ≥ {MIN_MASS_SHARE:.0%} of the baseline's. {orders}Intervals: "
                      f"95% bootstrap over questions (Δ paired). n = {len(test.baseline)} test questions.", ""]


def best_on_test(method: str, test: Split) -> str:
    best = choose_for_method(method, test)
    if best is None:
        return "–"
    group, vector, scale = best
    r = row_at(group, vector, scale, test)
    return f"{group.run} #{vector}, {r.scale:+g}, {r.survival.value:.1f}%, {r.delta.value:+.2f}"


def run() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--store", default=defaults.STORE, help="the HDF5 store to read")
    p.add_argument("--model", default=str(REPO_ROOT / defaults.MODEL), help="model whose evals to report")
    args = p.parse_args()
    key = store_key(args.model)
    with open_for_reading(args.store) as h5:
        names = splits_in_store(h5, key)
        if not names:
            raise UserError(f"no evals for {key} in {args.store}: run `make eval` first")
        splits = {name: read_split(h5, key, name) for name in names}
    val = splits.get("val")
    if val is None:
        raise UserError("the report chooses vectors on the validation split: run `make eval SPLITS=\"val test\"`")
    lines = [f"# Steering report: {key}, {val.behavior}", ""]
    for name, split in splits.items():
        lines += [f"## Split: {name} (n = {len(split.baseline)} questions)", ""]
        lines += method_tables(split, val)
    if "test" in splits:
        lines += summary(val, splits["test"])
    print("\n".join(lines))


if __name__ == "__main__":
    main_guard(run)
