"""The KL search: the |θ| at which a direction, with its sign, costs a mean KL(unsteered ‖ steered)
in nats per token on neutral texts (SCALE_UNIT=kl, ``steerlab.measure.scales``).

``kl_norms`` is a secant method on log KL against log |θ|, where the curve is close to a line of
slope 2 (KL is quadratic in θ for small θ): every (direction, target) starts from one shared
probe, and each round probes all that are not yet within ``rtol`` of their target in one stacked
pass of the fast path (``steerlab.measure.side_effects``). The norm returned is the probe nearest
the target, so its KL is measured, not extrapolated; a target a direction cannot reach below
``max_norm`` is reported as not reached (``out_of_reach`` turns one no direction reaches into a
UserError). The first probe and the largest |θ| are ``UNIT_START`` and ``MAX_UNITS`` times the
median ‖h_S‖.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from steerlab.base.errors import UserError
from steerlab.lm.steered import QUESTIONS_PER_PASS, SETTINGS_PER_PASS
from steerlab.measure.side_effects import ScoredText, side_effects

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
    return side_effects(model, texts, layer, thetas, pad_id=pad_id, batch_size=batch_size,
                        settings_per_pass=settings_per_pass).kl.mean(1).numpy()


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
        return mean_kl(model, texts, layer, thetas, pad_id=pad_id, batch_size=batch_size,
                       settings_per_pass=settings_per_pass)

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
        raise UserError(f"KL target(s) {', '.join(f'{t:g}' for t in beyond)} are out of reach: "
                        f"at |θ| ≤ {max_norm:.3g} ({MAX_UNITS:g} × the median ‖h_S‖) no direction costs more "
                        f"than {largest:.3g} nats per token on the neutral texts; use SCALES of at most "
                        f"{largest:.3g}")
