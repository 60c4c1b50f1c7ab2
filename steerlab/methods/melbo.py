"""MELBO: k orthogonal steering vectors of norm R, each maximising how far it moves h_T.

Mack & Turner (2024), "Mechanistically Eliciting Latent Behaviors in Language Models". For one
vector θ the objective is

    (Σ over prompts and real positions ‖h_T(θ) − h_T(0)‖₂^p)^(1/q),

the norm taken over the hidden dimension at each token. (The public code takes it over the token
axis, which is the same thing only for p = 2, and takes the 1/q root per prompt before summing
over prompts, which is the same thing only for q = 1.) θ lives on the sphere ‖θ‖ = R and vector i is kept
orthogonal to vectors 0..i−1: the gradient is projected off the earlier vectors and onto the
sphere's tangent before each AdamW step, and θ is projected off the earlier vectors and rescaled
to R after it.

Two modes give the same constraint order:

- ``batched``: all k vectors take their steps together, each on its own copy of the prompt batch
  (one forward/backward of k·B rows per prompt batch, from the cached h_S), vector i projected
  against the *current* vectors 0..i−1 at every step.
- ``sequential``: the reference procedure; vector 0 is trained to the end, then vector 1
  against it, and so on.

θ, the optimiser state and all projections are fp32 or fp64 whatever the network's dtype.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, get_args

import numpy as np
import torch

from steerlab.base.errors import UserError
from steerlab.base.parallel import SINGLE, Ranks
from steerlab.lm.segment import Prefix, segment

MelboMode = Literal["batched", "sequential"]
MODES: tuple[MelboMode, ...] = get_args(MelboMode)
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
    mode: MelboMode


def displacement_sum(displacement: torch.Tensor, mask: torch.Tensor, copies: int,
                     p: float) -> torch.Tensor:
    """[copies] Σ over real positions of ‖displacement‖₂^p, for ``displacement`` [copies·B, L, d]
    holding ``copies`` stacked copies of a batch of B prompts.

    Pad positions (mask 0) are replaced by a constant before the power, so they contribute
    neither to the value nor (as 0·∞) to the gradient.
    """
    real = mask.bool()
    squared = displacement.pow(2).sum(-1)
    per_token = torch.where(real, squared, torch.ones_like(squared)).pow(p / 2) * real
    return per_token.reshape(copies, -1).sum(1)


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


def _ascend(model: torch.nn.Module, prefixes: list[Prefix], bases: list[torch.Tensor],
            target_layer: int, start: torch.Tensor, earlier: torch.Tensor, radius: float, p: float,
            q: float, steps: int, lr: float, progress: Progress | None, first: int, ranks: Ranks,
            saved: dict, save: Callable[[dict], None] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Train the rows of ``start`` together against the fixed orthonormal rows of ``earlier``.
    Returns the final vectors [m, d] fp32 and the trace [steps, m] fp32.

    The prompt batches are run one after another and their gradients added up: the sum S inside
    the root is additive over batches, and ∇(S^(1/q)) = (1/q)·S^(1/q−1)·∇S is applied per vector
    once S is complete, so batching the prompts changes nothing but the memory held. For the
    same reason the ranks' shares of the prompts (maybe none) only add their S and ∇S by an
    all-reduce: every rank then takes the same step on the same θ. ``save`` gets θ, the
    optimiser's state and the trace after every step (keys under ``v<first>/``); ``saved`` holding
    them resumes there, on the steps an uninterrupted run takes.
    """
    copies = start.shape[0]
    stacked = [prefix.repeat(copies) if copies > 1 else prefix for prefix in prefixes]
    bases = [base.repeat(copies, 1, 1) for base in bases]
    theta = torch.nn.Parameter((radius * orthonormal_after(earlier, start)).float())
    optimiser = torch.optim.AdamW([theta], lr=lr, betas=BETAS, weight_decay=WEIGHT_DECAY,
                                  amsgrad=AMSGRAD)
    trace = torch.empty(steps, copies)
    key, done = f"v{first}/", 0
    if f"{key}theta" in saved:
        with torch.no_grad():
            theta.copy_(torch.from_numpy(saved[f"{key}theta"]))
        state = {name[len(key) + 5:]: torch.from_numpy(value) for name, value in saved.items()
                 if name.startswith(f"{key}adam/")}
        optimiser.state[theta] = {name: value.to(theta.device) if value.dim() else value
                                  for name, value in state.items()}
        done = int(saved[f"{key}steps"])
        trace[:done] = torch.from_numpy(saved[f"{key}trace"])[:done]
    for t in range(done, steps):
        optimiser.zero_grad(set_to_none=True)
        total = torch.zeros(copies, dtype=torch.float64, device=theta.device)
        for prefix, batch, base in zip(stacked, prefixes, bases):
            rows = theta.repeat_interleave(batch.batch_size, dim=0)[:, None, :]  # copy c: rows c·B..
            displacement = segment(model, prefix, rows, target_layer).to(base.dtype) - base
            sums = displacement_sum(displacement, prefix.attention_mask, copies, p)
            (-sums.sum()).backward()
            total += sums.detach().double()
        with torch.no_grad():
            total = ranks.sum(total)
            grad = ranks.sum(torch.zeros_like(theta) if theta.grad is None else theta.grad)
            trace[t] = total.pow(1.0 / q).float().cpu()
            chain = (total.pow(1.0 / q - 1.0) / q)[:, None]
            unit = theta.double() / radius
            theta.grad = _project_gradient(chain * grad.double(), unit, earlier).float()
            optimiser.step()
            theta.copy_(radius * orthonormal_after(earlier, theta))
        if progress is not None:
            progress(first, t, trace[t])
        if save is not None:
            save(saved | {f"{key}theta": theta.detach().cpu().numpy(), f"{key}steps": np.array(t + 1),
                          f"{key}trace": trace.numpy()}
                 | {f"{key}adam/{name}": value.cpu().numpy()
                    for name, value in optimiser.state[theta].items()})
    return theta.detach(), trace


