"""The ceiling: the best direction at a given KL cost, to first order, as a steering method.

To first order a direction θ moves the headline score by ḡᵀθ (ḡ: the headline's gradient, each
question's gradient weighted as the headline weighs the question) and costs ½θᵀFθ nats per token
(F: the KL's Fisher, ``steerlab.lm.fisher``). Among the θ of one cost the largest move is along
F⁻¹ḡ, and it is √(2c · ḡᵀF⁻¹ḡ) at cost c. Here F is its top eigenpairs and one level for the
rest (``FisherSpectrum``) and ḡ comes from the train questions, so the direction is regularised:
θ*(λ) ∝ (F̃ + λI)⁻¹ ḡ_train, λ a multiple of F̃'s mean eigenvalue; λ = ∞ is the plain gradient
direction. The candidates go into one vector group; eval scores each, and the choice on val picks
λ and the cost like every other method's vector and scale (docs/conventions.md, "Floor and ceiling").
"""
from __future__ import annotations

import math

import numpy as np

from steerlab.base.errors import UserError
from steerlab.lm.fisher import FisherSpectrum

# λ in units of F̃'s mean eigenvalue; inf: the plain gradient direction (F taken isotropic)
LAMBDAS = (0.1, 1.0, math.inf)
# beyond this condition number of F̃ + λI the solve would amplify F̃'s noise into the direction
MAX_CONDITION = 1e6


def check_lambdas(lambdas: list[float]) -> None:
    """Refuse regularisers that make no sense: not positive, or NaN."""
    bad = [lam for lam in lambdas if not lam > 0]  # NaN is not > 0
    if bad or not lambdas:
        raise UserError(f"LAMBDAS must be positive numbers (in units of F's mean eigenvalue; inf: the plain "
                        f"gradient), got {lambdas}")


def ceiling_directions(mean_gradient: np.ndarray, spectrum: FisherSpectrum,
                       lambdas: list[float]) -> np.ndarray:
    """[len(lambdas), d] unit directions (F̃ + λ m I)⁻¹ ḡ, m F̃'s mean eigenvalue, one per λ
    (inf: ḡ itself). A λ at which F̃ + λI cannot be inverted is a UserError naming it, never a
    direction made of noise."""
    check_lambdas(lambdas)
    g = np.asarray(mean_gradient, dtype=np.float64)
    if not np.isfinite(g).all() or not np.linalg.norm(g) > 0:
        raise UserError("the mean gradient is zero or not finite: there is no direction to fit")
    scale = spectrum.mean_eigenvalue()
    rows = []
    for lam in lambdas:
        if math.isinf(lam):
            direction = g
        else:
            condition = spectrum.condition(lam * scale)
            if not condition < MAX_CONDITION:
                raise UserError(f"F + λI cannot be inverted reliably at λ = {lam:g} × its mean eigenvalue "
                                f"(condition number {condition:.3g}): use a larger λ")
            direction = spectrum.solve(g, lam * scale)
        rows.append(direction / np.linalg.norm(direction))
    return np.stack(rows)


def first_order_gain(directions: np.ndarray, mean_gradient: np.ndarray, spectrum: FisherSpectrum,
                     cost: float) -> np.ndarray:
    """For each direction [n, d], its first-order headline move at ``cost`` nats per token:
    √(2c / r̂ᵀF̃r̂) · ḡᵀr̂."""
    r = np.asarray(directions, dtype=np.float64)
    r = r / np.linalg.norm(r, axis=1, keepdims=True)
    return np.sqrt(2 * cost / spectrum.quadratic(r)) * (r @ np.asarray(mean_gradient, dtype=np.float64))


def first_order_bound(mean_gradient: np.ndarray, spectrum: FisherSpectrum, cost: float,
                      lam: float = 0.0) -> float:
    """√(2c · ḡᵀ(F̃ + λI)⁻¹ḡ): the largest first-order move at cost c (λ = 0, where F̃ is
    invertible); with λ > 0 the move of that regularised direction is below it."""
    g = np.asarray(mean_gradient, dtype=np.float64)
    return float(np.sqrt(2 * cost * g @ spectrum.solve(g, lam)))
