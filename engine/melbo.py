"""MELBO: k orthogonal steering vectors of norm R, each maximising how far it moves h_T.

Mack & Turner (2024), "Mechanistically Eliciting Latent Behaviors in Language Models". For one
vector θ the objective is

    (Σ over prompts and real positions ‖h_T(θ) − h_T(0)‖₂^p)^(1/q),

the norm taken over the hidden dimension at each token. (The public code takes it over the token
axis, which is the same thing only for p = 2.) θ lives on the sphere ‖θ‖ = R and vector i is kept
orthogonal to vectors 0..i−1: the gradient is projected off the earlier vectors and onto the
sphere's tangent before each AdamW step, and θ is projected off the earlier vectors and rescaled
to R after it.

Two modes give the same constraint order:

- ``batched``: all k vectors take their steps together, each on its own copy of the prompt batch
  (one forward/backward of k·B rows from the cached h_S), vector i projected against the
  *current* vectors 0..i−1 at every step.
- ``sequential``: the reference procedure; vector 0 is trained to the end, then vector 1
  against it, and so on.

θ, the optimiser state and all projections are fp32 or fp64 whatever the network's dtype.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from engine.segment import Prefix, segment

MODES = ("batched", "sequential")
BETAS = (0.9, 0.98)
WEIGHT_DECAY = 0.0
AMSGRAD = True

# (index of the first vector being trained, step, objective of each vector being trained)
Progress = Callable[[int, int, torch.Tensor], None]


@dataclass
class MelboResult:
    vectors: torch.Tensor  # [k, d] fp32, rows of norm R, row i orthogonal to rows < i
    trace: torch.Tensor  # [steps, k] fp32, objective of each vector before each step
    objective: torch.Tensor  # [k] fp32, objective of the final vectors
    mode: str


def objective(displacement: torch.Tensor, mask: torch.Tensor, copies: int, p: float,
              q: float) -> torch.Tensor:
    """[copies] objective of each copy of the batch from ``displacement`` [copies·B, L, d].

    Pad positions (mask 0) are replaced by a constant before the power, so they contribute
    neither to the value nor (as 0·∞) to the gradient.
    """
    real = mask.bool()
    squared = displacement.pow(2).sum(-1)
    per_token = torch.where(real, squared, torch.ones_like(squared)).pow(p / 2) * real
    return per_token.reshape(copies, -1).sum(1).pow(1.0 / q)


def orthonormal_after(earlier: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Unit rows: row i of ``vectors`` made orthogonal to the rows of ``earlier`` and to rows < i,
    in that order (Gram–Schmidt, done as a fp64 QR with the signs that keep each row's direction).
    ``earlier`` must have orthonormal rows already (it comes back unchanged up to rounding)."""
    stacked = torch.cat([earlier, vectors]).double().T
    q, r = torch.linalg.qr(stacked)
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1
    return (q * signs).T[len(earlier):]


def _project_gradient(grad: torch.Tensor, unit: torch.Tensor, earlier: torch.Tensor) -> torch.Tensor:
    """Row i of ``grad`` without its components along ``earlier``, along current rows < i and
    along row i itself (the sphere's tangent at θ_i). All of these are orthonormal, so one
    projection each is exact."""
    g = grad.double()
    g = g - (g @ earlier.T) @ earlier
    return g - torch.tril(g @ unit.T) @ unit


