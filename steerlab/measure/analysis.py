"""Statistics over stored evals: bootstrap intervals, choosing on validation, reading the store.

Everything here reads plain arrays from the store, so tables and figures are computed from the store
alone. Intervals are 95% percentile bootstraps over questions; Δ is paired (the same resampled
questions for steered and baseline).

Counterbalanced evals ask every question in two orders (as written, and with the two answers'
texts exchanged between their letters). Per question, the mean over the orders is the behaviour
(the headline logit difference), half their difference the letter shift (how much the model
prefers the letter the positive answer has as written), and the two orders agree when the
preference has the same sign in both (consistency).

Cloze scores (no letters: how likely each answer's text is after the stem, nats per token) have
Yes/No polarity as their confound. Their headline is polarity-paired: the yes and no class means
weigh the same, the pair and the other class by their sizes (``steerlab.questions.polarity``), with intervals from a bootstrap that
resamples questions within each class; beside it the per-class Δ and the polarity shift
½(Δ_no − Δ_yes). The val choice maximises one score (``by``: cloze or letter).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import h5py
import numpy as np

from steerlab.base.errors import StoreError
from steerlab.measure.scores import SELECT_BY
from steerlab.questions.behaviors import DEFAULT_BEHAVIOR
from steerlab.questions.behaviors import label as behavior_label
from steerlab.questions.polarity import balanced_mean, class_masks, polarity_weights
from steerlab.store import evals_path

N_BOOT = 2000
# A setting is eligible for "best" only if the model still answers in format: its mean answer mass
# is at least this share of the unsteered model's. Otherwise a broken model whose logit difference
# explodes would win.
MIN_MASS_SHARE = 0.5


@dataclass
class Stat:
    value: float
    low: float
    high: float

    def fmt(self, digits: int = 1, signed: bool = False) -> str:
        sign = "+" if signed else ""
        return f"{self.value:{sign}.{digits}f} [{self.low:{sign}.{digits}f}, {self.high:{sign}.{digits}f}]"


class AtScale:
    """What a row says of its setting's scale; the row holds ``scale``, ``fraction`` (resid) and
    ``norm`` (kl)."""
    scale: float
    fraction: float | None
    norm: float | None

    @property
    def scale_text(self) -> str:
        return scale_text(self.scale, self.fraction, self.norm)

    @property
    def theta_norm(self) -> float:
        """The signed L2 norm of θ in every unit: kl's found |θ|, else the stored scale (resid
        and abs store the norm as the scale)."""
        return self.norm if self.norm is not None and np.isfinite(self.norm) else self.scale


@dataclass
class Row(AtScale):
    """Numbers of one setting on one split: a vector (or a pool of random ones) at one scale."""
    scale: float
    positive: Stat  # % of questions with (order-mean) logit diff > 0: preferring the behaviour
    mean_diff: Stat
    delta: Stat  # mean(steered) - mean(baseline)
    mass: Stat  # mean p(positive) + p(negative)
    # both orders only (None for single-order evals):
    letter_shift: Stat | None = None  # mean of (as written − mirrored) / 2
    consistency: Stat | None = None  # % of questions preferring the same answer text in both orders
    correlation: Stat | None = None  # across questions, as written vs mirrored
    # with a KL measurement (None for stores without one), over neutral prompts:
    kl: Stat | None = None  # mean per-token KL(unsteered ‖ steered), nats
    top1: Stat | None = None  # share of positions where the steered model's top token is unchanged
    fraction: float | None = None  # the scale as a fraction of ‖h_S‖ (SCALE_UNIT=resid evals)
    norm: float | None = None  # SCALE_UNIT=kl: the |θ| the KL target was reached at (pooled: mean)


def scale_text(scale: float, fraction: float | None, norm: float | None = None) -> str:
    """A setting's scale as the report writes it: "+0.04 KL (= 31.2)", a KL target with the L2
    norm of θ that reached it; "+0.2 (= 23.2)" in units of ‖h_S‖ with the L2 norm it was; or the
    L2 norm alone ("+24") for absolute scales."""
    if norm is not None and np.isfinite(norm):
        return f"{scale:+.3g} KL (= {abs(norm):.1f})"
    if fraction is None or not np.isfinite(fraction):
        return f"{scale:+g}"
    return f"{fraction:+.3g} (= {scale:.1f})"


def _bootstrap(per_question: np.ndarray, n_q: int, seed: int) -> tuple[float, float]:
    """95% interval of the mean over questions; ``per_question`` is [..., n_q], averaged over
    leading axes (random directions) inside each resample."""
    rng = np.random.default_rng(seed)
    index = rng.integers(0, n_q, size=(N_BOOT, n_q))
    flat = per_question.reshape(-1, n_q).mean(0)
    means = flat[index].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def stat(per_question: np.ndarray, seed: int = 0) -> Stat:
    per_question = np.asarray(per_question, dtype=np.float64)
    n_q = per_question.shape[-1]
    return Stat(float(per_question.mean()), *_bootstrap(per_question, n_q, seed))


def correlation(x: np.ndarray, y: np.ndarray, seed: int = 0) -> Stat:
    """Pearson correlation across questions of ``x`` and ``y`` ([n_q], or [n_vectors, n_q]: the
    mean of the per-vector correlations), with a 95% bootstrap interval over questions."""
    x = np.asarray(x, dtype=np.float64).reshape(-1, np.shape(x)[-1])
    y = np.asarray(y, dtype=np.float64).reshape(x.shape)

    def pearson(a, b):  # along the last axis, averaged over the leading vector axis
        a = a - a.mean(-1, keepdims=True)
        b = b - b.mean(-1, keepdims=True)
        denominator = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a resample of constant rows: nan, left out
            return np.nanmean(np.where(denominator > 0, (a * b).sum(-1) / denominator, np.nan), axis=0)

    n_q = x.shape[-1]
    index = np.random.default_rng(seed).integers(0, n_q, size=(N_BOOT, n_q))
    with np.errstate(invalid="ignore"):
        resampled = pearson(x[:, index], y[:, index])
    low, high = np.nanpercentile(resampled, [2.5, 97.5]) if np.isfinite(resampled).any() else (np.nan,) * 2
    return Stat(float(pearson(x, y)), float(low), float(high))


def row(scale: float, logit_diff: np.ndarray, mass: np.ndarray, baseline: np.ndarray,
        by_order: np.ndarray | None = None) -> Row:
    """``logit_diff`` and ``mass`` are [n_q] for one vector or [n_vectors, n_q] for a pool;
    ``by_order`` [..., 2, n_q] adds letter shift, consistency and correlation."""
    out = Row(scale, stat(100.0 * (logit_diff > 0)), stat(logit_diff), stat(logit_diff - baseline),
              stat(mass))
    if by_order is not None and by_order.shape[-2] == 2:
        written, mirrored = by_order[..., 0, :], by_order[..., 1, :]
        out.letter_shift = stat((written - mirrored) / 2)
        out.consistency = stat(100.0 * ((written > 0) == (mirrored > 0)))
        out.correlation = correlation(written, mirrored)
    return out


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
    orders: str = "original"  # both, original, mirrored; schema-1 stores: original
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


def read_split(h5: h5py.File, model_key: str, behavior: str, split: str) -> Split:
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
                         optional(group, "top1"), optional(group, "cloze"), optional(group, "scale_fractions"),
                         optional(group, "norms"), optional(group, "calibration_reached"))
            groups[item.label] = item
    polarity = optional(node, "polarity")
    return Split(split, node["question_ids"][()].astype(str), optional(node, "baseline_logit_diff"),
                 optional(node, "baseline_answer_mass"), groups, str(node.attrs.get("orders", "original")),
                 behavior, optional(node, "baseline_logit_diff_by_order"), optional(node, "baseline_cloze"),
                 None if polarity is None else polarity.astype(str))


def splits_in_store(h5: h5py.File, model_key: str, behavior: str) -> list[str]:
    where = evals_path(model_key, behavior)
    return [name for name in ("val", "test") if where in h5 and name in h5[where]]


def select_by(split: Split, by: str) -> str:
    """The score a choice can maximise on ``split``: ``by``, or the one the split has (a store
    evaluated before cloze scores existed, or with SCORE=letter, chooses by the letter)."""
    if by not in SELECT_BY:
        raise ValueError(f"by must be one of {SELECT_BY}, got {by!r}")
    if by == "cloze" and not split.has_cloze:
        return "letter"
    if by == "letter" and not split.has_letter:
        return "cloze"
    return by


def setting_scores(group: EvalGroup, split: Split, by: str) -> np.ndarray:
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


def choose(group: EvalGroup, split: Split, kl_max: float | None = None, by: str = "letter"
           ) -> tuple[int, int] | None:
    """(vector, scale index) with the largest score (``setting_scores``) among eligible settings."""
    score = np.where(eligible(group, split, kl_max), setting_scores(group, split, by), -np.inf)
    if not np.isfinite(score).any():
        return None
    vector, scale = np.unravel_index(int(np.argmax(score)), score.shape)
    return int(vector), int(scale)


def choose_for_method(method: str, split: Split, kl_max: float | None = None, by: str = "letter"
                      ) -> tuple[EvalGroup, int, int] | None:
    """The method's best (group, vector, scale) on ``split`` (validation, for honest reports)."""
    best = None
    for group in split.groups.values():
        if group.method != method:
            continue
        picked = choose(group, split, kl_max, by)
        if picked is None:
            continue
        value = setting_scores(group, split, by)[picked]
        if best is None or value > best[0]:
            best = (value, group, *picked)
    return None if best is None else best[1:]


