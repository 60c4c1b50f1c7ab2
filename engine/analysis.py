"""Statistics over stored evals: bootstrap intervals, choosing on validation, reading the store.

Everything here reads plain arrays from the store, so tables and figures are computed from the store
alone. Intervals are 95% percentile bootstraps over questions; Δ is paired (the same resampled
questions for steered and baseline).
"""
from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np

from engine.store import evals_path

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


@dataclass
class Row:
    """Numbers of one setting on one split: a vector (or a pool of random ones) at one scale."""
    scale: float
    survival: Stat  # % of questions with logit diff > 0
    mean_diff: Stat
    delta: Stat  # mean(steered) - mean(baseline)
    mass: Stat  # mean p(positive) + p(negative)


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


def row(scale: float, logit_diff: np.ndarray, mass: np.ndarray, baseline: np.ndarray) -> Row:
    """``logit_diff`` and ``mass`` are [n_q] for one vector or [n_vectors, n_q] for a pool."""
    return Row(scale, stat(100.0 * (logit_diff > 0)), stat(logit_diff), stat(logit_diff - baseline),
               stat(mass))


@dataclass
class Group:
    """One evaluated vector group on one split, as stored."""
    method: str
    run: str
    logit_diff: np.ndarray  # [k, n_scales, n_q]
    mass: np.ndarray
    scales: np.ndarray  # [n_scales], signed
    source_layer: int
    attrs: dict

    @property
    def label(self) -> str:
        return f"{self.method}/{self.run}"


@dataclass
class Split:
    name: str
    question_ids: np.ndarray
    baseline: np.ndarray  # [n_q]
    baseline_mass: np.ndarray
    groups: dict[str, Group]  # by label


def read_split(h5: h5py.File, model_key: str, split: str) -> Split:
    where = evals_path(model_key, split)
    if where not in h5:
        raise KeyError(f"no eval of split {split!r} for {model_key} in the store: run `make eval`")
    node = h5[where]
    groups = {}
    for method in node:
        if not isinstance(node[method], h5py.Group):
            continue
        for run, group in node[method].items():
            attrs = {key: group.attrs[key] for key in group.attrs}
            item = Group(method, run, group["logit_diff"][()], group["answer_mass"][()],
                         group["scales"][()], int(attrs.get("source_layer", -1)), attrs)
            groups[item.label] = item
    return Split(split, node["question_ids"][()].astype(str), node["baseline_logit_diff"][()],
                 node["baseline_answer_mass"][()], groups)


def splits_in_store(h5: h5py.File, model_key: str) -> list[str]:
    where = evals_path(model_key)
    return [name for name in ("val", "test") if where in h5 and name in h5[where]]


def eligible(group: Group, baseline_mass: np.ndarray) -> np.ndarray:
    """[k, n_scales] mask of settings where the model still answers in format."""
    return group.mass.mean(-1) >= MIN_MASS_SHARE * baseline_mass.mean()


def choose(group: Group, split: Split) -> tuple[int, int] | None:
    """(vector, scale index) with the largest mean logit difference among eligible settings."""
    score = np.where(eligible(group, split.baseline_mass), group.logit_diff.mean(-1), -np.inf)
    if not np.isfinite(score).any():
        return None
    vector, scale = np.unravel_index(int(np.argmax(score)), score.shape)
    return int(vector), int(scale)


def choose_for_method(method: str, split: Split) -> tuple[Group, int, int] | None:
    """The method's best (group, vector, scale) on ``split`` (validation, for honest reports)."""
    best = None
    for group in split.groups.values():
        if group.method != method:
            continue
        picked = choose(group, split)
        if picked is None:
            continue
        value = group.logit_diff[picked[0], picked[1]].mean()
        if best is None or value > best[0]:
            best = (value, group, *picked)
    return None if best is None else best[1:]


def methods(split: Split) -> list[str]:
    order = ["caa", "pi", "pi_caa", "melbo", "random"]
    found = {group.method for group in split.groups.values()}
    return [m for m in order if m in found] + sorted(found - set(order))


def scale_rows(group: Group, vector: int | None, split: Split) -> list[Row]:
    """One row per scale: for one vector, or pooled over all vectors when ``vector`` is None."""
    return [row_at(group, vector, s, split) for s in range(len(group.scales))]


def row_at(group: Group, vector: int | None, s: int, split: Split) -> Row:
    """The row of scale index ``s``: for one vector, or pooled over all when ``vector`` is None."""
    diff = group.logit_diff[:, s] if vector is None else group.logit_diff[vector, s]
    mass = group.mass[:, s] if vector is None else group.mass[vector, s]
    return row(float(group.scales[s]), diff, mass, split.baseline)


def nearest_scale(group: Group, scale: float) -> int:
    """Index of the stored (signed) scale of ``group`` nearest to ``scale``."""
    return int(np.argmin(np.abs(group.scales - scale)))


def chosen_on(method: str, val: Split, split: Split) -> tuple[Group, int, int] | None:
    """The method's setting chosen on ``val``, looked up in ``split``: (its group there, vector,
    index of the nearest stored scale). None if nothing was chosen or ``split`` lacks the group."""
    chosen = choose_for_method(method, val)
    if chosen is None or chosen[0].label not in split.groups:
        return None
    group, vector, s = chosen
    there = split.groups[group.label]
    return there, vector, nearest_scale(there, float(group.scales[s]))
