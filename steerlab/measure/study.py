"""The seed experiment's question, decided on one model (`make study`, steerlab/cli/study.py): each
vector group's setting chosen on val, scored on test against a distribution of random directions
at the same cost, ranked with paired intervals, and the seed's own table format beside its figures.

Everything here reads a store's val and test splits (``steerlab.measure.analysis.Split``) and returns plain
values; steerlab/render/study.py writes the page.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from steerlab.lm.fisher import FisherSpectrum
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
from steerlab.measure.floor import Null, NullStanding, Validation, first_order_null, stand, validation
from steerlab.measure.scales import ScaleUnit
from steerlab.measure.scores import SCORE_NAMES, Score
from steerlab.measure.statistics import (
    ClozeRow,
    Row,
    Standing,
    Stat,
    difference,
    holm,
    paired_p_value,
    ratio,
    stat,
)
from steerlab.store import linearised_point, read_fisher, read_gradients

# What each kind of vector group is called in the study's tables.
NAMES = {"caa": "CAA", "pi": "PI at 0", "pi_caa": "PI@CAA", "melbo": "MELBO", "ceiling": "Ceiling"}

def entry_name(group: EvalGroup) -> str:
    """A group's name in the tables: the method, and for CAA where it was read."""
    name = NAMES.get(group.method, group.method)
    if group.method == "caa":
        return f"{name} ({'answer texts' if group.run.endswith('-answer') else 'letter'})"
    if group.method == "ceiling":
        return f"{name} (fit on {group.run.rpartition('-')[2]})"
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
    null: dict[str, NullStanding] = field(default_factory=dict)  # score -> against the first-order null
    efficiency: dict[str, Stat] = field(default_factory=dict)  # score -> Δ / the ceiling's Δ, same cost
    beyond: dict[str, tuple[float, bool]] = field(default_factory=dict)  # score -> (Holm-adjusted p, holds)

    @property
    def method(self) -> str:
        return self.label.split("/")[0]

    def anti_steerable(self, score: str) -> float:
        """Share of the test questions this setting moves the wrong way (Δ_q < 0), in %."""
        return 100.0 * float((self.per_question[score] < 0).mean())


def choices(val: Split, kl_max: float, by: Score) -> list[tuple[EvalGroup, int, int]]:
    """Every non-random group's (group, vector, scale index) chosen on val by ``by`` among the
    settings with KL ≤ ``kl_max`` (``steerlab.measure.analysis.best_setting``); groups with none are
    left out."""
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
        val_score = (cloze_row_at if select_by(val, by) == "cloze"
                     else row_at)(group, vector, s, val).delta.value
        out.append(Entry(entry_name(group), group.label, vector, scale, group.scale_unit,
                         there.norm(vector, t), val_score,
                         cloze_row_at(there, vector, t, test) if test.has_cloze else None,
                         row_at(there, vector, t, test) if test.has_letter else None, standing, per_question))
    return out


@dataclass
class Rank:
    entry: Entry
    standing: Standing
    gap_to_next: Stat | None  # this entry's Δ − the next one's, paired; None for the last
    gap_p: float | None = None  # the bootstrap p-value of that gap
    gap_holds: tuple[float, bool] | None = None  # (Holm-adjusted p, holds) over the page's claims


def ranking(found: list[Entry], score: Score, classes: np.ndarray | None) -> list[Rank]:
    """Entries with a standing in ``score``, by their Δ (largest first), each with its paired
    difference to the next and that difference's p-value (``decide`` corrects them)."""
    ranked = sorted((e for e in found if score in e.standing), key=lambda e: -e.standing[score].delta.value)
    out = []
    for i, e in enumerate(ranked):
        gap = p = None
        if i + 1 < len(ranked):
            gap = difference(e.per_question[score], ranked[i + 1].per_question[score], classes)
            p = paired_p_value(e.per_question[score], ranked[i + 1].per_question[score], classes)
        out.append(Rank(e, e.standing[score], gap, p))
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


# ---- floor, ceiling and the page's claims --------------------------------------------------------


@dataclass
class FirstOrderInputs:
    """What the first-order null needs, aligned to the test split's questions."""
    spectrum: FisherSpectrum
    gradients: dict[str, np.ndarray]  # score -> [n_q, d]
    classes: np.ndarray  # [n_q] polarity


def first_order_inputs(store: str, key: str, behavior: str, layer: int,
                       test: Split) -> FirstOrderInputs | None:
    """The Fisher and the test questions' gradients at ``layer``, in ``test``'s question order;
    None unless both are stored and cover every test question."""
    fisher = read_fisher(store, key, layer)
    grads = read_gradients(store, key, behavior, "test", layer)
    if fisher is None or grads is None:
        return None
    where = {q: i for i, q in enumerate(grads["question_ids"])}
    if any(q not in where for q in test.question_ids):
        return None
    rows = np.array([where[q] for q in test.question_ids])
    spectrum = FisherSpectrum(fisher["values"], fisher["vectors"], float(fisher["residual"]))
    return FirstOrderInputs(spectrum, {score: grads[score][rows].astype(np.float64) for score in SCORE_NAMES},
                            grads["polarity"][rows])