def methods(split: Split) -> list[str]:
    order = ["caa", "pi", "pi_caa", "melbo", "random"]
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


def chosen_on(method: str, val: Split, split: Split, kl_max: float | None = None, by: str = "letter"
              ) -> tuple[EvalGroup, int, int] | None:
    """The method's setting chosen on ``val``, looked up in ``split``: (its group there, vector,
    index of the nearest stored scale). None if nothing was chosen or ``split`` lacks the group."""
    chosen = choose_for_method(method, val, kl_max, by)
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

@dataclass
class ClozeRow(AtScale):
    """Cloze numbers of one setting on one split, polarity-paired over polarity classes."""
    scale: float
    positive: Stat  # polarity-paired % of questions whose positive answer text is more likely
    level: Stat  # polarity-paired mean preference, nats per token
    delta: Stat  # polarity-paired mean of steered − unsteered
    by_class: dict[str, Stat]  # Δ within each class present
    class_n: dict[str, int]
    polarity_shift: Stat | None  # ½(Δ_no − Δ_yes); None without both classes
    kl: Stat | None = None
    top1: Stat | None = None
    fraction: float | None = None  # the scale in units of ‖h_S‖, where evaluated so
    norm: float | None = None  # SCALE_UNIT=kl: the |θ| the KL target was reached at (pooled: mean)


