"""Dose–response to breakdown: chosen directions at a ladder of KL costs, each measured until the
model breaks (docs/conventions.md, "At what cost").

For each direction (a method's val choice with its sign, or a random direction) and each cost of
an increasing ladder: the |θ| at which it costs that many nats per token on the val neutral texts
(eval's search), both scores on the questions, and on the test neutral texts the KL, the top-1
agreement with the unsteered model and one steered greedy sample per sample prompt. A direction
stops at the first cost where its top-1 agreement falls below ``BREAKDOWN`` (that cost is still
measured: it is where the model breaks) or that its search cannot reach.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from steerlab.lm.generate import generate_ids
from steerlab.lm.vector import SteeringVector
from steerlab.measure.kl_search import MAX_UNITS, UNIT_START, kl_norms
from steerlab.measure.scores import score
from steerlab.measure.side_effects import ScoredText
from steerlab.questions.cloze_form import ClozeItem
from steerlab.questions.prompts import AnswerTokens

BREAKDOWN = 0.5  # top-1 agreement with the unsteered model on neutral text below which the model is broken


@dataclass
class DoseResult:
    """Every measurement of the ladder; NaN (or empty text) where a direction had stopped."""
    costs: list[float]
    norms: np.ndarray  # [n_dir, n_cost] |θ| found for each cost (NaN: not measured)
    reached: np.ndarray  # [n_dir, n_cost] bool
    letter: np.ndarray  # [n_dir, n_cost, n_orders, n_q] logit differences
    cloze: np.ndarray  # [n_dir, n_cost, 2, n_q] summed log-probs
    kl: np.ndarray  # [n_dir, n_cost, n_texts]
    top1: np.ndarray  # [n_dir, n_cost, n_texts]
    samples: list[list[list[str]]] = field(default_factory=list)  # [n_dir][n_cost][n_sample_prompts]
    baseline_letter: np.ndarray | None = None  # [n_orders, n_q]
    baseline_cloze: np.ndarray | None = None  # [2, n_q]
    baseline_samples: list[str] = field(default_factory=list)


def check_costs(costs: list[float]) -> None:
    """Refuse a ladder that makes no sense: empty, not positive, not increasing, not finite."""
    if (not costs or not all(np.isfinite(c) and c > 0 for c in costs)
            or any(b <= a for a, b in zip(costs, costs[1:]))):
        raise ValueError(f"dose costs must be positive, finite and increasing, got {costs}")


def dose_response(model: torch.nn.Module, tokenizer, directions: np.ndarray, costs: list[float], *,
                  layer: int, unit: float, answers: list[AnswerTokens], cloze: list[ClozeItem],
                  calibration_texts: list[ScoredText], texts: list[ScoredText],
                  sample_prompts: list[tuple[int, ...]], sample_tokens: int, batch_size: int,
                  settings_per_pass: int, saved: dict, save: Callable[[dict], None],
                  progress: Callable[[int], None] | None = None) -> DoseResult:
    """The ladder for ``directions`` [n_dir, d] (signed: each is added as it points) at ``costs``
    (nats per token, increasing) after ``layer``, whose median ‖h_S‖ is ``unit`` (the search's
    first probe and bound scale with it). ``answers`` (both orders, order-major) and ``cloze`` are
    the same questions. ``saved``/``save``: a checkpoint's arrays, one cost at a time."""
    check_costs(costs)
    pad = tokenizer.pad_token_id
    n_dir, n_cost, n_q = len(directions), len(costs), len(cloze)
    n_orders = len(answers) // n_q
    units = torch.from_numpy(np.asarray(directions, dtype=np.float64))
    units = units / units.norm(dim=1, keepdim=True)
    out = DoseResult(list(costs), np.full((n_dir, n_cost), np.nan), np.zeros((n_dir, n_cost), bool),
                     np.full((n_dir, n_cost, n_orders, n_q), np.nan),
                     np.full((n_dir, n_cost, 2, n_q), np.nan),
                     np.full((n_dir, n_cost, len(texts)), np.nan),
                     np.full((n_dir, n_cost, len(texts)), np.nan),
                     [[[] for _ in costs] for _ in range(n_dir)])
    zero = torch.zeros(1, units.shape[1], dtype=torch.float64)
    if "baseline/letter" not in saved:
        scored = score(model, answers, n_orders, [], source_layer=layer, thetas=zero, pad_id=pad,
                       batch_size=batch_size, settings_per_pass=settings_per_pass, cloze=cloze)
        plain = generate_ids(model, sample_prompts, None, sample_tokens, pad_id=pad)
        saved |= {"baseline/letter": scored.logit_diff[0], "baseline/cloze": scored.cloze[0],
                  "baseline/samples": np.array([tokenizer.decode(t, skip_special_tokens=True)
                                                for t in plain.tokens])}
        save(saved)
    out.baseline_letter, out.baseline_cloze = saved["baseline/letter"], saved["baseline/cloze"]
    out.baseline_samples = [str(s) for s in saved["baseline/samples"]]
    active = np.ones(n_dir, bool)
    for c, cost in enumerate(costs):
        key = f"c{c}"
        if f"{key}/done" not in saved:
            rows = np.flatnonzero(active)
            found = kl_norms(model, calibration_texts, layer, units[rows], targets=[cost], pad_id=pad,
                             start=UNIT_START * unit, max_norm=MAX_UNITS * unit, batch_size=batch_size,
                             settings_per_pass=settings_per_pass)
            reached = found.reached[:, 0]
            norms = found.norms[:, 0]
            measured = rows[reached]
            part = {"rows": rows, "norms": norms, "reached": reached}
            if len(measured):
                thetas = units[measured] * torch.from_numpy(norms[reached])[:, None]
                scored = score(model, answers, n_orders, texts, source_layer=layer, thetas=thetas, pad_id=pad,
                               batch_size=batch_size, settings_per_pass=settings_per_pass, progress=progress,
                               cloze=cloze)
                samples = []
                for theta in thetas:
                    steered = generate_ids(model, sample_prompts, SteeringVector(theta, layer, "auto"),
                                           sample_tokens, pad_id=pad)
                    samples.append([tokenizer.decode(t, skip_special_tokens=True) for t in steered.tokens])
                part |= {"letter": scored.logit_diff, "cloze": scored.cloze, "kl": scored.kl,
                         "top1": scored.top1, "samples": np.array(samples)}
            saved |= {f"{key}/{name}": value for name, value in part.items()}
            saved[f"{key}/done"] = np.ones(1)
            save(saved)
        rows, reached = saved[f"{key}/rows"], saved[f"{key}/reached"].astype(bool)
        out.norms[rows, c], out.reached[rows, c] = saved[f"{key}/norms"], reached
        measured = rows[reached]
        if len(measured):
            out.letter[measured, c], out.cloze[measured, c] = saved[f"{key}/letter"], saved[f"{key}/cloze"]
            out.kl[measured, c], out.top1[measured, c] = saved[f"{key}/kl"], saved[f"{key}/top1"]
            for i, texts_of in zip(measured, saved[f"{key}/samples"]):
                out.samples[i][c] = [str(s) for s in texts_of]
        active[rows[~reached]] = False  # out of its search's reach: no larger cost either
        active[measured[out.top1[measured, c].mean(1) < BREAKDOWN]] = False  # broken here
        if not active.any():
            break
    return out


