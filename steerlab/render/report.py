"""The report: markdown tables of the stored evals (``make report``; steerlab/cli/report.py is its
command line), with 95% bootstrap intervals over questions.

Per split and method: the vector chosen on validation, at every scale, next to the unsteered
baseline; the random control pools all its directions. Then the summary: per method the vector
and scale chosen on validation with its test numbers, and beside it, labelled, the best-on-test
setting (the optimistic selection that picks on the same questions it scores).

Two scores, one table each. Letter: counterbalanced evals (every question as written and
mirrored) show the order-mean logit difference (the behaviour), the letter shift (half the
difference between the orders) and the consistency of the two orders; single-order evals say
that their numbers mix both. Cloze (each answer's text after the stem, no letters, nats per
token): the polarity-paired Δ (yes and no class means weigh the same, steerlab/questions/polarity.py),
the Δ within each class and the polarity shift ½(Δ_no − Δ_yes), which a pure Yes/No direction
moves and the balanced Δ does not. The val choice maximises --select-by (cloze by default); both
summaries show that one choice.
"""
from __future__ import annotations

import numpy as np

from steerlab.base.errors import UserError
from steerlab.measure.analysis import (
    LINEAR_KL,
    MIN_MASS_SHARE,
    Split,
    best_of_method,
    cloze_row_at,
    linear_regime,
    methods,
    row_at,
    scale_rows,
    select_by,
    standing_of,
    val_choice_in,
)
from steerlab.measure.scores import Score
from steerlab.measure.statistics import ClozeRow, Row, scale_text
from steerlab.questions.polarity import POLARITIES

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
    scale = label if label is not None else f"{r.scale_text}"
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


def cloze_header(split: Split) -> str:
    names = ["Scale", f"{split.positive_label} (cloze, balanced)", "preference (nats/token)",
             "Δ (balanced)", *[f"Δ {name}" for name in class_names(split)], "polarity shift"]
    if has_kl(split):
        names += ["KL (nats/token)", "top-1 kept"]
    return "| " + " | ".join(names) + " |\n|" + "---|" * len(names)


def class_names(split: Split) -> list[str]:
    """The polarity classes present in ``split``, with their question counts, as column names."""
    present = [name for name in POLARITIES if (split.polarity == name).any()]
    return [f"{name} (n={int((split.polarity == name).sum())})" for name in present]


def cloze_cells(r: ClozeRow) -> list[str]:
    return [*(r.by_class[name].fmt(3, True) for name in POLARITIES if name in r.by_class),
            r.polarity_shift.fmt(3, True) if r.polarity_shift is not None else "–"]


def cloze_table_row(r: ClozeRow, label: str | None = None, kl_columns: bool = False) -> str:
    scale = label if label is not None else f"{r.scale_text}"
    cells = [scale, r.positive.fmt(), r.level.fmt(3, True), r.delta.fmt(3, True), *cloze_cells(r)]
    if kl_columns:
        cells += ([r.kl.fmt(3), r.top1.fmt(2)] if r.kl is not None else ["0", "1"])
    return "| " + " | ".join(cells) + " |"


def cloze_note(split: Split) -> list[str]:
    base, levels = split.cloze_baseline_row(), split.cloze_levels()
    by_class = ", ".join(f"{name} {level.fmt(3, True)}" for name, level in levels.items() if name != "shift")
    lines = [f"**Cloze** (each answer's text after the question, no choices, no letters; nats per "
             f"token): unsteered, the {split.behavior} answer's text is preferred by "
             f"{base.level.fmt(3, True)} polarity-paired (by polarity class: {by_class})."]
    if "shift" in levels:
        lines.append(f"The model's own polarity shift, half its no-class minus its yes-class preference, "
                     f"is {levels['shift'].fmt(3, True)}. A Yes/No direction moves the two classes in "
                     "opposite directions: read the balanced Δ, and the polarity-shift column for how "
                     "much of a change is Yes/No.")
    return lines + [""]


