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
from runners.cli import add_behavior, check_kl_max, main_guard, no_evals, resolve_behavior

# Where the baseline's orders agree on fewer questions than this (the upper end of its interval),
# its preferences are no better than a coin toss across orders.
CHANCE_CONSISTENCY = 60.0


def has_kl(split: Split) -> bool:
    return any(group.kl is not None for group in split.groups.values())


def header(split: Split) -> str:
    names = ["Scale", split.positive_label]
    if split.counterbalanced:
        names += ["Avg logit diff (order mean)", "Δ from baseline", "letter shift", "consistency %",
                  "correlation"]
    else:
        names += ["Avg logit diff", "Δ from baseline"]
    names.append("answer mass")
    if has_kl(split):
        names += ["KL (nats/token)", "top-1 kept"]
    return "| " + " | ".join(names) + " |\n|" + "---|" * len(names)


def table_row(r: Row, label: str | None = None, kl_columns: bool = False) -> str:
    scale = label if label is not None else f"{r.scale:+g}"
    cells = [scale, r.positive.fmt(), r.mean_diff.fmt(2, True), r.delta.fmt(2, True)]
    if r.letter_shift is not None:
        cells += [r.letter_shift.fmt(2, True), r.consistency.fmt(), r.correlation.fmt(2, True)]
    cells.append(r.mass.fmt(2))
    if kl_columns:
        cells += ([r.kl.fmt(3), r.top1.fmt(2)] if r.kl is not None else ["0", "1"])
    return "| " + " | ".join(cells) + " |"


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


def method_tables(split: Split, val: Split, kl_max: float | None) -> list[str]:
    out = orders_note(split)
    base = split.baseline_row()
    kl_columns = has_kl(split)
    for method in methods(split):
        chosen = chosen_on(method, val, split, kl_max)
        if chosen is None:
            continue
        group, vector, _ = chosen
        if method == "random":
            title = f"random control ({group.logit_diff.shape[0]} directions pooled, {group.run})"
            rows = scale_rows(group, None, split)
        else:
            title = f"{group.label}, vector {vector} (chosen on val)"
            rows = scale_rows(group, vector, split)
        out += [f"#### {title}", "", header(split), table_row(base, "0 (baseline)", kl_columns)]
        out += [table_row(r, kl_columns=kl_columns) for r in rows] + [""]
    return out


def summary(val: Split, test: Split, kl_max: float | None) -> list[str]:
    both, kl = test.counterbalanced, has_kl(test)
    names = ["Method", "Vector", "Scale", f"{test.positive_label} (test)", "Δ (test)"]
    names += ["letter shift (test)", "consistency % (test)"] if both else []
    names += ["answer mass (test)"] + (["KL (test)"] if kl else [])
    names.append("best-on-test (optimistic): vector, scale, %, Δ")
    out = ["### Summary: chosen on validation, scored on test", "",
           "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]

    def cells(r: Row) -> list[str]:
        extra = [r.letter_shift.fmt(2, True), r.consistency.fmt()] if both else []
        return [r.positive.fmt(), r.delta.fmt(2, True), *extra, r.mass.fmt(2),
                *([r.kl.fmt(3) if r.kl is not None else "0"] if kl else [])]

    base = cells(test.baseline_row())
    base[1] = "–"
    out.append("| " + " | ".join(["baseline", "–", "0", *base, "–"]) + " |")
    rule = f"answer mass ≥ {MIN_MASS_SHARE:.0%} of baseline" + (f" and KL ≤ {kl_max:g}" if kl and kl_max is not None else "")
    for method in methods(test):
        chosen = chosen_on(method, val, test, kl_max)
        if chosen is None:
            out.append(f"| {method} | no setting with {rule} on val |" + " |" * (len(names) - 2))
            continue
        on_test, vector, scale = chosen
        r = row_at(on_test, vector, scale, test)
        out.append("| " + " | ".join([method, f"{on_test.run} #{vector}", f"{r.scale:+g}", *cells(r),
                                      best_on_test(method, test, kl_max)]) + " |")
    orders = ("Both answer orders: Δ is the order-mean (behaviour); letter shift is half the "
              "difference as written − mirrored. " if both else
              f"Single order ({test.orders}): numbers mix behaviour and letter preference. ")
    cost = (" KL: mean per-token KL(unsteered ‖ steered) in nats over the unsteered model's greedy "
            "continuation of neutral prompts." if kl else "")
    out += ["", f"Chosen: the largest mean logit difference on validation among settings with {rule}. "
                f"{orders}Intervals: 95% bootstrap over questions (Δ paired). n = {len(test.baseline)} "
                f"test questions.{cost}", ""]
    if kl and kl_max is not None:
        out += without_kl_rule(val, test, kl_max)
    return out


def without_kl_rule(val: Split, test: Split, kl_max: float) -> list[str]:
    """What each method would report without the KL rule, to show what the rule costs or saves."""
    out = ["Without the KL rule (answer mass only), validation would choose:", ""]
    for method in methods(test):
        chosen = chosen_on(method, val, test)
        if chosen is None:
            continue
        on_test, vector, scale = chosen
        r = row_at(on_test, vector, scale, test)
        with_rule = chosen_on(method, val, test, kl_max)
        same = with_rule is not None and with_rule[0] is on_test and with_rule[1:] == chosen[1:]
        out.append(f"- {method}: {on_test.run} #{vector} at {r.scale:+g}: Δ {r.delta.fmt(2, True)}, "
                   f"KL {r.kl.fmt(3)} (test)" + (" (the same setting)" if same else ""))
    return out + [""]


def best_on_test(method: str, test: Split, kl_max: float | None = None) -> str:
    best = choose_for_method(method, test, kl_max)
    if best is None:
        return "–"
    group, vector, scale = best
    r = row_at(group, vector, scale, test)
    return f"{group.run} #{vector}, {r.scale:+g}, {r.positive.value:.1f}%, {r.delta.value:+.2f}"


def run() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--store", default=defaults.STORE, help="the HDF5 store to read")
    p.add_argument("--model", default=str(REPO_ROOT / defaults.MODEL), help="model whose evals to report")
    p.add_argument("--kl-max", type=float, default=defaults.KL_MAX,
                   help="choose only among settings whose mean KL on neutral text is at most this")
    add_behavior(p, data=False)
    args = p.parse_args()
    resolve_behavior(args)
    check_kl_max(args.kl_max)
    key = store_key(args.model)
    with open_for_reading(args.store) as h5:
        names = splits_in_store(h5, key, args.behavior)
        if not names:
            raise UserError(no_evals(h5, key, args.behavior, args.store))
        splits = {name: read_split(h5, key, args.behavior, name) for name in names}
    val = splits.get("val")
    if val is None:
        raise UserError("the report chooses vectors on the validation split: run `make eval SPLITS=\"val test\"`")
    lines = [f"# Steering report: {key}, {val.behavior}", ""]
    for name, split in splits.items():
        lines += [f"## Split: {name} (n = {len(split.baseline)} questions)", ""]
        lines += method_tables(split, val, args.kl_max)
    if "test" in splits:
        lines += summary(val, splits["test"], args.kl_max)
    print("\n".join(lines))


if __name__ == "__main__":
    main_guard(run)
