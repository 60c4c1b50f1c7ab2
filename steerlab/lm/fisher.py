"""F: the Fisher (Gauss–Newton) matrix of the KL cost at θ = 0, as a linear operator.

The cost of θ is the mean over neutral texts of the mean over each text's continuation positions
of KL(p₀ ‖ p_θ), p the next-token distribution (``steerlab.measure.side_effects``). At θ = 0 its
value and gradient vanish and its Hessian is

    F = Σ_t w_t J_tᵀ (diag p_t − p_t p_tᵀ) J_t,

J_t = ∂logits_t/∂θ at position t, w_t = 1 / (texts × the text's positions). So a direction r at
size |θ| costs ½|θ|² rᵀFr to second order, and the size at which it costs c is √(2c / rᵀFr).
F v is one JVP and one VJP through layers S+1.. and the head (``steerlab.lm.jacobian.BatchJacobian``
reading logits); F is never formed. ``rayleigh`` is vᵀF v for many v at once. ``FisherSpectrum``
is F's top eigenpairs and the level of the rest (``residual_level``): what the first-order null
and the ceiling direction use in place of F.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from steerlab.base.memory import largest_chunk
from steerlab.base.progress import say
from steerlab.lm.jacobian import BatchJacobian
from steerlab.lm.segment import batched_prefixes
from steerlab.lm.site import decoder_layers, head


class KLFisher:
    """F over the continuations of ``texts`` (token ids, each read where ``read_at`` says: the
    positions that predict its continuation), ``chunk`` vectors at a time through the vmapped JVP
    and VJP (the logits' tangents are [chunk, positions, vocab])."""

    def __init__(self, model: torch.nn.Module, texts: Sequence[tuple[int, ...]], read_at: Sequence[list[int]],
                 source_layer: int, *, pad_id: int, batch_size: int = 2, chunk: int = 4):
        needed = [tuple(text[: max(at) + 1]) for text, at in zip(texts, read_at)]
        last = len(decoder_layers(model)) - 1
        vocab = model.get_output_embeddings().weight.shape[0]
        # a vector's logit tangents and their products, fp64, over one batch's read positions
        per_vector = 4 * 8 * vocab * batch_size * max(len(at) for at in read_at)
        fitting = largest_chunk(per_vector, 0.0, chunk)
        if fitting < chunk:
            say(f"  F's products: {fitting} vectors at a time, not {chunk}, to fit the memory available")
            chunk = fitting
        self.d_model = model.get_input_embeddings().embedding_dim
        self.parts: list[tuple[BatchJacobian, torch.Tensor, torch.Tensor]] = []
        for batch, prefix in batched_prefixes(model, needed, source_layer, pad_id, batch_size):
            device = prefix.hidden.device
            rows = torch.tensor([r for r, i in enumerate(batch) for _ in read_at[i]], device=device)
            cols = torch.tensor([c for i in batch for c in read_at[i]], device=device)
            jacobian = BatchJacobian(model, prefix, last, chunk=chunk, positions=(rows, cols),
                                     readout=lambda read: head(model, read))
            logits = jacobian.output.view(len(rows), -1).double()
            weights = torch.tensor([1.0 / (len(texts) * len(read_at[i])) for i in batch for _ in read_at[i]],
                                   dtype=torch.float64, device=device)
            self.parts.append((jacobian, logits.softmax(-1), weights))

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        """F V for V [k, d] -> [k, d], in V's dtype: per chunk, J V, then (diag p − p pᵀ) at each
        position, weighted, then Jᵀ."""
        out = torch.zeros(vectors.shape, dtype=torch.float64)
        for jacobian, p, weights in self.parts:
            step = jacobian.chunk or len(vectors)
            for start in range(0, len(vectors), step):
                piece = vectors[start:start + step].double()
                tangent = jacobian.jvp(piece).view(len(piece), *p.shape)  # [c, positions, vocab]
                mixed = p * tangent
                projected = (mixed - p * mixed.sum(-1, keepdim=True)) * weights[:, None]
                out[start:start + len(piece)] += jacobian.vjp(projected.reshape(len(piece), -1)).cpu()
        return out.to(vectors.dtype)

    # the protocol of steerlab.methods.power.power_iteration: F is its own JᵀJ
    def jtj(self, vectors: torch.Tensor) -> torch.Tensor:
        return self(vectors)

    def rayleigh(self, vectors: torch.Tensor) -> torch.Tensor:
        """vᵀF v for each row v of ``vectors`` [k, d]: ‖M^½ J v‖², one JVP each."""
        out = torch.zeros(len(vectors), dtype=torch.float64)
        for jacobian, p, weights in self.parts:
            for start in range(0, len(vectors), jacobian.chunk or len(vectors)):
                piece = vectors[start:start + (jacobian.chunk or len(vectors))]
                tangent = jacobian.jvp(piece.double()).view(len(piece), *p.shape)
                mean = (p * tangent).sum(-1)
                variance = (p * tangent.pow(2)).sum(-1) - mean.pow(2)  # of the logit tangent under p
                out[start:start + len(piece)] += (variance * weights).sum(-1).cpu()
        return out

    def jvp_norms(self, vectors: torch.Tensor) -> torch.Tensor:
        return self.rayleigh(vectors).clamp_min(0).sqrt().to(vectors.dtype)


@dataclass(frozen=True)
class FisherSpectrum:
    """F approximated by its top eigenpairs and one level for the rest:
    F̃ = U diag(values) Uᵀ + residual (I − U Uᵀ), U = ``vectors``ᵀ. Exact along U; elsewhere the
    mean eigenvalue outside U, which is what a random direction sees (its rᵀF r concentrates
    near it in high dimension)."""
    values: np.ndarray  # [k] descending
    vectors: np.ndarray  # [k, d] orthonormal rows
    residual: float  # mean eigenvalue of F outside span(vectors), ≥ 0

    @property
    def d_model(self) -> int:
        return self.vectors.shape[1]

    def mean_eigenvalue(self) -> float:
        """tr(F̃) / d: the scale the regulariser λ is given in."""
        return float((self.values.sum() + self.residual * (self.d_model - len(self.values))) / self.d_model)

    def quadratic(self, directions: np.ndarray) -> np.ndarray:
        """rᵀF̃r for each row r of ``directions`` [n, d]."""
        r = np.asarray(directions, dtype=np.float64)
        along = r @ self.vectors.T
        return (along ** 2) @ self.values + self.residual * ((r * r).sum(1) - (along ** 2).sum(1))

    def solve(self, gradient: np.ndarray, lam: float) -> np.ndarray:
        """(F̃ + λI)⁻¹ g for g [d] (or [n, d], row by row); λ > 0 unless F̃ is invertible."""
        g = np.asarray(gradient, dtype=np.float64)
        along = g @ self.vectors.T
        inside = (along / (self.values + lam)) @ self.vectors
        return inside + (g - along @ self.vectors) / (self.residual + lam)

    def condition(self, lam: float) -> float:
        """The condition number of F̃ + λI (inf where it is singular)."""
        smallest = min(float(self.values.min(initial=np.inf)), self.residual) + lam
        largest = max(float(self.values.max(initial=0.0)), self.residual) + lam
        return np.inf if smallest <= 0 else largest / smallest


def residual_level(fisher: KLFisher, vectors: torch.Tensor, *, n_probes: int, seed: int) -> float:
    """The mean eigenvalue of F outside span(``vectors``) (orthonormal rows [k, d]): Hutchinson's
    estimate of tr((I − P) F (I − P)) from ``n_probes`` Gaussian probes projected off the span,
    over the d − k dimensions left."""
    gen = torch.Generator().manual_seed(seed)
    probes = torch.randn(n_probes, fisher.d_model, generator=gen, dtype=torch.float64)
    basis = vectors.double()
    probes = probes - (probes @ basis.T) @ basis
    return max(float(fisher.rayleigh(probes).mean()) / (fisher.d_model - len(basis)), 0.0)
