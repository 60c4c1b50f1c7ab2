"""PI on a model: the top-k right singular vectors of J = ∂h_T/∂θ at a point θ₀, which rows of J
they were found over, and how far J at θ₀ moved from J at 0.

J (steerlab.lm.jacobian) is taken over prompts whose forward up to the source layer is already
done (steerlab.lm.segment.prompt_prefixes), so every θ₀ of a sweep shares it; the iteration is
steerlab.methods.power's. Plain values in and out: a model, prefixes, tensors and numpy arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from steerlab.base.parallel import SINGLE, Ranks
from steerlab.lm.jacobian import Jacobian, jacobian_at, relative_change
from steerlab.lm.segment import Prefix, batched_prefixes
from steerlab.methods.power import PowerResult, power_iteration, principal_angles


@dataclass
class Linearised:
    """One power iteration on J(θ₀)."""
    jacobian: Jacobian  # J at θ₀ over this rank's prompts, kept to compare with another point
    result: PowerResult
    positions: np.ndarray  # [rows, 2] int32: (prompt index, token index) of each row of J, every rank's
    theta0_norm: float  # ‖θ₀‖ (0 at 0)

    def summary(self) -> str:
        r = self.result
        return (f"σ = {' '.join(f'{s:.3f}' for s in r.sigmas.tolist())}; {r.steps} steps, "
                f"{'converged' if r.converged else 'NOT converged'} "
                f"(last subspace change {float(r.subspace_change[-1]):.1e})")

    def attrs(self) -> dict:
        return {"steps": self.result.steps, "converged": int(self.result.converged),
                "theta0_norm": self.theta0_norm}

    def arrays(self) -> dict[str, np.ndarray]:
        """What a store keeps of the iteration besides the vectors, σ and the trace in float32."""
        return {"sigmas": self.result.sigmas.numpy().astype(np.float32),
                "trace": self.result.trace.numpy().astype(np.float32),
                "subspace_change": self.result.subspace_change.numpy().astype(np.float32),
                "positions": self.positions}


def top_singular(model: torch.nn.Module, prefixes: list[Prefix], batches: list[list[int]], target_layer: int,
                 k: int, *, tokens: str = "all", theta0: torch.Tensor | None = None, iters: int = 12,
                 oversample: int = 8, tol: float = 1e-3, seed: int = 0, start: torch.Tensor | None = None,
                 chunk: int | None = None, ranks: Ranks = SINGLE,
                 progress: Callable[[int, torch.Tensor, float], None] | None = None,
                 saved: dict | None = None, save: Callable[[dict], None] | None = None) -> Linearised:
    """The top ``k`` right singular vectors of J at ``theta0`` (None: 0) over this rank's
    ``prefixes``, whose prompts are ``batches`` (prompt indices, one list per prefix).

    ``tokens`` picks J's rows (all real positions, or ``last:N`` of each prompt); ``start`` warm-starts
    the block (the previous θ₀'s vectors, in a sweep); ``chunk`` bounds how many vectors pass through
    the vmapped JVP together; ``progress``, ``saved`` and ``save`` are ``power_iteration``'s (its
    progress, and resuming from a killed run's last step)."""
    jacobian = jacobian_at(model, prefixes, target_layer, tokens, theta0=theta0, ranks=ranks, chunk=chunk)
    result = power_iteration(jacobian, k, iters=iters, oversample=oversample, tol=tol, seed=seed,
                             progress=progress, start=start, ranks=ranks, saved=saved, save=save)
    positions = [(batch[row], col) for batch, part in zip(batches, jacobian.parts)
                 for row, col in zip(part.rows.tolist(), part.cols.tolist())]
    positions = ranks.gather(positions)
    return Linearised(jacobian, result, np.array(positions, dtype=np.int32).reshape(-1, 2),
                      0.0 if theta0 is None else float(theta0.norm()))


@dataclass
class Drift:
    """How far J(θ₀) is from J(0), both over the same prompts and positions."""
    principal_angles: torch.Tensor  # [k] degrees, ascending: top-k subspace of J(θ₀) against J(0)'s
    jv_change: torch.Tensor  # [k] ‖J(θ₀)v − J(0)v‖ / ‖J(0)v‖ for each top vector v of J(0)

    def summary(self) -> str:
        return (f"largest principal angle {float(self.principal_angles[-1]):.1f}°, "
                "‖J(θ₀)v − J(0)v‖/‖J(0)v‖ = "
                + " ".join(f"{m:.3f}" for m in self.jv_change.tolist()))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"principal_angles": self.principal_angles.numpy().astype(np.float32),
                "jv_change": self.jv_change.numpy().astype(np.float32)}


def drift_from_zero(at_theta0: Linearised, at_zero: Jacobian, top_at_zero: torch.Tensor) -> Drift:
    """``at_theta0``'s top-k against ``top_at_zero`` [k, d] (J(0)'s top vectors), and how far the
    map moved along those vectors."""
    return Drift(principal_angles(at_theta0.result.vectors, top_at_zero),
                 relative_change(at_theta0.jacobian, at_zero, top_at_zero))


class Sweep:
    """PI at one θ₀ after another over the same prompts: their forward up to the source layer is
    done once (this rank's share of the batches), each point's iteration starts from the last
    point's vectors, and J(0) is computed once, when a point is first compared with it."""

    def __init__(self, model: torch.nn.Module, prompts: list[tuple[int, ...]], source_layer: int,
                 target_layer: int, *, pad_id: int, batch_size: int, tokens: str = "all",
                 chunk: int | None = None, ranks: Ranks = SINGLE):
        pairs = list(batched_prefixes(model, prompts, source_layer, pad_id, batch_size, ranks=ranks))
        self.batches, self.prefixes = [batch for batch, _ in pairs], [prefix for _, prefix in pairs]
        self.model, self.target_layer, self.tokens, self.chunk, self.ranks = (
            model, target_layer, tokens, chunk, ranks)
        # the last point's top vectors, as the store keeps them (float32), so that a sweep resumed
        # after a stored point starts the next one exactly where an uninterrupted sweep does
        self.last: torch.Tensor | None = None
        self.at_zero: Jacobian | None = None

    def at(self, theta0: torch.Tensor | None, k: int, **iteration) -> Linearised:
        """``top_singular`` at ``theta0``; ``iteration``: its iters, oversample, tol, seed, progress,
        saved, save."""
        found = top_singular(self.model, self.prefixes, self.batches, self.target_layer, k,
                             tokens=self.tokens, theta0=theta0, start=self.last, chunk=self.chunk,
                             ranks=self.ranks, **iteration)
        self.last = found.result.vectors.float().double()
        return found

    def drift(self, found: Linearised, top_at_zero: torch.Tensor) -> Drift:
        """``drift_from_zero`` of a point of this sweep, against J(0)'s top vectors [k, d]."""
        if self.at_zero is None:
            self.at_zero = jacobian_at(self.model, self.prefixes, self.target_layer, self.tokens,
                                       ranks=self.ranks, chunk=self.chunk)
        return drift_from_zero(found, self.at_zero, top_at_zero)
