"""A steering vector as a value: θ's direction with the layer it belongs to and where it goes.

Every engine function that adds one vector to a model takes a ``SteeringVector``, so that its
layer and site never travel separately (generation, the Python API). The fast paths that score
many settings at once take a θ stack [n_settings, d] at one source layer (``stack``): stacking is
what makes them fast (docs/DESIGN.md, "The core idea"). Saving to and loading from the store are
``steerlab.steering.save_vector`` and ``load_vector``; this module stays free of the store so that
what imports it (generation) does not hash the store's code as its own.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import torch

from steerlab.lm.site import Site, add_at, resolve_site


@dataclass(frozen=True)
class SteeringVector:
    """A direction of the model's width, added to the residual stream after decoder layer
    ``layer`` at ``site`` (mlp, resid, or auto: resolved against the model when applied)."""
    direction: torch.Tensor  # [d], as found (not unit-normalised)
    layer: int
    site: Site = "auto"
    label: str = ""

    def theta(self, scale: float | None = None) -> torch.Tensor:
        """What is added, fp64: ``scale`` × unit(direction), ``scale`` being the L2 norm of θ
        (negative flips it); without a scale, the direction as found. A direction of norm 0 cannot
        be scaled."""
        direction = self.direction.double()
        if scale is None:
            return direction
        norm = direction.norm()
        if norm == 0:
            raise ValueError(f"{self.label or 'this vector'} has norm 0: it cannot be scaled")
        return scale * direction / norm

    def check_width(self, model: torch.nn.Module) -> None:
        """A ValueError naming both widths when the direction is not the model's width (before any
        forward, where torch's own message would come from deep inside it)."""
        width = int(model.get_input_embeddings().embedding_dim)
        if self.direction.shape[-1:] != (width,):
            raise ValueError(f"{self.label or 'the steering vector'} has width "
                             f"{tuple(self.direction.shape)[-1]} but the model's residual stream has width "
                             f"{width}: it was found on another model")

    def scaled(self, scale: float) -> "SteeringVector":
        """The same vector with ``theta(scale)`` as its direction: what one steered run adds."""
        return replace(self, direction=self.theta(scale), label=f"{self.label} at {scale:+.4g}".strip())

    def stack(self, scales: Sequence[float]) -> torch.Tensor:
        """θ at each of ``scales`` as rows [len(scales), d] fp64: the fast paths' input at
        ``layer`` (a scale of 0 is the unsteered model)."""
        if not scales:
            return torch.empty(0, self.direction.shape[0], dtype=torch.float64)
        return torch.stack([self.theta(s) if s else torch.zeros_like(self.theta()) for s in scales])

    @contextmanager
    def apply(self, model: torch.nn.Module, scale: float | None = None) -> Iterator[None]:
        """Every forward of ``model`` inside the block is steered by ``theta(scale)``; the hook
        is removed however the block ends."""
        self.check_width(model)
        site = resolve_site(model, self.layer, self.site)
        weight = next(model.parameters())
        with add_at(model, self.layer, self.theta(scale).to(weight.dtype).to(weight.device), site):
            yield