# ---- reading a stored ladder ---------------------------------------------------------------------


@dataclass
class DoseCurve:
    """One direction's ladder: per cost its measured KL, top-1 agreement and Δ in each score (with
    95% intervals), and the first-order Δ predicted at the |θ| it was measured at."""
    label: str  # method/run/index, or random/<i>/<sign>
    costs: np.ndarray  # [n_cost] the targets
    kl: np.ndarray  # [n_cost] measured mean KL on the test neutral texts (NaN: not measured)
    top1: np.ndarray  # [n_cost]
    delta: dict[str, list]  # score -> [n_cost] Stat or None
    predicted: dict[str, np.ndarray]  # score -> [n_cost] first-order headline Δ (NaN without gradients)
    samples: list[list[str]]  # [n_cost][sample prompt]

    @property
    def random(self) -> bool:
        return self.label.startswith("random/")

    def measured(self) -> np.ndarray:
        return np.isfinite(self.kl)

    def broken_at(self) -> float | None:
        """The first cost where top-1 agreement fell below BREAKDOWN (None: it never did)."""
        broken = self.measured() & (self.top1 < BREAKDOWN)
        return float(self.costs[np.argmax(broken)]) if broken.any() else None


def dose_curves(data: dict, gradients: dict[str, np.ndarray] | None = None) -> list[DoseCurve]:
    """The curves of a stored ladder (``steerlab.store.read_dose``'s datasets); ``gradients``
    (score -> [n_q, d], in the ladder's question order) adds the first-order prediction."""
    from steerlab.measure.cloze import cloze_preference
    from steerlab.measure.statistics import balanced_stat, headline_weights, stat

    classes = data["polarity"]
    letter = data["logit_diff_by_order"].astype(np.float64).mean(2)  # [n_dir, n_cost, n_q]
    base_letter = data["baseline_logit_diff_by_order"].astype(np.float64).mean(0)
    cloze = cloze_preference(data["cloze_logprob"], data["cloze_n_tokens"])  # [n_dir, n_cost, n_q]
    base_cloze = cloze_preference(data["baseline_cloze_logprob"], data["cloze_n_tokens"])
    out = []
    for i, label in enumerate(data["labels"]):
        kl = np.nanmean(data["kl"][i].astype(np.float64), axis=-1) if np.isfinite(data["kl"][i]).any() else \
            np.full(len(data["costs"]), np.nan)
        deltas = {"letter": [], "cloze": []}
        predicted = {score: np.full(len(data["costs"]), np.nan) for score in deltas}
        unit = data["directions"][i].astype(np.float64)
        unit = unit / np.linalg.norm(unit)
        for c in range(len(data["costs"])):
            if not np.isfinite(kl[c]):
                deltas["letter"].append(None)
                deltas["cloze"].append(None)
                continue
            deltas["letter"].append(stat(letter[i, c] - base_letter))
            deltas["cloze"].append(balanced_stat(cloze[i, c] - base_cloze, classes))
            if gradients is not None:
                for score in deltas:
                    weights = headline_weights(classes if score == "cloze" else None, len(classes))
                    predicted[score][c] = (float(data["norms"][i, c])
                                           * float(weights @ (gradients[score] @ unit)))
        with np.errstate(invalid="ignore"):
            top1 = np.array([np.mean(row) if np.isfinite(row).all() else np.nan for row in data["top1"][i]])
        out.append(DoseCurve(str(label), np.asarray(data["costs"]), kl, top1, deltas, predicted,
                             [list(map(str, row)) for row in data["samples"][i]]))
    return out


