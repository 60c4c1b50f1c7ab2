"""The floor: the distribution of random directions at a given KL cost, to first order, with as
many draws as wanted, validated by measured draws (docs/conventions.md, "Floor and ceiling").

A unit direction r added at cost c has |θ| = √(2c / rᵀF r) to second order in the KL, and moves
question q by |θ| g_qᵀr to first order (g_q: the question's score gradient, F: the KL's Fisher,
here ``FisherSpectrum``). Drawing r uniformly on the sphere (and −r with it: both signs are draws)
gives the headline Δ of thousands of random directions for the price of matrix products.

A setting stands against that distribution by its percentile, and by a p-value that carries both
the spread of directions and question sampling: the probability that a random direction does at
least as well on a bootstrap resample of the questions (resampled within the headline's strata),
``(1 + #{draws at least as good}) / (draws + 1)`` averaged over resamples.

Measured draws (eval's random directions at the same cost) check the prediction question by
question (``validation``); where first order and measurement disagree, the measured draws rule.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from steerlab.lm.fisher import FisherSpectrum
from steerlab.measure.statistics import N_BOOT, question_weights

N_DRAWS = 4000  # random directions of the null (half of them the negatives of the other half)


def random_units(n: int, d: int, seed: int) -> np.ndarray:
    """[n, d] unit directions, uniform on the sphere, the second half the negatives of the first."""
    half = np.random.default_rng(seed).standard_normal((n // 2, d))
    half /= np.linalg.norm(half, axis=1, keepdims=True)
    return np.concatenate([half, -half])


def predicted_deltas(gradients: np.ndarray, spectrum: FisherSpectrum, directions: np.ndarray, cost: float,
                     sizes: np.ndarray | None = None) -> np.ndarray:
    """[n_q, n] first-order Δ of each question for each unit direction at ``cost``: |θ| g_qᵀr, |θ|
    the second-order size √(2c / rᵀF̃r), or ``sizes`` [n] where they are known (measured)."""
    r = np.asarray(directions, dtype=np.float64)
    if sizes is None:
        sizes = np.sqrt(2 * cost / spectrum.quadratic(r))
    return (np.asarray(gradients, dtype=np.float64) @ r.T) * np.asarray(sizes)[None, :]


def resample_weights(classes: np.ndarray | None, n_q: int, seed: int = 0, n_boot: int = N_BOOT) -> np.ndarray:
    """[n_boot, n_q]: row b weighs each question as the headline mean of bootstrap resample b
    does (questions drawn with replacement within each stratum; the full sample's weights are
    ``statistics.headline_weights``)."""
    rng = np.random.default_rng(seed)
    weights = np.zeros((n_boot, n_q))
    for index, weight in question_weights(classes, n_q).values():
        drawn = index[rng.integers(0, len(index), (n_boot, len(index)))]
        for b in range(n_boot):
            weights[b] += np.bincount(drawn[b], minlength=n_q) * (weight / len(index))
    return weights


@dataclass
class Null:
    """The first-order null of one score at one cost."""
    cost: float
    headline: np.ndarray  # [n_draws] each draw's headline Δ on the questions as they are
    resampled: np.ndarray  # [n_boot, n_draws] the same on each bootstrap resample of the questions
    weights: np.ndarray  # [n_q] the headline's weights
    boot: np.ndarray  # [n_boot, n_q] the resamples' weights

    def band(self, low: float = 5.0, high: float = 95.0) -> tuple[float, float]:
        """The ``low``–``high`` percentile band of the draws' headline Δ."""
        return tuple(float(v) for v in np.percentile(self.headline, [low, high]))

    @property
    def sd(self) -> float:
        return float(self.headline.std(ddof=1))


def first_order_null(gradients: np.ndarray, classes: np.ndarray | None, spectrum: FisherSpectrum, cost: float,
                     *, n_draws: int = N_DRAWS, seed: int = 0, boot_seed: int = 0) -> Null:
    """The null of a score whose per-question gradients are ``gradients`` [n_q, d] (``classes``:
    polarity classes for cloze, None for letter) at ``cost`` nats per token."""
    n_q = len(gradients)
    deltas = predicted_deltas(gradients, spectrum, random_units(n_draws, spectrum.d_model, seed), cost)
    weights = np.zeros(n_q)
    for index, weight in question_weights(classes, n_q).values():
        weights[index] = weight / len(index)
    boot = resample_weights(classes, n_q, boot_seed)
    return Null(cost, weights @ deltas, boot @ deltas, weights, boot)


@dataclass
class NullStanding:
    """A setting's measured Δ against the first-order null at its cost."""
    delta: float  # its headline Δ
    percentile: float  # share of the null's draws below it, in %
    p_value: float  # P(a random direction does at least as well), questions resampled
    band: tuple[float, float]  # the null's 5th–95th percentile


def stand(null: Null, per_question: np.ndarray) -> NullStanding:
    """Where a setting with per-question Δ ``per_question`` [n_q] stands in ``null``."""
    delta = float(null.weights @ per_question)
    own = null.boot @ np.asarray(per_question, dtype=np.float64)  # [n_boot]
    at_least = (null.resampled >= own[:, None]).sum(1)  # [n_boot]
    p_value = float(((1 + at_least) / (null.headline.size + 1)).mean())
    return NullStanding(delta, 100.0 * float((null.headline < delta).mean()), p_value, null.band())


@dataclass
class Validation:
    """First order against measured random draws at one cost, in one score."""
    cost: float
    n_draws: int
    correlation: float  # mean over draws of the across-question correlation of measured and predicted Δ_q
    # least-squares slope of the draws' measured headline on their predicted one (at measured |θ|)
    slope: float
    measured_sd: float  # sd of the measured draws' headline Δ
    predicted_sd: float  # sd of the null's headline Δ
    size_ratio: float  # mean of measured |θ| / predicted |θ| over the draws (the KL's second order)
    size_ratio_sd: float


def validation(gradients: np.ndarray, spectrum: FisherSpectrum, null: Null, directions: np.ndarray,
               sizes: np.ndarray, measured: np.ndarray) -> Validation:
    """Measured draws (unit ``directions`` [n, d] added at calibrated |θ| ``sizes`` [n], their
    per-question Δ ``measured`` [n, n_q]) against first order at ``null``'s cost."""
    directions = np.asarray(directions, dtype=np.float64)
    directions = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    predicted = predicted_deltas(gradients, spectrum, directions, null.cost, np.abs(sizes)).T  # [n, n_q]
    measured = np.asarray(measured, dtype=np.float64)
    correlations = [np.corrcoef(m, p)[0, 1] for m, p in zip(measured, predicted)
                    if m.std() > 0 and p.std() > 0]
    headline_m, headline_p = measured @ null.weights, predicted @ null.weights
    slope = float(headline_m @ headline_p / (headline_p @ headline_p)) if headline_p.any() else float("nan")
    predicted_size = np.sqrt(2 * null.cost / spectrum.quadratic(directions))
    ratio = np.abs(sizes) / predicted_size
    return Validation(null.cost, len(measured),
                      float(np.mean(correlations)) if correlations else float("nan"), slope,
                      float(headline_m.std(ddof=1)) if len(measured) > 1 else float("nan"), null.sd,
                      float(ratio.mean()), float(ratio.std(ddof=1)) if len(ratio) > 1 else 0.0)