@torch.no_grad()
def displacement_objective(model: torch.nn.Module, prefixes: list[Prefix], vectors: torch.Tensor,
                           target_layer: int, *, p: float = 2.0, q: float = 1.0,
                           ranks: Ranks = SINGLE) -> torch.Tensor:
    """[k] objective of each row of ``vectors`` [k, d] over all the prompt batches, of every rank
    (no gradients)."""
    total = torch.zeros(len(vectors), dtype=torch.float64)
    for prefix in prefixes:
        device = prefix.hidden.device
        base = segment(model, prefix, torch.zeros(vectors.shape[-1], device=device), target_layer)
        acc = torch.promote_types(base.dtype, torch.float32)
        for i, vector in enumerate(vectors):
            moved = segment(model, prefix, vector.to(device), target_layer).to(acc) - base.to(acc)
            total[i] += displacement_sum(moved, prefix.attention_mask, 1, p).double().cpu()[0]
    return ranks.sum(total).pow(1.0 / q).float()


def melbo(model: torch.nn.Module, prefixes: Prefix | list[Prefix], target_layer: int, k: int,
          *, radius: float, p: float = 2.0, q: float = 1.0, steps: int = 300, lr: float = 1e-3,
          seed: int = 0, mode: MelboMode = "batched", progress: Progress | None = None,
          ranks: Ranks = SINGLE, saved: dict | None = None, save: Callable[[dict], None] | None = None
          ) -> MelboResult:
    """k MELBO vectors from the cached prefix of each prompt batch (``run_prefix`` at the source
    layer); the objective runs over the prompts of all batches together, and under several
    ``ranks`` over every rank's batches (``prefixes`` is this rank's share, maybe empty).

    The k random starting directions are drawn at once from ``seed``, so both modes start vector
    i from the same draw (projected off the vectors before it). ``save`` is called after every
    step with what the run has done (``saved`` such a state resumes it: in sequential mode the
    finished vectors and the one in training).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if k < 1 or steps < 1 or radius <= 0 or p <= 0 or q <= 0:
        raise ValueError(f"need k ≥ 1, steps ≥ 1 and radius, p, q > 0 (got k={k}, steps={steps}, "
                         f"radius={radius}, p={p}, q={q})")
    prefixes = [prefixes] if isinstance(prefixes, Prefix) else list(prefixes)
    embedding = model.get_input_embeddings().weight
    d, device = embedding.shape[-1], embedding.device
    if k > d:
        raise UserError(f"cannot have K={k} orthogonal vectors in width {d}")
    draws = torch.randn(k, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    draws = draws.to(device)
    with torch.no_grad():
        bases = [segment(model, prefix, torch.zeros(d, device=device), target_layer)
                 for prefix in prefixes]
    bases = [base.to(torch.promote_types(base.dtype, torch.float32)) for base in bases]
    none = torch.zeros(0, d, dtype=torch.float64, device=device)
    saved = dict(saved or {})
    run = dict(radius=radius, p=p, q=q, steps=steps, lr=lr, progress=progress, ranks=ranks, save=save)
    if mode == "batched":
        vectors, trace = _ascend(model, prefixes, bases, target_layer, draws, none, first=0, saved=saved,
                                 **run)
    else:
        found, traces = [], []
        for i in range(k):
            earlier = orthonormal_after(none, torch.stack(found)) if found else none
            vector, trace = _ascend(model, prefixes, bases, target_layer, draws[i:i + 1], earlier,
                                    first=i, saved=saved, **run)
            found.append(vector[0])
            traces.append(trace)
            saved |= {f"v{i}/theta": vector.cpu().numpy(), f"v{i}/steps": np.array(steps),
                      f"v{i}/trace": trace.numpy()}
        vectors, trace = torch.stack(found), torch.cat(traces, dim=1)
    vectors = vectors.float().cpu()
    ranks.check_identical(vectors, "MELBO's vectors")
    final = displacement_objective(model, prefixes, vectors, target_layer, p=p, q=q, ranks=ranks)
    return MelboResult(vectors, trace, final, mode)
