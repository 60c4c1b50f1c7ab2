"""Randomized block power iteration on JᵀJ: the top-k right singular vectors of J.

A Gaussian start block of k + p columns (p: oversampling) is multiplied by JᵀJ and
re-orthonormalised (QR) every step. Each step also does a Rayleigh–Ritz on the block it just
multiplied (free: JᵀJ Q is already known), which gives the Ritz vectors, their residuals
‖JᵀJ v − σ² v‖ / σ² (the trace) and the subspace change of the top k between steps (the stopping
rule). The result is the last Rayleigh–Ritz's top k; σ = ‖J v‖ is measured with one more JVP.
All linear algebra runs in ``dtype`` (fp64 by default); the operator casts at its input.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch

from steerlab.base.errors import UserError
from steerlab.base.parallel import SINGLE, Ranks


class LinearOperator(Protocol):
    d_model: int

    def jvp_norms(self, vectors: torch.Tensor) -> torch.Tensor: ...

    def jtj(self, vectors: torch.Tensor) -> torch.Tensor: ...


@dataclass
class PowerResult:
    vectors: torch.Tensor  # [k, d] unit rows, sorted by sigma (descending)
    sigmas: torch.Tensor  # [k] ‖J v‖, descending
    trace: torch.Tensor  # [steps, k] residual ‖JᵀJ v − σ² v‖ / σ² of the Ritz vectors per step
    subspace_change: torch.Tensor  # [steps] sin of the largest angle between successive top-k spans
    steps: int
    converged: bool


def subspace_sine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Sine of the largest principal angle between the column spans of orthonormal a and b."""
    return float(torch.linalg.matrix_norm(b - a @ (a.T @ b), ord=2))


def fix_signs(vectors: torch.Tensor) -> torch.Tensor:
    """Rows with their largest-magnitude entry positive: sign-free directions, stored reproducibly."""
    index = vectors.abs().argmax(dim=1)
    signs = vectors.gather(1, index[:, None]).sign()
    return vectors * torch.where(signs == 0, torch.ones_like(signs), signs)


def principal_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Principal angles in degrees, ascending, between the row spans of ``a`` [k, d] and ``b``."""
    qa, _ = torch.linalg.qr(a.double().T)
    qb, _ = torch.linalg.qr(b.double().T)
    cosines = torch.linalg.svdvals(qa.T @ qb).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cosines)).sort().values


def power_iteration(op: LinearOperator, k: int, *, iters: int = 12, oversample: int = 8,
                    tol: float = 1e-3, seed: int = 0, dtype: torch.dtype = torch.float64,
                    progress: Callable[[int, torch.Tensor, float], None] | None = None,
                    start: torch.Tensor | None = None, ranks: Ranks = SINGLE,
                    saved: dict[str, np.ndarray] | None = None,
                    save: Callable[[dict[str, np.ndarray]], None] | None = None) -> PowerResult:
    """Top-k singular directions of J via block power iteration on JᵀJ (see module docstring).

    Stops after ``iters`` steps, or earlier once the top-k subspace moves less than ``tol``
    (sine of the largest principal angle) from one step to the next. ``progress(step, residuals,
    change)`` is called after every step. ``start`` [m, d] warm-starts the block with those rows
    (e.g. the Ritz vectors of a nearby operator); random columns fill the rest. Under several
    ``ranks`` (an operator whose products are all-reduced) every rank runs this same linear algebra
    on the same numbers; that the result is bitwise the same on all is checked at the end.
    ``save(state)`` is called after every step with what the next step starts from (the block,
    the last top-k and the record so far), and ``saved`` (such a state) resumes there: the steps
    that follow are the ones an uninterrupted run takes.
    """
    d = op.d_model
    if not 0 < k <= d:
        raise UserError(f"K must be in 1..{d} (the model's width), got {k}")
    if iters < 1:
        raise ValueError(f"iters must be at least 1, got {iters}")
    width = min(k + max(oversample, 0), d)
    gen = torch.Generator().manual_seed(seed)
    block = torch.randn(d, width, generator=gen, dtype=dtype)
    if start is not None:
        warm = start.to(dtype)[:width].T
        block[:, : warm.shape[1]] = warm
    block, _ = torch.linalg.qr(block)
    previous, residuals, changes, converged, first = None, [], [], False, 1
    if saved:
        block = torch.from_numpy(saved["block"]).to(dtype)
        previous = torch.from_numpy(saved["previous"]).to(dtype)
        residuals = [torch.from_numpy(r).to(dtype) for r in saved["residuals"]]
        changes = [float(c) for c in saved["changes"]]
        first = len(changes) + 1
        top = previous
    for step in range(first, iters + 1):
        product = op.jtj(block.T).T.to(dtype)  # JᵀJ Q, [d, width]
        small = block.T @ product
        values, rotation = torch.linalg.eigh((small + small.T) / 2)
        order = values.argsort(descending=True)
        values, rotation = values[order], rotation[:, order]
        ritz, ritz_product = block @ rotation, product @ rotation
        scale = values[:k].clamp_min(torch.finfo(dtype).tiny)
        residual = (ritz_product[:, :k] - ritz[:, :k] * values[:k]).norm(dim=0) / scale
        top = ritz[:, :k]
        change = 1.0 if previous is None else subspace_sine(previous, top)
        residuals.append(residual)
        changes.append(change)
        if progress is not None:
            progress(step, residual, change)
        previous = top
        if change < tol:
            converged = True
            break
        block, _ = torch.linalg.qr(ritz_product)
        if save is not None:
            save({"block": block.numpy(), "previous": previous.numpy(),
                  "residuals": torch.stack(residuals).numpy(), "changes": np.array(changes)})
    vectors = top.T.contiguous()
    ranks.check_identical(vectors, "the power iteration's vectors")
    sigmas = op.jvp_norms(vectors).to(dtype)
    order = sigmas.argsort(descending=True)
    return PowerResult(fix_signs(vectors[order]), sigmas[order], torch.stack(residuals),
                       torch.tensor(changes, dtype=dtype), len(residuals), converged)