def method_tables(split: Split, val: Split, kl_max: float | None, by: Score) -> list[str]:
    out = orders_note(split) if split.has_letter else []
    out += cloze_note(split) if split.has_cloze else []
    kl_columns = has_kl(split)
    for method in methods(split):
        chosen = val_choice_in(method, val, split, kl_max, by)
        if chosen is None:
            continue
        group, vector, _ = chosen
        pooled = method == "random"
        if pooled:
            title = f"random control ({group.settings_shape[0]} directions pooled, {group.run})"
        else:
            title = f"{group.label}, vector {vector} (chosen on val by {by})"
        which = None if pooled else vector
        if split.has_letter:
            out += [f"#### {title}: letter", "", header(split),
                    table_row(split.baseline_row(), "0 (baseline)", kl_columns)]
            out += [table_row(r, kl_columns=kl_columns) for r in scale_rows(group, which, split)] + [""]
        if split.has_cloze:
            out += [f"#### {title}: cloze", "", cloze_header(split),
                    cloze_table_row(split.cloze_baseline_row(), "0 (baseline)", kl_columns)]
            out += [cloze_table_row(cloze_row_at(group, which, s, split), kl_columns=kl_columns)
                    for s in range(len(group.scales))] + [""]
    return out


def scales_note(val: Split) -> list[str]:
    """What the scales mean (units of ‖h_S‖, or absolute norms, labelled for older stores), and a
    warning for each method whose every setting stayed in the linear regime."""
    units = {group.scale_unit for group in val.groups.values()}
    if units == {"kl"}:
        example = next(iter(val.groups.values()))
        missed = sum(int((g.reached == 0).sum()) for g in val.groups.values() if g.reached is not None)
        lines = ["Scales are costs (SCALE_UNIT=kl): each direction and sign is added at the |θ| whose mean "
                 "KL(unsteered ‖ steered) on the val neutral texts is the scale in nats per token, found "
                 "by a search and shown beside it: "
                 f"{scale_text(float(example.scales[-1]), None, example.norm(0, -1))}. Every method and the "
                 "random control are compared at the same cost."
                 + (f" {missed} setting(s) missed their target by more than the search's 10% (out of reach "
                    "below 4 ‖h_S‖, or out of rounds): each sits at the probe nearest its target; read "
                    "its KL column." if missed else "")]
    elif units == {"resid"}:
        norms = sorted({(g.source_layer, float(g.attrs["unit_norm"])) for g in val.groups.values()})
        at = ", ".join(f"{norm:.1f} at layer {layer}" for layer, norm in norms)
        example = next(iter(val.groups.values()))
        lines = [f"Scales are fractions of the median ‖h_S‖ over the train prompts ({at}), each with the "
                 f"L2 norm of θ it was: {scale_text(float(example.scales[-1]), example.fraction(-1))}."]
    elif units <= {"abs"}:
        lines = ["Scales are absolute L2 norms of θ (SCALE_UNIT=abs)."]
    else:
        lines = ["Scales are absolute L2 norms of θ: this store's evals were written before scales had a "
                 "unit (SCALE_UNIT; `make eval` now writes KL targets and the |θ| each took)."]
    for method in methods(val) if units != {"kl"} else []:  # in kl the grid is the cost asked for
        groups = [g for g in val.groups.values() if g.method == method]
        if method != "random" and groups and all(linear_regime(g) for g in groups):
            largest = max(float(np.abs(g.scales).max()) for g in groups)
            norm = next((float(g.attrs["unit_norm"]) for g in groups
                         if np.isfinite(g.attrs.get("unit_norm", np.nan))), None)
            hint = (f"; in units of ‖h_S‖ = {norm:.1f} the grid reaches {largest / norm:.2g}: scales of "
                    f"0.1–0.5 (L2 norms {0.1 * norm:.0f}–{0.5 * norm:.0f}) move a model" if norm else
                    "; SCALE_UNIT=resid scales by the model's own ‖h_S‖")
            lines.append(f"**{method}: every setting costs less than {LINEAR_KL:g} nats/token of KL**: "
                         f"the grid (up to |θ| = {largest:.3g}) never left the linear regime{hint}.")
    return lines + [""]


def choices(val: Split, test: Split, kl_max: float | None, by: Score) -> dict[str, tuple | None]:
    """Per method: its setting chosen on val by ``by``, looked up on test."""
    return {method: val_choice_in(method, val, test, kl_max, by) for method in methods(test)}


def no_choice_row(method: str, test: Split, kl_max: float | None, n_columns: int) -> str:
    """A summary row for a method val chose nothing for, saying which rule none passed."""
    return f"| {method} | no setting with {rule_text(test, kl_max)} on val |" + " |" * (n_columns - 2)