def nulls(found: list[Entry], inputs: FirstOrderInputs) -> dict[tuple[str, float], Null]:
    """The first-order null of each score at each cost a choice sits at."""
    out = {}
    for cost in sorted({abs(e.scale) for e in found}):
        for score in SCORE_NAMES:
            classes = inputs.classes if score == "cloze" else None
            out[score, cost] = first_order_null(inputs.gradients[score], classes, inputs.spectrum, cost)
    return out


def attach_floor(found: list[Entry], null_of: dict[tuple[str, float], Null]) -> None:
    """Each entry's standing in the first-order null of its cost, per score."""
    for e in found:
        for score, per_question in e.per_question.items():
            if (score, abs(e.scale)) in null_of:
                e.null[score] = stand(null_of[score, abs(e.scale)], per_question)


def attach_efficiency(found: list[Entry], classes: np.ndarray | None) -> None:
    """Each entry's Δ over the ceiling's at the same cost, per score: the ceiling fitted on that
    score (its λ and cost chosen on val as every method's); none where no such ceiling stands."""
    for score in SCORE_NAMES:
        ceilings = [e for e in found if e.method == "ceiling" and e.label.endswith(f"-{score}")]
        for e in found:
            top = next((c for c in ceilings if abs(c.scale) == abs(e.scale)), None)
            if top is None or score not in e.per_question or score not in top.per_question:
                continue
            e.efficiency[score] = ratio(e.per_question[score], top.per_question[score],
                                        classes if score == "cloze" else None)


def decide(found: list[Entry], ranks: dict[str, list[Rank]], alpha: float = 0.05) -> int:
    """Holm's correction over every claim the page makes: each entry beyond the first-order null in
    each score, and each rank above the next. Marks each claim; returns how many there are."""
    claims = [(e, score, e.null[score].p_value) for e in found for score in e.null]
    gaps = [(r, r.gap_p) for rs in ranks.values() for r in rs if r.gap_p is not None]
    adjusted, holds = holm([p for *_, p in claims] + [p for _, p in gaps], alpha)
    for (e, score, _), a, h in zip(claims, adjusted, holds):
        e.beyond[score] = (a, h)
    for (r, _), a, h in zip(gaps, adjusted[len(claims):], holds[len(claims):]):
        r.gap_holds = (a, h)
    return len(claims) + len(gaps)


@dataclass
class ValidationRow:
    """First order against the measured random draws at one cost in one score."""
    score: str
    check: Validation


def validations(test: Split, found: list[Entry], inputs: FirstOrderInputs,
                null_of: dict[tuple[str, float], Null]) -> list[ValidationRow]:
    """Every cost × score where measured random draws and the first-order null both stand."""
    out = []
    layer = test.groups[found[0].label].source_layer if found else None
    group = random_group(test, layer) if layer is not None else None
    if group is None or group.vectors is None or group.norms is None:
        return out
    for (score, cost), null in sorted(null_of.items(), key=lambda item: (item[0][1], item[0][0])):
        columns = random_columns(group, cost)
        if columns is None:
            continue
        directions, sizes, measured = [], [], []
        for c in columns:
            sign = np.sign(group.scales[c])
            directions.append(sign * group.vectors)
            sizes.append(np.abs(group.norms[:, c]))
            measured.append(deltas(group, None, c, test, score))
        out.append(ValidationRow(score, validation(inputs.gradients[score], inputs.spectrum, null,
                                                   np.concatenate(directions), np.concatenate(sizes),
                                                   np.concatenate(measured))))
    return out


def stage_times(path: str) -> list[tuple[str, float, float]]:
    """(stage, seconds, peak resident MB) from the study's stage record (``steerlab.cli.stage``
    appends one line per finished stage: name, seconds, peak kB, command digest); a stage that
    finished more than once (with another command) counts its latest run, which wrote what the
    store holds."""
    from pathlib import Path

    found: dict[str, list[float]] = {}
    if not Path(path).is_file():
        return []
    for line in Path(path).read_text().splitlines():
        name, seconds, peak = line.split()[:3]
        found[name] = [float(seconds), float(peak) / 1024]
    return [(name, seconds, peak) for name, (seconds, peak) in found.items()]


@dataclass
class Convergence:
    """How a PI group's power iteration ended."""
    name: str
    steps: int
    converged: bool
    last_change: float  # sine of the largest angle between the last two top-k subspaces


