"""Markdown tables of the stored evals, with 95% bootstrap intervals over questions.

Per split and method: the vector chosen on validation, at every scale, next to the unsteered
baseline; the random control pools all its directions. Then the summary: per method the vector
and scale chosen on validation with its test numbers, and beside it, labelled, the best-on-test
setting (the optimistic selection that picks on the same questions it scores).
"""
import argparse

from engine.analysis import (
    MIN_MASS_SHARE,
    Row,
    choose_for_method,
    chosen_on,
    methods,
    read_split,
    row,
    scale_rows,
    splits_in_store,
)
from engine.errors import UserError
from engine.model import REPO_ROOT
from engine.store import open_for_reading, store_key
from runners import defaults
from runners.cli import main_guard

HEADER = "| Scale | Survival % | Avg logit diff | Δ from baseline | answer mass |\n|---|---|---|---|---|"


def table_row(r: Row, label: str | None = None) -> str:
    scale = label if label is not None else f"{r.scale:+g}"
    return (f"| {scale} | {r.survival.fmt()} | {r.mean_diff.fmt(2, True)} | "
            f"{r.delta.fmt(2, True)} | {r.mass.fmt(2)} |")


def method_tables(split, val) -> list[str]:
    out = []
    base = row(0.0, split.baseline, split.baseline_mass, split.baseline)
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
        out += [f"#### {title}", "", HEADER, table_row(base, "0 (baseline)")]
        out += [table_row(r) for r in rows] + [""]
    return out


def summary(val, test) -> list[str]:
    out = ["### Summary: chosen on validation, scored on test", "",
           "| Method | Vector | Scale | Survival % (test) | Δ (test) | answer mass (test) "
           "| best-on-test (optimistic): vector, scale, survival %, Δ |", "|---|---|---|---|---|---|---|"]
    base = row(0.0, test.baseline, test.baseline_mass, test.baseline)
    out.append(f"| baseline | – | 0 | {base.survival.fmt()} | – | {base.mass.fmt(2)} | – |")
    for method in methods(test):
        chosen = chosen_on(method, val, test)
        if chosen is None:
            out.append(f"| {method} | no setting keeps answer mass ≥ {MIN_MASS_SHARE:.0%} of baseline on val | | | | | |")
            continue
        on_test, vector, scale = chosen
        r = row(float(on_test.scales[scale]), on_test.logit_diff[vector, scale],
                on_test.mass[vector, scale], test.baseline)
        best = best_on_test(method, test)
        out.append(f"| {method} | {on_test.run} #{vector} | {r.scale:+g} | {r.survival.fmt()} | "
                   f"{r.delta.fmt(2, True)} | {r.mass.fmt(2)} | {best} |")
    return out + ["", f"Chosen: the largest mean logit difference on validation among settings whose "
                      f"answer mass stays ≥ {MIN_MASS_SHARE:.0%} of the baseline's. Intervals: 95% "
                      f"bootstrap over questions (Δ paired). n = {len(test.baseline)} test questions.", ""]


def best_on_test(method, test) -> str:
    best = choose_for_method(method, test)
    if best is None:
        return "–"
    group, vector, scale = best
    r = row(float(group.scales[scale]), group.logit_diff[vector, scale], group.mass[vector, scale],
            test.baseline)
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
    lines = [f"# Steering report: {key}", ""]
    for name, split in splits.items():
        lines += [f"## Split: {name} (n = {len(split.baseline)} questions)", ""]
        lines += method_tables(split, val)
    if "test" in splits:
        lines += summary(val, splits["test"])
    print("\n".join(lines))


if __name__ == "__main__":
    main_guard(run)