def stratified(per_question: np.ndarray, classes: np.ndarray, weights: dict[str, float],
               seed: int = 0) -> Stat:
    """Σ_c weights[c] · (mean over class c's questions) of ``per_question`` ([..., n_q], leading
    axes averaged), with a 95% bootstrap that resamples questions within each class (so every
    resample keeps the class sizes)."""
    flat = np.asarray(per_question, dtype=np.float64).reshape(-1, np.shape(per_question)[-1]).mean(0)
    masks = class_masks(classes)
    rng = np.random.default_rng(seed)
    value, resampled = 0.0, np.zeros(N_BOOT)
    for name, weight in weights.items():
        members = flat[masks[name]]
        value += weight * members.mean()
        resampled += weight * members[rng.integers(0, len(members), (N_BOOT, len(members)))].mean(1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return Stat(float(value), float(low), float(high))


def balanced_stat(per_question: np.ndarray, classes: np.ndarray, seed: int = 0) -> Stat:
    """The polarity-paired mean (``steerlab.questions.polarity.polarity_weights``: yes and no weigh the same,
    so a Yes/No direction cancels) with its interval."""
    return stratified(per_question, classes, polarity_weights(classes), seed)


def polarity_shift_stat(per_question: np.ndarray, classes: np.ndarray, seed: int = 0) -> Stat | None:
    """½(mean over no-class − mean over yes-class questions), or None without both classes."""
    present = class_masks(classes)
    if "yes" not in present or "no" not in present:
        return None
    return stratified(per_question, classes, {"no": 0.5, "yes": -0.5}, seed)


def cloze_row(scale: float, preference: np.ndarray, baseline: np.ndarray, classes: np.ndarray
              ) -> ClozeRow:
    """``preference`` is [n_q] for one vector or [n_vectors, n_q] for a pool (nats per token)."""
    delta = preference - baseline
    masks = class_masks(classes)
    return ClozeRow(scale, balanced_stat(100.0 * (preference > 0), classes),
                    balanced_stat(preference, classes), balanced_stat(delta, classes),
                    {name: stratified(delta, classes, {name: 1.0}) for name in masks},
                    {name: int(mask.sum()) for name, mask in masks.items()},
                    polarity_shift_stat(delta, classes))


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

@dataclass
class Standing:
    """One setting's Δ against random directions at the same cost (``against_random``)."""
    delta: Stat  # its own Δ
    random_mean: Stat  # the draws' mean Δ
    beyond: Stat  # Δ − the draws' mean Δ, paired over questions, draws resampled too
    share_beaten: float  # share of the draws whose Δ is below this setting's
    draws: np.ndarray  # [n_draws] each draw's Δ (the distribution's spread)

    @property
    def decided(self) -> bool:
        """Whether the interval of Δ − random excludes 0."""
        return self.beyond.low > 0 or self.beyond.high < 0


def question_weights(classes: np.ndarray | None, n_q: int) -> dict[str, tuple[np.ndarray, float]]:
    """Per stratum: (its question indices, its weight) in the headline mean: the polarity classes
    with ``polarity_weights`` (cloze), or one stratum of every question (letter, ``classes`` None)."""
    if classes is None:
        return {"all": (np.arange(n_q), 1.0)}
    masks = class_masks(classes)
    return {name: (np.flatnonzero(masks[name]), weight) for name, weight in polarity_weights(classes).items()}


def against_random(delta: np.ndarray, draws: np.ndarray, classes: np.ndarray | None = None,
                   seed: int = 0) -> Standing:
    """``delta`` [n_q] one setting's per-question Δ, ``draws`` [n_draws, n_q] those of random
    directions at the same cost (both signs of each direction count as draws), ``classes`` the
    polarity classes for a cloze Δ (None: a letter Δ, a plain mean). The interval of Δ − random
    resamples questions (within strata, paired: the same questions for both) and the draws, so it
    carries both the question sample and the finite number of directions."""
    delta = np.asarray(delta, dtype=np.float64)
    draws = np.asarray(draws, dtype=np.float64).reshape(-1, delta.shape[-1])
    strata = question_weights(classes, delta.shape[-1])
    rng = np.random.default_rng(seed)
    n_draws = draws.shape[0]
    picks = rng.multinomial(n_draws, np.full(n_draws, 1 / n_draws), size=N_BOOT) / n_draws
    random_mean = picks @ draws  # [N_BOOT, n_q]: the mean of resampled draws, per question
    own, rand = np.zeros(N_BOOT), np.zeros(N_BOOT)
    for index, weight in strata.values():
        chosen = index[rng.integers(0, len(index), (N_BOOT, len(index)))]  # [N_BOOT, n_c]
        own += weight * delta[chosen].mean(1)
        rand += weight * np.take_along_axis(random_mean, chosen, axis=1).mean(1)
    gap = own - rand

    def headline(values: np.ndarray) -> np.ndarray:
        return values.mean(-1) if classes is None else balanced_mean(values, classes)

    def interval(value, resampled) -> Stat:
        low, high = np.percentile(resampled, [2.5, 97.5])
        return Stat(float(value), float(low), float(high))

    per_draw = headline(draws)
    value = float(headline(delta))
    return Standing(interval(value, own), interval(per_draw.mean(), rand),
                    interval(value - per_draw.mean(), gap), float((per_draw < value).mean()), per_draw)


def deltas(group: EvalGroup, vector: int | None, s: int, split: Split, score: str) -> np.ndarray:
    """Per-question Δ of one setting (``vector``) or of every vector of the group (None: [k, n_q])."""
    if score == "cloze":
        values, base = group.cloze, split.cloze_baseline
    else:
        values, base = group.logit_diff, split.baseline
    picked = values[:, s] if vector is None else values[vector, s]
    return picked - base


def random_group(split: Split, layer: int) -> EvalGroup | None:
    return next((g for g in split.groups.values() if g.method == "random" and g.source_layer == layer), None)


def random_draws(split: Split, layer: int, scale: float, score: str) -> np.ndarray | None:
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


def standing_of(group: EvalGroup, vector: int, s: int, split: Split, score: str) -> Standing | None:
    """One setting's standing against the random draws of its layer at its scale (both signs), in
    ``score``; None where the split has no random directions at that scale."""
    draws = random_draws(split, group.source_layer, float(group.scales[s]), score)
    if draws is None:
        return None
    return against_random(deltas(group, vector, s, split, score), draws,
                          split.polarity if score == "cloze" else None)


def difference(a: np.ndarray, b: np.ndarray, classes: np.ndarray | None = None, seed: int = 0) -> Stat:
    """The headline of a − b, two settings' per-question Δ on the same questions, paired: the
    polarity-paired mean for cloze (``classes``), the plain mean for letter (None)."""
    gap = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return stat(gap, seed) if classes is None else stratified(gap, classes, polarity_weights(classes), seed)
