"""The seed experiment's question, decided on one model (`make study`, steerlab/cli/study.py): each
vector group's setting chosen on val, scored on test against a distribution of random directions
at the same cost, ranked with paired intervals, and the seed's own table format beside its figures.

Everything here reads a store's val and test splits (``steerlab.measure.analysis.Split``) and returns plain
values; steerlab/render/study.py writes the page.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from steerlab.measure.analysis import (
    EvalGroup,
    Split,
    best_setting,
    cloze_row_at,
    deltas,
    nearest_scale,
    random_columns,
    random_group,
    row_at,
    select_by,
    standing_of,
)
from steerlab.measure.scales import ScaleUnit
from steerlab.measure.scores import SCORE_NAMES, Score
from steerlab.measure.statistics import ClozeRow, Row, Standing, Stat, difference, stat
from steerlab.store import linearised_point

# What each kind of vector group is called in the study's tables.
NAMES = {"caa": "CAA", "pi": "PI at 0", "pi_caa": "PI@CAA", "melbo": "MELBO"}

def entry_name(group: EvalGroup) -> str:
    """A group's name in the tables: the method, and for CAA where it was read."""
    name = NAMES.get(group.method, group.method)
    if group.method == "caa":
        return f"{name} ({'answer texts' if group.run.endswith('-answer') else 'letter'})"
    if group.method == "pi_caa":
        point = linearised_point(group.run)
        if point is None:
            return f"{name} (raw CAA)"
        scale, unit = point  # linearised along the CAA path
        where = {"kl": f"{scale} KL", "resid": f"{scale} ‖h_S‖"}.get(unit)
        return f"{name} (at CAA {where})" if where else f"{name} (at CAA, |θ₀| {scale})"
    return name


@dataclass
class Entry:
    """One vector group's val choice and its test numbers."""
    name: str
    label: str  # method/run
    vector: int
    scale: float  # the chosen signed scale (a KL target in kl)
    scale_unit: ScaleUnit  # kl, resid, abs ("" for evals stored before SCALE_UNIT: abs)
    norm: float  # the signed |θ| it was added at
    val_score: float  # what the choice maximised on val
    cloze: ClozeRow | None  # test
    letter: Row | None  # test
    standing: dict[str, Standing]  # score -> against the random draws at the same cost, test
    per_question: dict[str, np.ndarray]  # score -> [n_q] test Δ


def choices(val: Split, kl_max: float, by: Score) -> list[tuple[EvalGroup, int, int]]:
    """Every non-random group's (group, vector, scale index) chosen on val by ``by`` among the
    settings with KL ≤ ``kl_max`` (``steerlab.measure.analysis.best_setting``); groups with none are left out."""
    picked = []
    for group in val.groups.values():
        if group.method == "random":
            continue
        chosen = best_setting(group, val, kl_max, select_by(val, by))
        if chosen is not None:
            picked.append((group, *chosen))
    return picked


def test_scales(val: Split, kl_max: float, by: Score) -> list[float]:
    """The positive scales the val choices sit at: what test needs (random draws take both signs)."""
    return sorted({round(abs(float(g.scales[s])), 10) for g, _, s in choices(val, kl_max, by)})


def entries(val: Split, test: Split, kl_max: float, by: Score) -> list[Entry]:
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
        for score in SCORE_NAMES:
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


def ranking(found: list[Entry], score: Score, classes: np.ndarray | None) -> list[Rank]:
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
    score: Score
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
        for score in SCORE_NAMES:
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