def _ascend(model: torch.nn.Module, prefix: Prefix, base: torch.Tensor, target_layer: int,
            start: torch.Tensor, earlier: torch.Tensor, radius: float, p: float, q: float,
            steps: int, lr: float, progress: Progress | None, first: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Train the rows of ``start`` together against the fixed orthonormal rows of ``earlier``.
    Returns the final vectors [m, d] fp32 and the trace [steps, m] fp32."""
    copies, batch = start.shape[0], prefix.batch_size
    stacked = prefix.repeat(copies) if copies > 1 else prefix
    mask = stacked.attention_mask
    base = base.repeat(copies, 1, 1)
    theta = torch.nn.Parameter((radius * orthonormal_after(earlier, start)).float())
    optimiser = torch.optim.AdamW([theta], lr=lr, betas=BETAS, weight_decay=WEIGHT_DECAY,
                                  amsgrad=AMSGRAD)
    trace = torch.empty(steps, copies)
    for t in range(steps):
        optimiser.zero_grad(set_to_none=True)
        rows = theta.repeat_interleave(batch, dim=0)[:, None, :]  # copy c on rows c·B..(c+1)·B
        displacement = segment(model, stacked, rows, target_layer).to(base.dtype) - base
        values = objective(displacement, mask, copies, p, q)
        (-values.sum()).backward()
        trace[t] = values.detach().float().cpu()
        with torch.no_grad():
            unit = theta.double() / radius
            theta.grad = _project_gradient(theta.grad, unit, earlier).to(theta.dtype)
            optimiser.step()
            theta.copy_(radius * orthonormal_after(earlier, theta))
        if progress is not None:
            progress(first, t, trace[t])
    return theta.detach(), trace


@torch.no_grad()
def displacement_objective(model: torch.nn.Module, prefix: Prefix, vectors: torch.Tensor,
                           target_layer: int, p: float = 2.0, q: float = 1.0) -> torch.Tensor:
    """[k] objective of each row of ``vectors`` [k, d] (one forward per vector, no gradients)."""
    device = prefix.hidden.device
    base = segment(model, prefix, torch.zeros(prefix.hidden.shape[-1], device=device), target_layer)
    acc = torch.promote_types(base.dtype, torch.float32)
    out = [objective(segment(model, prefix, v.to(device), target_layer).to(acc) - base.to(acc),
                     prefix.attention_mask, 1, p, q) for v in vectors]
    return torch.cat(out).float().cpu()


def melbo(model: torch.nn.Module, prefix: Prefix, target_layer: int, k: int, radius: float,
          p: float = 2.0, q: float = 1.0, steps: int = 300, lr: float = 1e-3, seed: int = 0,
          mode: str = "batched", progress: Progress | None = None) -> MelboResult:
    """k MELBO vectors from the cached prefix (``run_prefix`` at the source layer).

    The k random starting directions are drawn at once from ``seed``, so both modes start vector
    i from the same draw (projected off the vectors before it).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if k < 1 or steps < 1 or radius <= 0:
        raise ValueError(f"need k ≥ 1, steps ≥ 1 and radius > 0 (got k={k}, steps={steps}, "
                         f"radius={radius})")
    d = prefix.hidden.shape[-1]
    if k > d:
        raise ValueError(f"cannot have {k} orthogonal vectors in width {d}")
    device = prefix.hidden.device
    draws = torch.randn(k, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    draws = draws.to(device)
    with torch.no_grad():
        base = segment(model, prefix, torch.zeros(d, device=device), target_layer)
    base = base.to(torch.promote_types(base.dtype, torch.float32))
    none = torch.zeros(0, d, dtype=torch.float64, device=device)
    run = dict(radius=radius, p=p, q=q, steps=steps, lr=lr, progress=progress)
    if mode == "batched":
        vectors, trace = _ascend(model, prefix, base, target_layer, draws, none, first=0, **run)
    else:
        found, traces = [], []
        for i in range(k):
            earlier = torch.stack(found).double() / radius if found else none
            vector, trace = _ascend(model, prefix, base, target_layer, draws[i:i + 1], earlier,
                                    first=i, **run)
            found.append(vector[0])
            traces.append(trace)
        vectors, trace = torch.stack(found), torch.cat(traces, dim=1)
    vectors = vectors.float().cpu()
    return MelboResult(vectors, trace, displacement_objective(model, prefix, vectors, target_layer,
                                                              p, q), mode)
