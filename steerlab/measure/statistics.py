"""Statistics over per-question numbers, from plain arrays (nothing here reads the store):
95% percentile bootstrap intervals over questions, Δ paired (the same resampled questions for
steered and baseline); the rows a table shows at one scale (letter: share, order-mean logit
difference, letter shift, consistency, answer mass; cloze: the polarity-paired Δ, each class's Δ,
the polarity shift); and a setting's standing against random directions at the same cost.

Cloze numbers are polarity-paired: the yes and no class means weigh the same, the pair and the
other class by their sizes (``steerlab.questions.polarity``), with intervals from a bootstrap
that resamples questions within each class.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from steerlab.questions.polarity import balanced_mean, class_masks, polarity_weights

N_BOOT = 2000


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


def headline_weights(classes: np.ndarray | None, n_q: int) -> np.ndarray:
    """[n_q] each question's weight in the headline mean (they sum to 1): the polarity-paired
    mean's for cloze (``classes``), the plain mean's for letter (None)."""
    weights = np.zeros(n_q)
    for index, weight in question_weights(classes, n_q).values():
        weights[index] = weight / len(index)
    return weights


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


def difference(a: np.ndarray, b: np.ndarray, classes: np.ndarray | None = None, seed: int = 0) -> Stat:
    """The headline of a − b, two settings' per-question Δ on the same questions, paired: the
    polarity-paired mean for cloze (``classes``), the plain mean for letter (None)."""
    gap = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return stat(gap, seed) if classes is None else stratified(gap, classes, polarity_weights(classes), seed)


def holm(p_values: list[float], alpha: float = 0.05) -> tuple[list[float], list[bool]]:
    """Holm's step-down correction of the claims with these p-values: each claim's adjusted
    p-value (max over the claims before it in ascending order of (m − i) · p_(i), capped at 1) and
    whether it holds at family-wise level ``alpha``. The family is every claim passed together."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [1.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted, [a <= alpha for a in adjusted]


def paired_p_value(a: np.ndarray, b: np.ndarray, classes: np.ndarray | None = None, seed: int = 0) -> float:
    """Two-sided bootstrap p-value that the headline of a − b (paired per question; polarity-
    paired for cloze) is 0: twice the share of resamples on the far side of 0, at least 1/N_BOOT."""
    gap = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    rng = np.random.default_rng(seed)
    resampled = np.zeros(N_BOOT)
    for index, weight in question_weights(classes, gap.shape[-1]).values():
        resampled += weight * gap[index[rng.integers(0, len(index), (N_BOOT, len(index)))]].mean(1)
    far = min((resampled <= 0).mean(), (resampled >= 0).mean())
    return float(min(1.0, max(2 * far, 1.0 / N_BOOT)))


def ratio(a: np.ndarray, b: np.ndarray, classes: np.ndarray | None = None, seed: int = 0) -> Stat:
    """The headline of ``a`` over the headline of ``b`` (per-question values on the same questions;
    polarity-paired for cloze), with a 95% bootstrap interval that resamples the questions of both
    together. An interval whose resamples put b's headline at or across 0 is as wide as that says."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    rng = np.random.default_rng(seed)
    top, bottom = np.zeros(N_BOOT), np.zeros(N_BOOT)
    value_top = value_bottom = 0.0
    for index, weight in question_weights(classes, a.shape[-1]).values():
        chosen = index[rng.integers(0, len(index), (N_BOOT, len(index)))]
        top += weight * a[chosen].mean(1)
        bottom += weight * b[chosen].mean(1)
        value_top += weight * a[index].mean()
        value_bottom += weight * b[index].mean()
    with np.errstate(divide="ignore", invalid="ignore"):
        low, high = np.percentile(top / bottom, [2.5, 97.5])
    return Stat(value_top / value_bottom if value_bottom else float("nan"), float(low), float(high))