def leaves_band(curve: DoseCurve, score: str, bands: dict[float, tuple[float, float]]) -> float | None:
    """The first cost where the curve's interval lies wholly outside the random band there
    (``bands``: cost -> the null's 5th–95th percentile), or None."""
    for cost, d in zip(curve.costs, curve.delta[score]):
        band = bands.get(float(cost))
        if d is not None and band is not None and (d.low > band[1] or d.high < band[0]):
            return float(cost)
    return None


def largest_before_breakdown(curve: DoseCurve, score: str):
    """(cost, Stat) of the largest Δ measured while top-1 agreement held (≥ BREAKDOWN)."""
    best = None
    for cost, d, top1 in zip(curve.costs, curve.delta[score], curve.top1):
        if d is not None and top1 >= BREAKDOWN and (best is None or d.value > best[1].value):
            best = (float(cost), d)
    return best


def first_order_fails(curve: DoseCurve, score: str, tolerance: float = 2.0) -> float | None:
    """The first cost where the measured Δ and the first-order prediction differ by more than a
    factor ``tolerance`` (or in sign, where both are clear of their noise), or None."""
    for cost, d, p in zip(curve.costs, curve.delta[score], curve.predicted[score]):
        if d is None or not np.isfinite(p):
            continue
        clear = d.low > 0 or d.high < 0
        if clear and (np.sign(d.value) != np.sign(p) or not 1 / tolerance <= d.value / p <= tolerance):
            return float(cost)
    return None
