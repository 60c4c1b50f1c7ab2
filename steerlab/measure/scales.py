"""Scales: how big θ is, in the three units a scale can be read in (SCALE_UNIT), and what a
vector costs.

- ``abs``: a scale is an L2 norm of θ.
- ``resid``: a scale is a fraction of ‖h_S‖, the typical norm of the residual stream at the
  source layer, so that one grid means the same on models whose residual streams live at
  different norms. The norm is measured once per model, source layer and behaviour over the real
  tokens of the first ``NORM_PROMPTS`` train prompts (as eval builds them, up to the generation
  prompt) and stored at /<model>/<behavior>/norms/L<S>; every runner reads that one number. It
  is the **median** per-token norm, not the mean: the first token of every sequence is an
  attention sink whose norm is orders of magnitude above every other token's, so a mean is set by
  one position that steering never needs to move (docs/DESIGN.md, "Scales"). Mean and quantiles
  are stored beside it.
- ``kl`` (the default): a scale t is the |θ| at which that direction, with that sign, costs t
  nats per token of mean KL(unsteered ‖ steered) on the val neutral texts, the statistic eval
  reports. A norm means a different cost for every direction and every model; the cost means the
  same on all (docs/usage.md, "Scales that travel between models"). The search (``kl_norms``) is
  a secant method on log KL against log |θ|, where the curve is close to a line of slope 2 (KL is
  quadratic in θ for small θ): every (direction, target) starts from one shared probe, and each
  round probes all that are not yet within ``rtol`` of their target in one stacked pass of the
  fast path (``steerlab.measure.side_effects``). The norm returned is the probe nearest the
  target, so its KL is measured, not extrapolated; a target a direction cannot reach below
  ``max_norm`` is reported as not reached.

From Python, ``at_cost`` and ``size_at_cost`` size a ``SteeringVector`` by its cost.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace
from importlib.resources import files
from pathlib import Path
from typing import Literal, Sequence, get_args

import numpy as np
import torch

from steerlab.base.errors import UserError
from steerlab.base.parallel import ranks
from steerlab.base.progress import say, step
from steerlab.lm.generate import generate_ids, prompt_ids
from steerlab.lm.model import LoadedModel, as_loaded
from steerlab.lm.segment import residual_norms
from steerlab.lm.steered import QUESTIONS_PER_PASS, SETTINGS_PER_PASS
from steerlab.lm.vector import SteeringVector
from steerlab.measure.grid import random_directions, signed_scales
from steerlab.measure.side_effects import ScoredText, side_effects
from steerlab.questions.data import load_items, load_prompts
from steerlab.store import (
    VectorGroup,
    code_version,
    file_checksum,
    is_current,
    norms_path,
    now,
    read_norm,
    run_attrs,
    write_norm,
    writing,
)
from steerlab.store.groups import QUANTILES, ResidualNorm

NORM_PROMPTS = 128
ScaleUnit = Literal["kl", "resid", "abs"]
SCALE_UNITS: tuple[ScaleUnit, ...] = get_args(ScaleUnit)


@torch.no_grad()
def residual_norm(model: torch.nn.Module, sequences: list[tuple[int, ...]], layer: int, pad_id: int,
                  batch_size: int = 16) -> ResidualNorm:
    """‖h_S‖ of every real token of ``sequences`` after layer ``layer`` (fp64), summarised."""
    values = residual_norms(model, sequences, layer, pad_id, batch_size).numpy()
    return ResidualNorm(layer, float(np.median(values)), float(values.mean()),
                        tuple(float(q) for q in np.quantile(values, QUANTILES)), len(values), len(sequences))


def absolute(scales: list[float], unit: str, norm: float | None) -> list[float]:
    """The L2 norms of θ that ``scales`` mean: fractions of ``norm`` (unit ``resid``) or
    themselves (unit ``abs``). Unit ``kl`` has no one norm per scale: each direction's is found
    by ``kl_norms`` (``Calibrator``, ``signed_size_at_cost``)."""
    if unit == "abs":
        return list(scales)
    if unit == "kl":
        raise ValueError("a scale in unit kl is a cost, not a norm: calibrate it per direction (kl_norms, Calibrator)")
    if unit != "resid":
        raise ValueError(f"unit must be one of {SCALE_UNITS}, got {unit!r}")
    if norm is None or not norm > 0:
        raise ValueError(f"a scale in units of ‖h_S‖ needs a positive norm, got {norm}")
    return [float(s) * norm for s in scales]


def residual_units(store: str | Path, lm: LoadedModel, layers, *, model: str, dtype: str,
                   behavior: str, data: str | Path) -> dict[int, ResidualNorm]:
    """The unit at each of ``layers`` for ``behavior`` (its items ``data``): read from ``store``
    when current (same model, dtype, data and code), else measured once and written (rank 0
    decides and writes; every rank measures, so none waits). ``model`` and ``dtype`` are
    recorded as given."""
    version = code_version("steerlab.measure.scales:residual_units", "steerlab.lm.model:load_model")
    found, missing = {}, []
    for layer in sorted(set(layers)):
        settings = {"model": model, "dtype": dtype, "behavior": behavior,
                    "data_checksum": file_checksum(data), "layer": layer, "n_prompts": NORM_PROMPTS}
        where = norms_path(lm.key, behavior, layer)
        if ranks().same(is_current(store, where, settings, version)):
            found[layer] = read_norm(store, lm.key, behavior, layer)
        else:
            missing.append((layer, settings))
    if missing:
        items = load_items(data, "train")[:NORM_PROMPTS]
        sequences = prompt_ids(lm.tokenizer, [item.question for item in items])
        for layer, settings in missing:
            started, t0 = now(), time.perf_counter()
            with step(f"‖h_S‖ at layer {layer} over {len(sequences)} {behavior} train prompts (the scale unit)"):
                found[layer] = residual_norm(lm.model, sequences, layer, lm.tokenizer.pad_token_id)
            if ranks().writer:
                with writing(store) as h5:
                    write_norm(h5, lm, behavior, found[layer],
                               run_attrs(settings, version, started, time.perf_counter() - t0))
    for layer, norm in sorted(found.items()):
        say(f"  scale unit at layer {layer}: median ‖h_S‖ = {norm.median:.1f} (mean {norm.mean:.1f}, "
            f"{norm.n_tokens} tokens)")
    return found


MAX_ROUNDS = 6
UNIT_START = 1 / 32  # the first probe, in units of the median ‖h_S‖ (quadratic regime on both models)
MAX_UNITS = 4.0  # the largest |θ| searched, in units of the median ‖h_S‖
RTOL = 0.1  # a probe within 10% of its target KL is accepted (about 5% in |θ|)
# the slope of log KL against log |θ| the secant may assume: quadratic at small θ, steeper above
MIN_SLOPE, MAX_SLOPE = 1.0, 6.0


@dataclass
class Calibration:
    """|θ| per (direction, target), and what was measured there."""
    norms: np.ndarray  # [n_directions, n_targets] > 0
    kl: np.ndarray  # [n_directions, n_targets] mean KL measured at that norm
    reached: np.ndarray  # [n_directions, n_targets] bool: within rtol of the target
    probes: int  # settings scored in all


def mean_kl(model: torch.nn.Module, texts: list[ScoredText], layer: int, thetas: torch.Tensor, *, pad_id: int,
            batch_size: int = QUESTIONS_PER_PASS, settings_per_pass: int = SETTINGS_PER_PASS) -> np.ndarray:
    """Mean over ``texts`` of each θ row's per-token KL(unsteered ‖ steered): eval's KL column."""
    return side_effects(model, texts, layer, thetas, pad_id=pad_id, batch_size=batch_size, settings_per_pass=settings_per_pass).kl.mean(1).numpy()


def kl_norms(model: torch.nn.Module, texts: list[ScoredText], layer: int, directions: torch.Tensor,
             *, targets: list[float], pad_id: int, start: float, max_norm: float, rtol: float = RTOL,
             max_rounds: int = MAX_ROUNDS, batch_size: int = QUESTIONS_PER_PASS,
             settings_per_pass: int = SETTINGS_PER_PASS) -> Calibration:
    """For each row of ``directions`` [n, d] (its sign included) and each target KL (nats per
    token, > 0), the |θ| ≤ ``max_norm`` at which θ = |θ| · unit(row) added after ``layer`` costs
    that mean KL on ``texts``. ``start`` is the first probe's |θ| for every row (a small fraction
    of ‖h_S‖ keeps it in the quadratic regime)."""
    if not texts:
        raise ValueError("a KL calibration needs neutral texts")
    if any(not t > 0 for t in targets):
        raise ValueError(f"KL targets must be positive, got {targets}")
    if not 0 < start <= max_norm:
        raise ValueError(f"the first probe must lie in (0, max_norm], got {start} and {max_norm}")
    units = directions.double() / directions.double().norm(dim=1, keepdim=True)
    n, m = len(units), len(targets)
    target = np.broadcast_to(np.asarray(targets, dtype=np.float64), (n, m))

    def measure(rows: np.ndarray, norms: np.ndarray) -> np.ndarray:
        thetas = torch.from_numpy(norms)[:, None] * units[torch.from_numpy(rows)]
        return mean_kl(model, texts, layer, thetas, pad_id=pad_id, batch_size=batch_size, settings_per_pass=settings_per_pass)

    first = measure(np.arange(n), np.full(n, float(start)))
    probes = n
    # the last two probes of each (direction, target): |θ| and KL
    norm_prev = np.full((n, m), float(start))
    kl_prev = np.repeat(first[:, None], m, axis=1)
    norm_last, kl_last = norm_prev.copy(), kl_prev.copy()
    norm_best, kl_best = norm_last.copy(), kl_last.copy()  # the probe nearest each target so far

    def miss(kl: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.abs(np.log(np.maximum(kl, 1e-300) / target))

    def within(kl: np.ndarray) -> np.ndarray:
        return np.abs(kl / target - 1) <= rtol

    slope = np.full((n, m), 2.0)
    for _ in range(max_rounds):
        done = within(kl_last)
        capped = (norm_last >= max_norm) & (kl_last < target)
        todo = ~done & ~capped
        if not todo.any():
            break
        moved = norm_last != norm_prev
        with np.errstate(divide="ignore", invalid="ignore"):
            secant = np.log(kl_last / kl_prev) / np.log(norm_last / norm_prev)
        slope = np.where(moved & np.isfinite(secant), np.clip(secant, MIN_SLOPE, MAX_SLOPE), slope)
        with np.errstate(divide="ignore"):
            step = np.where(kl_last > 0, (target / np.maximum(kl_last, 1e-300)) ** (1 / slope), 64.0)
        proposed = np.clip(norm_last * np.clip(step, 1 / 64, 64), None, max_norm)
        where = np.nonzero(todo)
        kl_new = measure(where[0], proposed[where])
        probes += len(kl_new)
        norm_prev[where], kl_prev[where] = norm_last[where], kl_last[where]
        norm_last[where], kl_last[where] = proposed[where], kl_new
        # a probe within the tolerance beats one outside it, even one nearer in log KL (1.101 x the
        # target against 0.905 x), so a search that stopped on a reached target keeps that probe
        now_in, best_in = within(kl_last), within(kl_best)
        closer = (now_in & ~best_in) | ((now_in == best_in) & (miss(kl_last) < miss(kl_best)))
        norm_best, kl_best = np.where(closer, norm_last, norm_best), np.where(closer, kl_last, kl_best)
    reached = within(kl_best)
    return Calibration(norm_best, kl_best, reached, probes)


def out_of_reach(found: Calibration, targets: list[float], max_norm: float) -> None:
    """A UserError when some target is beyond every direction: each stopped at the largest |θ| the
    search allows with a smaller KL, so no setting would ever cost it (before any eval work)."""
    capped = (found.norms >= max_norm * (1 - 1e-9)) & (found.kl < np.asarray(targets)[None, :])
    beyond = [t for j, t in enumerate(targets) if capped[:, j].all()]
    if beyond:
        largest = float(found.kl[capped].max())
        raise UserError(f"KL target(s) {', '.join(f'{t:g}' for t in beyond)} are out of reach: at |θ| ≤ {max_norm:.3g} "
                        f"({MAX_UNITS:g} × the median ‖h_S‖) no direction costs more than {largest:.3g} nats per token "
                        f"on the neutral texts; use SCALES of at most {largest:.3g}")


@dataclass
class GroupCalibration:
    """One vector group's calibration, in eval's layout: [k, n_signed] with the signed targets
    of ``steerlab.measure.grid.signed_scales`` (a sign-free group's −t is −v at cost t)."""
    norms: np.ndarray  # signed |θ|: the sign of the scale
    kl: np.ndarray
    reached: np.ndarray


@dataclass
class Calibrator:
    """The calibrations of eval's groups at ``targets`` (nats per token) on ``texts`` (the val
    neutral texts), each group's computed once however many splits use it. ``units`` is the
    median ‖h_S‖ per source layer: the first probe is UNIT_START of it, the largest MAX_UNITS."""
    model: torch.nn.Module
    texts: list[ScoredText]
    pad_id: int
    units: dict[int, float]
    targets: list[float]
    batch_size: int = QUESTIONS_PER_PASS
    settings_per_pass: int = SETTINGS_PER_PASS
    done: dict[str, GroupCalibration] = field(default_factory=dict)

    def adopt(self, found: dict[str, GroupCalibration]) -> None:
        """Take calibrations found before (keyed by ``key``), e.g. a stored val eval's, for the
        groups this one has not searched itself."""
        for name, calibration in found.items():
            self.done.setdefault(name, calibration)

    def of(self, groups: list[VectorGroup]) -> dict[str, GroupCalibration]:
        """Each group's calibration by label; the new ones searched together, a layer at a time.
        A group is known by its vectors, not its name (behaviours share run names)."""
        new = {calibration_key(g): g for g in groups if calibration_key(g) not in self.done}
        for layer in sorted({g.source_layer for g in new.values()}):
            here = [g for g in new.values() if g.source_layer == layer]
            rows, where = [], []  # every (group, vector, sign) as one signed direction
            for g in here:
                for v, vector in enumerate(np.asarray(g.vectors, dtype=np.float64)):
                    for sign in ((-1.0, 1.0) if g.sign_free else (1.0,)):
                        where.append((calibration_key(g), v, sign))
                        rows.append(sign * torch.from_numpy(vector))
            unit = self.units[layer]
            found = kl_norms(self.model, self.texts, layer, torch.stack(rows), targets=self.targets, pad_id=self.pad_id,
                             start=UNIT_START * unit, max_norm=MAX_UNITS * unit, batch_size=self.batch_size,
                             settings_per_pass=self.settings_per_pass)
            say(f"  KL calibration at layer {layer}: {len(rows)} directions × {len(self.targets)} targets "
                f"in {found.probes} probes; {int(found.reached.sum())} of {found.reached.size} reached")
            out_of_reach(found, self.targets, MAX_UNITS * unit)
            for g in here:
                shape = (len(g.vectors), len(signed_scales(self.targets, g.sign_free)))
                self.done[calibration_key(g)] = GroupCalibration(np.zeros(shape), np.zeros(shape), np.zeros(shape, bool))
            m = len(self.targets)
            for row, (name, v, sign) in enumerate(where):
                cal = self.done[name]
                # signed layout: −t_m .. −t_1, t_1 .. t_m for sign-free groups, t_1 .. t_m otherwise
                columns = range(m - 1, -1, -1) if sign < 0 else range(cal.norms.shape[1] - m, cal.norms.shape[1])
                for target, column in enumerate(columns):
                    # as the store keeps it (float32): a split scored in a later run takes val's |θ|
                    # from the store, and gets exactly the θ an uninterrupted run used
                    cal.norms[v, column] = np.float32(sign * found.norms[row, target])
                    cal.kl[v, column] = found.kl[row, target]
                    cal.reached[v, column] = found.reached[row, target]
        return {g.label: self.done[calibration_key(g)] for g in groups}


def calibration_arrays(calibrator: Calibrator) -> dict[str, np.ndarray]:
    """Every calibration ``calibrator`` holds, as arrays a checkpoint keeps (``saved_calibrations``
    reads them back)."""
    arrays = {}
    for n, (key, cal) in enumerate(sorted(calibrator.done.items())):
        arrays |= {f"cal/{n}/key": np.array(key), f"cal/{n}/norms": cal.norms, f"cal/{n}/kl": cal.kl,
                   f"cal/{n}/reached": cal.reached}
    return arrays


def saved_calibrations(saved: dict[str, np.ndarray]) -> dict[str, GroupCalibration]:
    """The calibrations among a checkpoint's arrays (``calibration_arrays``), by calibration key."""
    found, n = {}, 0
    while f"cal/{n}/key" in saved:
        found[str(saved[f"cal/{n}/key"])] = GroupCalibration(saved[f"cal/{n}/norms"], saved[f"cal/{n}/kl"],
                                                             saved[f"cal/{n}/reached"].astype(bool))
        n += 1
    return found


def calibration_key(group: VectorGroup) -> str:
    """What a calibration depends on of a group: its layer, sign-freedom and vectors."""
    digest = hashlib.sha256(np.ascontiguousarray(group.vectors, dtype=np.float32).tobytes()).hexdigest()[:16]
    return f"{group.label}@L{group.source_layer}{'±' if group.sign_free else '+'}{digest}"


RADIUS_DIRECTIONS = 4  # random directions MELBO's radius is calibrated on (SCALE_UNIT=kl)


def random_radius(model: torch.nn.Module, texts: list[ScoredText], layer: int, target: float, *, pad_id: int,
                  unit: float, seed: int, n: int = RADIUS_DIRECTIONS) -> tuple[float, Calibration]:
    """A size for directions not found yet (MELBO's radius) in unit kl: the median |θ| at which
    ``n`` random directions (eval's control's, ``steerlab.measure.grid.random_directions``) cost ``target``
    nats per token on ``texts``. ``unit`` is the median ‖h_S‖ (the search's first probe and
    ceiling scale with it)."""
    directions = random_directions(n, int(model.config.hidden_size), seed, layer)
    found = kl_norms(model, texts, layer, directions, targets=[target], pad_id=pad_id, start=UNIT_START * unit, max_norm=MAX_UNITS * unit)
    return float(np.median(found.norms[:, 0])), found


def signed_size_at_cost(model: torch.nn.Module, texts: list[ScoredText], layer: int, direction: torch.Tensor,
                 *, scale: float, pad_id: int, unit: float) -> float:
    """One signed scale in unit kl as a signed |θ|: the size at which ``direction`` (flipped for a
    negative ``scale``) costs |scale| nats per token on ``texts``; 0 for 0. ``unit`` is the median
    ‖h_S‖ (the search's first probe and ceiling scale with it)."""
    if scale == 0:
        return 0.0
    sign = 1.0 if scale > 0 else -1.0
    found = kl_norms(model, texts, layer, sign * direction.double()[None], targets=[abs(scale)], pad_id=pad_id,
                     start=UNIT_START * unit, max_norm=MAX_UNITS * unit)
    return sign * float(found.norms[0, 0])


def theta_at_scale(model: torch.nn.Module, direction: torch.Tensor, scale: float, unit: ScaleUnit, *, layer: int,
                   texts: list[ScoredText], pad_id: int, unit_norm: float | None) -> torch.Tensor:
    """θ on ``direction`` at ``scale`` in ``unit``: an L2 norm (abs), a fraction of ``unit_norm``, the
    median ‖h_S‖ (resid), or the size at which the direction, flipped for a negative scale, costs
    |scale| nats per token on ``texts`` (kl; ``unit_norm`` bounds the search)."""
    size = (signed_size_at_cost(model, texts, layer, direction, scale=scale, pad_id=pad_id, unit=unit_norm)
            if unit == "kl" else absolute([scale], unit, unit_norm)[0])
    return size * direction / direction.norm()


def neutral_texts_for(lm: LoadedModel, prompts: Sequence[str] | None = None, n: int = 6,
                      gen_tokens: int = 32) -> list:
    """What a cost is measured on: each neutral prompt (the lab's shipped val prompts, the first
    ``n``, or the user's ``prompts``) with the unsteered model's greedy continuation of
    ``gen_tokens`` tokens, as eval's KL column scores them."""
    if prompts is None:
        shipped = files("steerlab") / "resources" / "neutral-prompts.jsonl"
        prompts = [p.text for p in load_prompts(str(shipped), "val", n)]
    asked = prompt_ids(lm.tokenizer, list(prompts))
    continued = generate_ids(lm.model, asked, None, gen_tokens, pad_id=lm.tokenizer.pad_token_id).tokens
    return [ScoredText(f"neutral-{i}", a + c, len(a)) for i, (a, c) in enumerate(zip(asked, continued))]


def size_at_cost(vector: SteeringVector, model, tokenizer=None, kl: float = 0.04,
                 prompts: Sequence[str] | None = None, texts: list | None = None) -> float:
    """The L2 norm at which ``vector`` (its sign as it is) costs ``kl`` nats per token: the mean
    per-token KL(unsteered ‖ steered) over the unsteered model's own continuations of neutral
    prompts (``neutral_texts_for``; or ready ``texts``), found by eval's search to within 10%."""
    lm = as_loaded(model, tokenizer)
    vector.check_width(lm.model)
    if not kl > 0:
        raise ValueError(f"kl must be a positive cost in nats per token, got {kl}")
    texts = texts if texts is not None else neutral_texts_for(lm, prompts)
    pad = lm.tokenizer.pad_token_id
    unit = residual_norm(lm.model, [t.token_ids for t in texts], vector.layer, pad).median
    found = kl_norms(lm.model, texts, vector.layer, vector.direction.double()[None], targets=[kl], pad_id=pad,
                     start=UNIT_START * unit, max_norm=MAX_UNITS * unit)
    if not found.reached[0, 0]:
        raise ValueError(f"{vector.label or 'the vector'} reaches KL {found.kl[0, 0]:.3g}, not {kl}, "
                         f"within |θ| ≤ {MAX_UNITS * unit:.3g}: ask for another cost")
    return float(found.norms[0, 0])


def at_cost(vector: SteeringVector, model, tokenizer=None, kl: float = 0.04,
            prompts: Sequence[str] | None = None) -> SteeringVector:
    """``vector`` sized to cost ``kl`` nats per token on neutral text (the lab's shipped neutral
    prompts, or ``prompts``; ``size_at_cost``). ``model``: a ``LoadedModel``, or a causal LM with
    its ``tokenizer``."""
    norm = size_at_cost(vector, model, tokenizer, kl, prompts)
    return replace(vector.scaled(norm), label=f"{vector.label} at {kl:g} KL (|θ| {norm:.3g})".strip())
