"""The seed experiment's question, decided on one model (`make study`, steerlab/cli/study.py): each
vector group's setting chosen on val, scored on test against a distribution of random directions
at the same cost, ranked with paired intervals, and the seed's own table format beside its figures.

Everything here reads a store's val and test splits (``steerlab.measure.analysis.Split``) and returns plain
values; the runner writes the page.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from steerlab.measure.analysis import (
    EvalGroup,
    Split,
    choose,
    cloze_row_at,
    deltas,
    nearest_scale,
    random_columns,
    random_group,
    row_at,
    select_by,
    standing_of,
)
from steerlab.measure.statistics import ClozeRow, Row, Standing, Stat, difference, stat

SCORES = ("cloze", "letter")

# What each kind of vector group is called in the study's tables.
NAMES = {"caa": "CAA", "pi": "PI at 0", "pi_caa": "PI@CAA", "melbo": "MELBO"}

# The seed experiment's figures (its log of 2026-01-27, as shared with this project): single
# order, picked on the questions they were scored on, scales as absolute L2 norms at layer 7.
# Keys: method -> scale -> (survival %, mean logit diff, Δ).
SEED_QWEN3_0_6B = {"CAA": {-10: (1.7, -5.19, -2.41), -5: (18.3, -3.31, -0.53), -2: (16.7, -3.06, -0.28),
                           0: (22.5, -2.78, 0.0), 2: (28.3, -2.31, 0.47), 5: (31.7, -1.84, 0.94),
                           7: (19.2, -2.52, 0.26), 10: (0.8, -5.75, -2.97)}}
SEED_QWEN3_14B = {"CAA": {5: (29.0, -3.08, 0.25), 10: (30.5, -2.88, 0.46), 15: (36.0, -2.37, 0.96),
                          20: (44.0, -1.78, 1.55)},
                  "PI@CAA (mean of its vectors)": {5: (35.2, -2.54, 0.79), 10: (41.8, -1.77, 1.57),
                                                   15: (41.9, -1.93, 1.40), 20: (35.0, -2.45, 0.88)}}


def entry_name(group: EvalGroup) -> str:
    """A group's name in the tables: the method, and for CAA where it was read."""
    name = NAMES.get(group.method, group.method)
    if group.method == "caa":
        return f"{name} ({'answer texts' if group.run.endswith('-answer') else 'letter'})"
    if group.method == "pi_caa" and "-at" in group.run:
        return f"{name} ({group.run.split('-at', 1)[1]})"
    return name


@dataclass
class Entry:
    """One vector group's val choice and its test numbers."""
    name: str
    label: str  # method/run
    vector: int
    scale: float  # the chosen signed scale (a KL target in kl)
    scale_unit: str  # kl, resid, abs ("" for evals stored before SCALE_UNIT: abs)
    norm: float  # the signed |θ| it was added at
    val_score: float  # what the choice maximised on val
    cloze: ClozeRow | None  # test
    letter: Row | None  # test
    standing: dict[str, Standing]  # score -> against the random draws at the same cost, test
    per_question: dict[str, np.ndarray]  # score -> [n_q] test Δ


def choices(val: Split, kl_max: float, by: str) -> list[tuple[EvalGroup, int, int]]:
    """Every non-random group's (group, vector, scale index) chosen on val by ``by`` among the
    settings with KL ≤ ``kl_max`` (``steerlab.measure.analysis.choose``); groups with none are left out."""
    picked = []
    for group in val.groups.values():
        if group.method == "random":
            continue
        chosen = choose(group, val, kl_max, select_by(val, by))
        if chosen is not None:
            picked.append((group, *chosen))
    return picked


def test_scales(val: Split, kl_max: float, by: str) -> list[float]:
    """The positive scales the val choices sit at: what test needs (random draws take both signs)."""
    return sorted({round(abs(float(g.scales[s])), 10) for g, _, s in choices(val, kl_max, by)})


def entries(val: Split, test: Split, kl_max: float, by: str) -> list[Entry]:
    """The val choice of every group, scored on test against the random draws at its cost."""
    out = []
    for group, vector, s in choices(val, kl_max, by):
        there = test.groups.get(group.label)
        if there is None:
            continue
        scale = float(group.scales[s])
        t = nearest_scale(there, scale)
        if not np.isclose(there.scales[t], scale, rtol=1e-4):
            continue  # test was not scored at this scale
        standing, per_question = {}, {}
        for score in SCORES:
            has = test.has_cloze if score == "cloze" else test.has_letter
            if not has:
                continue
            per_question[score] = deltas(there, vector, t, test, score)
            found = standing_of(there, vector, t, test, score)
            if found is not None:
                standing[score] = found
        val_score = (cloze_row_at if select_by(val, by) == "cloze" else row_at)(group, vector, s, val).delta.value
        out.append(Entry(entry_name(group), group.label, vector, scale, group.scale_unit, there.norm(vector, t), val_score,
                         cloze_row_at(there, vector, t, test) if test.has_cloze else None,
                         row_at(there, vector, t, test) if test.has_letter else None, standing, per_question))
    return out


@dataclass
class Rank:
    entry: Entry
    standing: Standing
    gap_to_next: Stat | None  # this entry's Δ − the next one's, paired; None for the last


def ranking(found: list[Entry], score: str, classes: np.ndarray | None) -> list[Rank]:
    """Entries with a standing in ``score``, by Δ − random (largest first), each with its paired
    difference to the next: a rank is decided where that interval excludes 0."""
    ranked = sorted((e for e in found if score in e.standing), key=lambda e: -e.standing[score].beyond.value)
    out = []
    for i, e in enumerate(ranked):
        gap = None
        if i + 1 < len(ranked):
            gap = difference(e.per_question[score], ranked[i + 1].per_question[score], classes)
        out.append(Rank(e, e.standing[score], gap))
    return out


