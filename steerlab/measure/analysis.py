"""Stored evals: reading a split from the store, the rows of its settings, choosing on validation,
and a setting's random draws (the statistics themselves are in ``steerlab.measure.statistics``).

Everything here reads plain arrays from the store, so tables and figures are computed from the store
alone.

Counterbalanced evals ask every question in two orders (as written, and with the two answers'
texts exchanged between their letters). Per question, the mean over the orders is the behaviour
(the headline logit difference), half their difference the letter shift (how much the model
prefers the letter the positive answer has as written), and the two orders agree when the
preference has the same sign in both (consistency).

Cloze scores (no letters: how likely each answer's text is after the stem, nats per token) have
Yes/No polarity as their confound. Their headline is polarity-paired: the yes and no class means
weigh the same, the pair and the other class by their sizes (``steerlab.questions.polarity``), with intervals
from a bootstrap that resamples questions within each class; beside it the per-class Δ and the polarity shift
½(Δ_no − Δ_yes). The val choice maximises one score (``by``: cloze or letter).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import h5py
import numpy as np

from steerlab.base.errors import StoreError, UserError
from steerlab.measure.scores import SCORE_NAMES, Score
from steerlab.measure.statistics import (
    ClozeRow,
    Row,
    Standing,
    Stat,
    against_random,
    balanced_stat,
    cloze_row,
    polarity_shift_stat,
    row,
    stat,
    stratified,
)
from steerlab.questions.behaviors import DEFAULT_BEHAVIOR
from steerlab.questions.behaviors import label as behavior_label
from steerlab.questions.data import SplitName
from steerlab.questions.orders import Orders
from steerlab.questions.polarity import balanced_mean, class_masks
from steerlab.store import behaviors_in_store, evals_path, library_versions, open_for_reading, prompting_path

# A setting is eligible for "best" only if the model still answers in format: its mean answer mass
# is at least this share of the unsteered model's. Otherwise a broken model whose logit difference
# explodes would win.
MIN_MASS_SHARE = 0.5


@dataclass
class EvalGroup:
    """One evaluated vector group on one split, as stored."""
    method: str
    run: str
    logit_diff: np.ndarray | None  # [k, n_scales, n_q] letter (order mean); None: no letter score
    mass: np.ndarray | None
    scales: np.ndarray  # [n_scales], signed
    source_layer: int
    attrs: dict
    by_order: np.ndarray | None = None  # [k, n_scales, n_orders, n_q] logit diffs, if stored
    kl: np.ndarray | None = None  # [k, n_scales, n_neutral] mean per-token KL, if measured
    top1: np.ndarray | None = None  # [k, n_scales, n_neutral]
    cloze: np.ndarray | None = None  # [k, n_scales, n_q] cloze preference, nats per token
    fractions: np.ndarray | None = None  # [n_scales] the scales in units of ‖h_S‖ (SCALE_UNIT=resid)
    norms: np.ndarray | None = None  # [k, n_scales] SCALE_UNIT=kl: the signed |θ| each target took
    reached: np.ndarray | None = None  # [k, n_scales] SCALE_UNIT=kl: whether the search reached it
    vectors: np.ndarray | None = None  # [k, d] the directions scored, stored for the random control

    @property
    def scale_unit(self) -> str:
        """kl, resid, abs, or "" for evals stored before SCALE_UNIT (absolute L2 norms)."""
        return str(self.attrs.get("scale_unit", ""))

    def fraction(self, s: int) -> float | None:
        return None if self.fractions is None else float(self.fractions[s])

    def norm(self, vector: int | None, s: int) -> float:
        """The signed L2 norm of θ at scale index ``s``: ``scales[s]``, or with SCALE_UNIT=kl the
        one calibrated for ``vector`` (pooled over vectors when None: their mean)."""
        if self.norms is None:
            return float(self.scales[s])
        return float(self.norms[:, s].mean() if vector is None else self.norms[vector, s])

    def in_unit(self) -> np.ndarray | None:
        """[n_scales] the grid in its unit (KL targets, fractions of ‖h_S‖); None for absolute
        scales, whose unit is the L2 norm itself."""
        return self.scales if self.norms is not None else self.fractions

    def calibrated_norm(self, vector: int | None, s: int) -> float | None:
        return None if self.norms is None else self.norm(vector, s)

    @property
    def label(self) -> str:
        return f"{self.method}/{self.run}"

    @property
    def settings_shape(self) -> tuple[int, int]:
        """(vectors, scales)."""
        scores = self.logit_diff if self.logit_diff is not None else self.cloze
        return scores.shape[:2]


@dataclass
class Split:
    name: str
    question_ids: np.ndarray
    baseline: np.ndarray | None  # [n_q] letter; None: no letter score
    baseline_mass: np.ndarray | None
    groups: dict[str, EvalGroup]  # by label
    orders: Orders = "original"  # both, original, mirrored; schema-1 stores: original
    behavior: str = DEFAULT_BEHAVIOR
    baseline_by_order: np.ndarray | None = None  # [n_orders, n_q]
    cloze_baseline: np.ndarray | None = None  # [n_q] nats per token; None: no cloze score
    polarity: np.ndarray | None = None  # [n_q] yes, no or other: each question's class

    @property
    def counterbalanced(self) -> bool:
        return self.orders == "both"

    @property
    def has_letter(self) -> bool:
        return self.baseline is not None

    @property
    def has_cloze(self) -> bool:
        return self.cloze_baseline is not None

    @property
    def n_questions(self) -> int:
        return len(self.question_ids)

    @property
    def positive_label(self) -> str:
        """What "% of questions with logit diff > 0" is called: "survival %", ..."""
        return f"{behavior_label(self.behavior)} %"

    def baseline_row(self) -> Row:
        return row(0.0, self.baseline, self.baseline_mass, self.baseline, self.baseline_by_order)

    def cloze_baseline_row(self) -> "ClozeRow":
        return cloze_row(0.0, self.cloze_baseline, self.cloze_baseline, self.polarity)

    def cloze_levels(self) -> dict[str, Stat]:
        """The unsteered cloze preference within each polarity class present, and (``shift``)
        its polarity shift ½(no − yes) where both classes are present."""
        levels = {name: stratified(self.cloze_baseline, self.polarity, {name: 1.0})
                  for name in class_masks(self.polarity)}
        shift = polarity_shift_stat(self.cloze_baseline, self.polarity)
        return levels | ({"shift": shift} if shift is not None else {})


def read_split(h5: h5py.File, model_key: str, behavior: str, split: SplitName) -> Split:
    where = evals_path(model_key, behavior, split)
    if where not in h5:
        raise StoreError(f"no {behavior} eval of split {split!r} for {model_key} in the store: "
                         f"run `make eval BEHAVIOR={behavior}`")
    node = h5[where]

    def optional(parent, name):
        return parent[name][()] if name in parent else None

    groups = {}
    for method in node:
        if not isinstance(node[method], h5py.Group):
            continue
        for run, group in node[method].items():
            attrs = {key: group.attrs[key] for key in group.attrs}
            item = EvalGroup(method, run, optional(group, "logit_diff"), optional(group, "answer_mass"),
                         group["scales"][()], int(attrs.get("source_layer", -1)), attrs,
                         optional(group, "logit_diff_by_order"), optional(group, "kl"),
                         optional(group, "top1"), optional(group, "cloze"),
                         optional(group, "scale_fractions"), optional(group, "norms"),
                         optional(group, "calibration_reached"), optional(group, "vectors"))
            groups[item.label] = item
    polarity = optional(node, "polarity")
    return Split(split, node["question_ids"][()].astype(str), optional(node, "baseline_logit_diff"),
                 optional(node, "baseline_answer_mass"), groups, str(node.attrs.get("orders", "original")),
                 behavior, optional(node, "baseline_logit_diff_by_order"), optional(node, "baseline_cloze"),
                 None if polarity is None else polarity.astype(str))


def splits_in_store(h5: h5py.File, model_key: str, behavior: str) -> list[str]:
    where = evals_path(model_key, behavior)
    return [name for name in ("val", "test") if where in h5 and name in h5[where]]


def read_splits(store: str, model_key: str, behavior: str) -> dict[str, Split]:
    """Every eval split of ``behavior`` for ``model_key`` in the store file ``store``, by name (val
    first); a UserError that says what to run when there is none."""
    with open_for_reading(store) as h5:
        names = splits_in_store(h5, model_key, behavior)
        if not names:
            others = [name for name in behaviors_in_store(h5, model_key) if name != behavior]
            held = f" (it has results for {', '.join(others)}: pass BEHAVIOR=)" if others else ""
            raise UserError(f"no {behavior} evals for {model_key} in {store}{held}: "
                            f"run `make eval BEHAVIOR={behavior}` first")
        return {name: read_split(h5, model_key, behavior, name) for name in names}


def other_libraries(splits: dict[str, Split]) -> list[str]:
    """One line per stored eval group computed under other releases of the computing libraries
    than this environment's (``steerlab.store.library_versions``): its numbers may not be what
    rerunning it here gives. Groups stored before releases were recorded are not listed."""
    here = library_versions()
    lines = []
    for split in splits.values():
        for group in split.groups.values():
            recorded = json.loads(str(group.attrs.get("libraries", "{}")))
            differ = {name: version for name, version in recorded.items() if here.get(name) != version}
            if differ:
                was = ", ".join(f"{name} {version}" for name, version in sorted(differ.items()))
                now = ", ".join(f"{name} {here.get(name)}" for name in sorted(differ))
                lines.append(f"{split.name}/{group.label} was computed under {was} (here: {now})")
    return lines


def select_by(split: Split, by: Score) -> str:
    """The score a choice can maximise on ``split``: ``by``, or the one the split has (a store
    evaluated before cloze scores existed, or with SCORE=letter, chooses by the letter)."""
    if by not in SCORE_NAMES:
        raise ValueError(f"by must be one of {SCORE_NAMES}, got {by!r}")
    if by == "cloze" and not split.has_cloze:
        return "letter"
    if by == "letter" and not split.has_letter:
        return "cloze"
    return by


def setting_scores(group: EvalGroup, split: Split, by: Score) -> np.ndarray:
    """[k, n_scales] what a choice maximises: the mean order-mean logit difference (letter), or
    the polarity-paired mean cloze preference (cloze)."""
    if select_by(split, by) == "cloze":
        return balanced_mean(group.cloze, split.polarity)
    return group.logit_diff.mean(-1)


def eligible(group: EvalGroup, split: Split, kl_max: float | None = None) -> np.ndarray:
    """[k, n_scales] mask of settings where the model still answers in format (the letter
    score's answer mass, where measured) and, with ``kl_max`` and a KL measurement, costs at
    most ``kl_max`` nats per token on neutral text."""
    ok = np.ones(group.settings_shape, dtype=bool)
    if group.mass is not None and split.baseline_mass is not None:
        ok &= group.mass.mean(-1) >= MIN_MASS_SHARE * split.baseline_mass.mean()
    if kl_max is not None and group.kl is not None:
        ok = ok & (group.kl.mean(-1) <= kl_max)
    return ok


def best_setting(group: EvalGroup, split: Split, kl_max: float | None = None, by: Score = "letter"
           ) -> tuple[int, int] | None:
    """(vector, scale index) with the largest score (``setting_scores``) among eligible settings."""
    score = np.where(eligible(group, split, kl_max), setting_scores(group, split, by), -np.inf)
    if not np.isfinite(score).any():
        return None
    vector, scale = np.unravel_index(int(np.argmax(score)), score.shape)
    return int(vector), int(scale)


def best_of_method(method: str, split: Split, kl_max: float | None = None, by: Score = "letter"
                      ) -> tuple[EvalGroup, int, int] | None:
    """The method's best (group, vector, scale) on ``split`` (validation, for honest reports)."""
    best = None
    for group in split.groups.values():
        if group.method != method:
            continue
        picked = best_setting(group, split, kl_max, by)
        if picked is None:
            continue
        value = setting_scores(group, split, by)[picked]
        if best is None or value > best[0]:
            best = (value, group, *picked)
    return None if best is None else best[1:]


def methods(split: Split) -> list[str]:
    order = ["caa", "pi", "pi_caa", "melbo", "ceiling", "random"]
    found = {group.method for group in split.groups.values()}
    return [m for m in order if m in found] + sorted(found - set(order))


def scale_rows(group: EvalGroup, vector: int | None, split: Split) -> list[Row]:
    """One row per scale: for one vector, or pooled over all vectors when ``vector`` is None."""
    return [row_at(group, vector, s, split) for s in range(len(group.scales))]


def row_at(group: EvalGroup, vector: int | None, s: int, split: Split) -> Row:
    """The row of scale index ``s``: for one vector, or pooled over all when ``vector`` is None."""
    diff = group.logit_diff[:, s] if vector is None else group.logit_diff[vector, s]
    mass = group.mass[:, s] if vector is None else group.mass[vector, s]
    def pick(values: np.ndarray | None) -> np.ndarray | None:
        if values is None:
            return None
        return values[:, s] if vector is None else values[vector, s]

    out = row(float(group.scales[s]), diff, mass, split.baseline, pick(group.by_order))
    if group.kl is not None:
        out.kl, out.top1 = stat(pick(group.kl)), stat(pick(group.top1))
    out.fraction, out.norm = group.fraction(s), group.calibrated_norm(vector, s)
    return out


def nearest_scale(group: EvalGroup, scale: float) -> int:
    """Index of the stored (signed) scale of ``group`` nearest to ``scale``."""
    return int(np.argmin(np.abs(group.scales - scale)))


def val_choice_in(method: str, val: Split, split: Split, kl_max: float | None = None, by: Score = "letter"
              ) -> tuple[EvalGroup, int, int] | None:
    """The method's setting chosen on ``val``, looked up in ``split``: (its group there, vector,
    index of the nearest stored scale). None if nothing was chosen or ``split`` lacks the group."""
    chosen = best_of_method(method, val, kl_max, by)
    if chosen is None or chosen[0].label not in split.groups:
        return None
    group, vector, s = chosen
    there = split.groups[group.label]
    units = [g.scale_unit or "abs" for g in (group, there)]
    if units[0] != units[1]:  # 0.04 KL on val is not 0.04 of ‖h_S‖ on test
        raise StoreError(f"{group.label} was evaluated on val with SCALE_UNIT={units[0]} and on {split.name} "
                         f"with SCALE_UNIT={units[1]}, so val's choice has no twin there: evaluate both in "
                         f"one unit (`make eval SPLITS=\"val {split.name}\" SCALE_UNIT=...`)")
    return there, vector, nearest_scale(there, float(group.scales[s]))


# ---- cloze ----------------------------------------------------------------------------------------


def cloze_row_at(group: EvalGroup, vector: int | None, s: int, split: Split) -> ClozeRow:
    """The cloze row of scale index ``s``: for one vector, or pooled when ``vector`` is None."""
    def pick(values: np.ndarray | None) -> np.ndarray | None:
        if values is None:
            return None
        return values[:, s] if vector is None else values[vector, s]

    out = cloze_row(float(group.scales[s]), pick(group.cloze), split.cloze_baseline, split.polarity)
    if group.kl is not None:
        out.kl, out.top1 = stat(pick(group.kl)), stat(pick(group.top1))
    out.fraction, out.norm = group.fraction(s), group.calibrated_norm(vector, s)
    return out


# A setting costing less than this (nats per token of KL on neutral text) has not left the linear
# regime: the model's next-token distributions barely moved.
LINEAR_KL = 1e-3


def linear_regime(group: EvalGroup) -> bool:
    """Whether every setting of ``group`` costs less than LINEAR_KL (False without a KL)."""
    return group.kl is not None and bool((group.kl.mean(-1) < LINEAR_KL).all())


# ---- against the random distribution -------------------------------------------------------------


def deltas(group: EvalGroup, vector: int | None, s: int, split: Split, score: Score) -> np.ndarray:
    """Per-question Δ of one setting (``vector``) or of every vector of the group (None: [k, n_q])."""
    if score == "cloze":
        values, base = group.cloze, split.cloze_baseline
    else:
        values, base = group.logit_diff, split.baseline
    picked = values[:, s] if vector is None else values[vector, s]
    return picked - base


def random_group(split: Split, layer: int) -> EvalGroup | None:
    return next((g for g in split.groups.values() if g.method == "random" and g.source_layer == layer), None)


def random_draws(split: Split, layer: int, scale: float, score: Score) -> np.ndarray | None:
    """[n_draws, n_q] the per-question Δ of every random direction of ``layer`` at ``+scale`` and
    ``−scale`` (a direction and its negative are both random draws at that cost)."""
    group = random_group(split, layer)
    columns = None if group is None else random_columns(group, scale)
    if columns is None:
        return None
    return np.concatenate([deltas(group, None, c, split, score) for c in columns])


def random_columns(group: EvalGroup, scale: float) -> list[int] | None:
    """The scale indices of a random group at ``+scale`` and ``−scale``; None if it has neither."""
    columns = sorted({nearest_scale(group, abs(scale)), nearest_scale(group, -abs(scale))})
    if not all(np.isclose(abs(group.scales[c]), abs(scale), rtol=1e-4) for c in columns):
        return None
    return columns


def standing_of(group: EvalGroup, vector: int, s: int, split: Split, score: Score) -> Standing | None:
    """One setting's standing against the random draws of its layer at its scale (both signs), in
    ``score``; None where the split has no random directions at that scale."""
    draws = random_draws(split, group.source_layer, float(group.scales[s]), score)
    if draws is None:
        return None
    return against_random(deltas(group, vector, s, split, score), draws,
                          split.polarity if score == "cloze" else None)




# ---- the prompting baseline -------------------------------------------------------------------------


@dataclass
class PromptedDelta:
    """One instruction of a stored prompting split (``read_prompting``): per question its Δ =
    prompted − plain in each score, and its KL on each neutral text."""
    name: str  # ask, ask_opposite
    instruction: str
    letter: np.ndarray  # [n_q] Δ of the order-mean logit difference
    letter_by_order: np.ndarray  # [n_orders, n_q] Δ in each order
    cloze: np.ndarray  # [n_q] Δ of the cloze preference, nats per token
    polarity: np.ndarray  # [n_q] each question's class
    kl: np.ndarray  # [n_texts] mean per-token KL(plain ‖ instructed), nats
    top1: np.ndarray  # [n_texts]

    def letter_stat(self) -> Stat:
        return stat(self.letter)

    def cloze_stat(self) -> Stat:
        """The headline: the polarity-paired mean Δ (a Yes/No shift cancels), with its interval."""
        return balanced_stat(self.cloze, self.polarity)

    @property
    def mean_kl(self) -> float:
        """The cost, as a steering setting's: the mean over neutral texts (nan without any)."""
        return float(self.kl.mean()) if self.kl.size else float("nan")

    @property
    def mean_top1(self) -> float:
        return float(self.top1.mean()) if self.top1.size else float("nan")


@dataclass
class Prompting:
    """A stored prompting split: its questions, neutral texts and each instruction's Δ and KL."""
    split: str
    question_ids: np.ndarray
    neutral_ids: np.ndarray
    instructions: dict[str, PromptedDelta]  # by name, in stored order
    attrs: dict


def read_prompting(store: str, model_key: str, behavior: str, split: SplitName) -> Prompting:
    """The prompting baseline of ``split`` (`make prompting`), as per-question Δs; a UserError that
    says what to run when the store has none."""
    where = prompting_path(model_key, behavior, split)
    with open_for_reading(store) as h5:
        if where not in h5:
            raise UserError(f"no {behavior} prompting baseline of split {split!r} for {model_key} in "
                            f"{store}: run `make prompting BEHAVIOR={behavior} SPLITS={split}`")
        node = h5[where]
        data = {name: node[name][()] for name in node}
        attrs = {key: node.attrs[key] for key in node.attrs}
    f64 = {name: values.astype(np.float64) for name, values in data.items() if values.dtype.kind == "f"}
    polarity = data["polarity"].astype(str)
    found = {}
    for f, (name, text) in enumerate(zip(data["instruction_names"].astype(str),
                                         data["instructions"].astype(str))):
        by_order = f64["logit_diff_by_order"][f] - f64["baseline_logit_diff_by_order"]
        found[name] = PromptedDelta(name, text, by_order.mean(0), by_order,
                                    f64["cloze"][f] - f64["baseline_cloze"], polarity, f64["kl"][f],
                                    f64["top1"][f])
    return Prompting(split, data["question_ids"].astype(str), data["neutral_ids"].astype(str), found, attrs)