def convergence(store: str, key: str, behavior: str, found: list[Entry]) -> list[Convergence]:
    """The power iteration's record of every PI entry's group."""
    from steerlab.store import read_vector_groups

    groups = {g.label: g for g in read_vector_groups(store, key, behavior)}
    out = []
    for e in found:
        g = groups.get(e.label)
        if g is None or "subspace_change" not in g.arrays:
            continue
        changes = g.arrays["subspace_change"]
        out.append(Convergence(e.name, int(g.attrs.get("steps", len(changes))),
                               bool(g.attrs.get("converged", 0)), float(changes[-1])))
    return out


def caa_pair_cosines(store: str, key: str, behavior: str, found: list[Entry]) -> dict[str, float]:
    """Each CAA entry's mean cosine between its training pairs' differences and its vector."""
    from steerlab.store import read_vector_groups

    groups = {g.label: g for g in read_vector_groups(store, key, behavior)}
    return {e.name: float(np.mean(groups[e.label].arrays["pair_cosines"])) for e in found
            if e.method == "caa" and e.label in groups and "pair_cosines" in groups[e.label].arrays}


def transfers(store: str, key: str, behavior: str) -> dict[str, dict[str, tuple[Stat, Stat]]]:
    """Per setting label, per behaviour asked: (cloze Δ polarity-paired, letter Δ) against the
    unsteered model on that behaviour's questions (``steerlab.cli.transfer``)."""
    from steerlab.measure.cloze import cloze_preference
    from steerlab.measure.statistics import balanced_stat
    from steerlab.store import read_transfers

    out: dict[str, dict[str, tuple[Stat, Stat]]] = {}
    for other, data in read_transfers(store, key, behavior).items():
        letter = data["logit_diff_by_order"].astype(np.float64).mean(1)  # [n_settings, n_q]
        cloze = cloze_preference(data["cloze_logprob"], data["cloze_n_tokens"])
        for s, label in enumerate(data["labels"][1:], 1):
            out.setdefault(str(label), {})[other] = (balanced_stat(cloze[s] - cloze[0], data["polarity"]),
                                                     stat(letter[s] - letter[0]))
    return out


@dataclass
class PromptRow:
    """The prompting baseline's row: one instruction's Δ in each score against the plain prompts,
    their confounds, and its KL on the neutral texts (with the instruction in front of them)."""
    name: str
    instruction: str
    cloze: Stat
    polarity_shift: Stat | None
    letter: Stat
    letter_shift: Stat  # ½(Δ as written − Δ mirrored): how much of the letter Δ is a letter
    kl: Stat | None
    per_question: dict[str, np.ndarray]


def prompting_rows(prompting) -> list[PromptRow]:
    """One row per instruction of a stored prompting split (``analysis.read_prompting``)."""
    from steerlab.measure.statistics import polarity_shift_stat

    rows = []
    for found in prompting.instructions.values():
        by_order = found.letter_by_order
        shift = (stat((by_order[0] - by_order[1]) / 2) if len(by_order) == 2
                 else stat(np.zeros_like(found.letter)))
        rows.append(PromptRow(found.name, found.instruction, found.cloze_stat(),
                              polarity_shift_stat(found.cloze, found.polarity), found.letter_stat(), shift,
                              stat(found.kl) if found.kl.size else None,
                              {"cloze": found.cloze, "letter": found.letter}))
    return rows


@dataclass
class Study:
    """Everything a study's page and the size table say of one model: the entries (each method's
    val choice on test, placed in the first-order null and against the ceiling, its claims
    corrected), their rankings, the first-order inputs and nulls, and the prompting baseline."""
    entries: list[Entry]
    ranks: dict[str, list[Rank]]
    n_claims: int
    inputs: FirstOrderInputs | None
    nulls: dict[tuple[str, float], Null]
    prompting: list[PromptRow] | None


def study(store: str, key: str, val: Split, test: Split, kl_max: float, by: Score, prompting=None) -> Study:
    """The study of model ``key`` from its stored val and test splits (and first-order inputs,
    where stored); ``prompting`` is the stored test prompting baseline
    (``steerlab.measure.analysis.read_prompting``), if any."""
    found = entries(val, test, kl_max, by)
    layer = test.groups[found[0].label].source_layer if found else None
    inputs = first_order_inputs(store, key, val.behavior, layer, test) if layer is not None else None
    null_of = nulls(found, inputs) if inputs is not None else {}
    attach_floor(found, null_of)
    attach_efficiency(found, test.polarity)
    ranks = {score: ranking(found, score, test.polarity if score == "cloze" else None)
             for score in SCORE_NAMES}
    n_claims = decide(found, ranks)
    return Study(found, ranks, n_claims, inputs, null_of,
                 prompting_rows(prompting) if prompting is not None else None)