def rule_text(test: Split, kl_max: float | None) -> str:
    kl = has_kl(test) and kl_max is not None
    mass = f"answer mass ≥ {MIN_MASS_SHARE:.0%} of baseline" if test.has_letter else ""
    parts = [part for part in (mass, f"KL ≤ {kl_max:g}" if kl else "") if part]
    return " and ".join(parts) or "every setting"


def summary(val: Split, test: Split, kl_max: float | None, by: Score) -> list[str]:
    picked = choices(val, test, kl_max, by)
    score = {"cloze": "the polarity-paired cloze preference", "letter": "the order-mean logit difference"}[by]
    out = [f"### Summary: chosen on validation by {score}, scored on test", ""]
    if test.has_cloze:
        out += cloze_summary(test, picked, kl_max, by)
    if test.has_letter:
        out += letter_summary(test, picked, kl_max, by)
    out += [f"Chosen: the largest {score} on validation among settings with {rule_text(test, kl_max)}. "
            f"Intervals: 95% bootstrap over questions (Δ paired; cloze: resampled within each polarity "
            f"class). n = {test.n_questions} test questions.", ""]
    if has_kl(test) and kl_max is not None:
        out += without_kl_rule(val, test, kl_max, by)
    return out


def cloze_summary(test: Split, picked: dict, kl_max: float | None, by: Score) -> list[str]:
    kl = has_kl(test)
    names = ["Method", "Vector", "Scale", "Δ cloze, polarity-paired (test)", RANDOM_COLUMN,
             *[f"Δ {name}" for name in class_names(test)], "polarity shift"]
    names += (["KL (test)"] if kl else []) + ["best-on-test (optimistic): vector, scale, Δ"]
    out = ["#### Cloze (answer texts, no letters; nats per token)", "",
           "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    base = test.cloze_baseline_row()
    out.append("| " + " | ".join(["baseline", "–", "0", f"{base.level.fmt(3, True)} (level)", "–",
                                  *["–"] * (len(names) - 6 - kl), *(["0"] if kl else []), "–"]) + " |")
    for method, chosen in picked.items():
        if chosen is None:
            out.append(no_choice_row(method, test, kl_max, len(names)))
            continue
        group, vector, s = chosen
        r = cloze_row_at(group, vector, s, test)
        random_cell = "–" if method == "random" else against_random_cell(group, vector, s, test, "cloze")
        out.append("| " + " | ".join([method, f"{group.run} #{vector}", f"{r.scale_text}",
                                      r.delta.fmt(3, True), random_cell, *cloze_cells(r),
                                      *([r.kl.fmt(3)] if kl else []),
                                      best_on_test(method, test, kl_max, "cloze")]) + " |")
    out += ["", "Δ polarity-paired: the yes and no classes' mean Δ weigh the same (so that a pure Yes/No "
                "direction cancels) and the pair and the other class weigh what their questions can carry "
                "(steerlab/questions/polarity.py); polarity shift: ½(Δ no − Δ yes), what such a "
                "direction moves. "
                + RANDOM_NOTE + (" KL: mean per-token KL(unsteered ‖ steered) "
                "in nats over the unsteered model's greedy continuation of neutral prompts." if kl else ""),
            ""]
    return out


RANDOM_COLUMN = "Δ − random, same cost [paired CI]; random draws beaten"
RANDOM_NOTE = ("Δ − random: against the random directions of the same source layer at the same scale, "
               "each in both signs (every one a draw of the distribution), paired over questions with "
               "the draws resampled too; then the share of the draws whose Δ this setting's exceeds.")


def against_random_cell(group, vector: int, s: int, test: Split, score: Score) -> str:
    st = standing_of(group, vector, s, test, score)
    if st is None:
        return "no random directions at this scale"
    return (f"{st.beyond.fmt(3 if score == 'cloze' else 2, True)}; "
            f"{100 * st.share_beaten:.0f}% of {len(st.draws)}")


def letter_summary(test: Split, picked: dict, kl_max: float | None, by: Score) -> list[str]:
    both, kl = test.counterbalanced, has_kl(test)
    names = ["Method", "Vector", "Scale", f"{test.positive_label} (test)", "Δ (test)", RANDOM_COLUMN]
    names += ["letter shift (test)", "consistency % (test)"] if both else []
    names += ["answer mass (test)"] + (["KL (test)"] if kl else [])
    names.append("best-on-test (optimistic): vector, scale, %, Δ")
    out = ["#### Letter (A/B logit difference)" + (", chosen by the cloze score" if by == "cloze" else ""),
           "", "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]

    def cells(r: Row) -> list[str]:
        extra = [r.letter_shift.fmt(2, True), r.consistency.fmt()] if both else []
        return [r.positive.fmt(), r.delta.fmt(2, True), *extra, r.mass.fmt(2),
                *([r.kl.fmt(3) if r.kl is not None else "0"] if kl else [])]

    base = cells(test.baseline_row())
    base[1] = "–"
    out.append("| " + " | ".join(["baseline", "–", "0", *base[:2], "–", *base[2:], "–"]) + " |")
    for method, chosen in picked.items():
        if chosen is None:
            out.append(no_choice_row(method, test, kl_max, len(names)))
            continue
        on_test, vector, scale = chosen
        r = row_at(on_test, vector, scale, test)
        vs_random = "–" if method == "random" else against_random_cell(on_test, vector, scale, test, "letter")
        c = cells(r)
        out.append("| " + " | ".join([method, f"{on_test.run} #{vector}", f"{r.scale_text}", *c[:2],
                                      vs_random, *c[2:],
                                      best_on_test(method, test, kl_max, "letter")]) + " |")
    orders = ("Both answer orders: Δ is the order-mean (behaviour); letter shift is half the "
              "difference as written − mirrored." if both else
              f"Single order ({test.orders}): numbers mix behaviour and letter preference.")
    return out + ["", orders, ""]


def without_kl_rule(val: Split, test: Split, kl_max: float, by: Score) -> list[str]:
    """What each method would report without the KL rule, to show what the rule costs or saves."""
    out = ["Without the KL rule (" + ("answer mass only" if test.has_letter else "every setting")
           + "), validation would choose:", ""]
    for method in methods(test):
        chosen = val_choice_in(method, val, test, None, by)
        if chosen is None:
            continue
        on_test, vector, scale = chosen
        delta = (cloze_row_at(on_test, vector, scale, test).delta.fmt(3, True) if by == "cloze"
                 else row_at(on_test, vector, scale, test).delta.fmt(2, True))
        kl = (cloze_row_at(on_test, vector, scale, test).kl if test.has_cloze
              else row_at(on_test, vector, scale, test).kl)
        with_rule = val_choice_in(method, val, test, kl_max, by)
        same = with_rule is not None and with_rule[0] is on_test and with_rule[1:] == chosen[1:]
        where = scale_text(float(on_test.scales[scale]), on_test.fraction(scale),
                           on_test.calibrated_norm(vector, scale))
        out.append(f"- {method}: {on_test.run} #{vector} at {where}: Δ ({by}) {delta}, "
                   f"KL {kl.fmt(3)} (test)" + (" (the same setting)" if same else ""))
    return out + [""]


def best_on_test(method: str, test: Split, kl_max: float | None, by: Score) -> str:
    best = best_of_method(method, test, kl_max, by)
    if best is None:
        return "–"
    group, vector, scale = best
    if by == "cloze":
        r = cloze_row_at(group, vector, scale, test)
        return f"{group.run} #{vector}, {r.scale_text}, {r.delta.value:+.3f}"
    r = row_at(group, vector, scale, test)
    return f"{group.run} #{vector}, {r.scale_text}, {r.positive.value:.1f}%, {r.delta.value:+.2f}"


def report(splits: dict[str, Split], model_key: str, kl_max: float | None, by: Score) -> str:
    """The whole report of ``splits`` (read by ``steerlab.measure.analysis.read_splits``; val is
    needed, to choose on), each method's setting chosen on val by the score ``by`` (the other
    score where the store lacks it, with a note)."""
    val = splits.get("val")
    if val is None:
        raise UserError("the report chooses vectors on the validation split: "
                        "run `make eval SPLITS=\"val test\"`")
    chosen_by = select_by(val, by)
    lines = [f"# Steering report: {model_key}, {val.behavior}", ""]
    if chosen_by != by:
        lines += [f"(This store has no {by} scores, so every choice below is by the {chosen_by} "
                  f"score; `make eval SCORE=both` adds them.)", ""]
    lines += scales_note(val)
    for name, split in splits.items():
        lines += [f"## Split: {name} (n = {split.n_questions} questions)", ""]
        lines += method_tables(split, val, kl_max, chosen_by)
    if "test" in splits:
        lines += summary(val, splits["test"], kl_max, chosen_by)
    return "\n".join(lines)