@dataclass
class Spread:
    """The random distribution at one cost in one score: its draws' Δ."""
    scale: float
    score: str
    draws: np.ndarray  # [n_draws] headline Δ of each draw
    kl: Stat | None

    @property
    def summary(self) -> tuple[float, float, float, float]:
        """(mean, sd, min, max) of the draws' Δ."""
        d = self.draws
        return float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else 0.0, float(d.min()), float(d.max())


def spreads(test: Split, found: list[Entry]) -> list[Spread]:
    """The random distribution at every cost a choice sits at, per score."""
    out = []
    for scale in sorted({abs(e.scale) for e in found}):
        for score in SCORES:
            entry = next((e for e in found if abs(e.scale) == scale and score in e.standing), None)
            if entry is None:
                continue
            group = random_group(test, test.groups[entry.label].source_layer)
            columns = random_columns(group, scale)
            kl = stat(np.concatenate([group.kl[:, c] for c in columns])) if group.kl is not None else None
            out.append(Spread(scale, score, entry.standing[score].draws, kl))
    return out


@dataclass
class SeedCell:
    survival: Stat
    logit_diff: Stat
    delta: Stat
    kl: Stat | None
    norm: float


def seed_table(split: Split) -> dict[str, dict[float, SeedCell]]:
    """The seed's table format on ``split``: per group (its first vector) and signed scale, the
    survival % (order mean > 0), mean order-mean logit difference and Δ, with KL and |θ|."""
    table = {}
    for group in split.groups.values():
        if group.method == "random" or group.logit_diff is None:
            continue
        cells = {}
        for s, scale in enumerate(group.scales):
            r = row_at(group, 0, s, split)
            cells[float(scale)] = SeedCell(r.positive, r.mean_diff, r.delta, r.kl, group.norm(0, s))
        table[entry_name(group)] = cells
    return table


# ---- the page -------------------------------------------------------------------------------------

def _fmt(s: Stat | None, digits: int = 3, signed: bool = True) -> str:
    return "–" if s is None else s.fmt(digits, signed)


def ranking_table(ranks: list[Rank], score: str) -> list[str]:
    unit = "nats/token, polarity-paired" if score == "cloze" else "order-mean logit diff"
    confound = "polarity shift" if score == "cloze" else "letter shift (steered)"
    lines = [f"| rank | method | chosen on val | Δ ({unit}) | random mean Δ | Δ − random [95% CI] "
             f"| beats random draws | {confound} | KL (test) | rank vs next |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(ranks, 1):
        e, st = r.entry, r.standing
        row_ = e.cloze if score == "cloze" else e.letter
        shift = row_.polarity_shift if score == "cloze" else row_.letter_shift
        if r.gap_to_next is None:
            verdict = "–"
        elif r.gap_to_next.low > 0:
            verdict = f"above ({r.gap_to_next.fmt(3, True)})"
        else:
            verdict = f"not decided ({r.gap_to_next.fmt(3, True)})"
        beyond = st.beyond.fmt(3, True) + (" **beyond**" if st.beyond.low > 0 else
                                           " below" if st.beyond.high < 0 else "")
        lines.append(f"| {i} | {e.name} | {e.scale:+.3g} KL (\\|θ\\| {abs(e.norm):.2f}) | {st.delta.fmt(3, True)} "
                     f"| {st.random_mean.value:+.3f} | {beyond} | {100 * st.share_beaten:.0f}% of {len(st.draws)} "
                     f"| {_fmt(shift)} | {_fmt(row_.kl, 3, False)} | {verdict} |")
    return lines


def spread_table(found: list[Spread]) -> list[str]:
    lines = ["| cost | score | draws | mean Δ | sd | min | max | KL of the draws (test) |",
             "|---|---|---|---|---|---|---|---|"]
    for sp in found:
        mean, sd, low, high = sp.summary
        lines.append(f"| {sp.scale:.3g} KL | {sp.score} | {len(sp.draws)} | {mean:+.3f} | {sd:.3f} | {low:+.3f} "
                     f"| {high:+.3f} | {_fmt(sp.kl, 3, False)} |")
    return lines


def seed_format(table: dict[str, dict[float, SeedCell]], split: Split) -> list[str]:
    base = split.baseline_row()
    lines = [f"Unsteered: {split.positive_label} {base.positive.fmt(1)}, mean logit diff "
             f"{base.mean_diff.fmt(2, True)} ({split.n_questions} {split.name} questions, both orders).", "",
             f"| method | scale (KL target) | \\|θ\\| | {split.positive_label} | mean logit diff | Δ | KL |",
             "|---|---|---|---|---|---|---|"]
    for name, cells in table.items():
        for scale, c in sorted(cells.items()):
            lines.append(f"| {name} | {scale:+.3g} | {abs(c.norm):.2f} | {c.survival.fmt(1)} | "
                         f"{c.logit_diff.fmt(2, True)} | {c.delta.fmt(2, True)} | {_fmt(c.kl, 3, False)} |")
    return lines


def seed_reference() -> list[str]:
    lines = ["| model | method | scale (L2 norm) | survival % | mean logit diff | Δ |", "|---|---|---|---|---|---|"]
    for model, table in (("Qwen3-0.6B", SEED_QWEN3_0_6B), ("Qwen3-14B", SEED_QWEN3_14B)):
        for method, cells in table.items():
            for scale, (survival, diff, delta) in cells.items():
                lines.append(f"| {model} | {method} | {scale:+d} | {survival:.1f} | {diff:+.2f} | {delta:+.2f} |")
    return lines
