"""The (vector, scale) settings an eval stacks into one θ matrix, and how its results unpack.

Eval runs every setting of every vector group at one source layer as rows of one θ matrix, so the
cached prefix serves all of them. The layout is setting-major: group after group, within a group
vector after vector, within a vector scale after scale (ascending, signed). With ``baseline`` the
first row is θ = 0, the unsteered model. ``unpack`` turns rows of any per-setting result back into
[k, n_scales, ...] arrays per group.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from steerlab.store import VectorGroup


def signed_scales(scales: list[float], sign_free: bool) -> list[float]:
    """Sign-free directions (PI, random) are evaluated at −s as well as +s."""
    return [-s for s in reversed(scales)] + scales if sign_free else scales


@dataclass
class Span:
    """Where one group's settings sit in the θ matrix."""
    group: VectorGroup
    start: int  # first row
    n_vectors: int
    scales: list[float]  # signed, one per setting of each vector

    @property
    def stop(self) -> int:
        return self.start + self.n_vectors * len(self.scales)


@dataclass
class Grid:
    thetas: torch.Tensor  # [n_settings, d] fp32, already scaled
    spans: list[Span]
    baseline_row: int | None  # the θ = 0 row, if asked for

    def unpack(self, values: np.ndarray) -> dict[str, np.ndarray]:
        """Per group label: ``values`` [n_settings, ...] as [k, n_scales, ...]."""
        return {span.group.label: values[span.start:span.stop].reshape(
                    span.n_vectors, len(span.scales), *values.shape[1:])
                for span in self.spans}


def build_grid(groups: list[VectorGroup], scales: list[float], width: int, raw: bool = False,
               baseline: bool = True, norms: dict[str, np.ndarray] | None = None) -> Grid:
    """θ = scale × unit(vector) for every vector of every group and every (signed) scale;
    with ``raw``, θ = scale × vector. ``width`` is the model's d. ``norms`` (SCALE_UNIT=kl) gives
    a group, by label, its own signed |θ| per vector and scale [k, n_signed]: θ = norm × unit(vector),
    the scales then being what those norms stand for (KL targets)."""
    if not groups and not baseline:
        raise ValueError("a grid needs at least one group or the baseline")
    rows: list[torch.Tensor] = []
    spans = []
    for group in groups:
        vectors = torch.from_numpy(np.asarray(group.vectors)).double()
        if not raw:
            vectors = vectors / vectors.norm(dim=1, keepdim=True)
        signed = signed_scales(scales, group.sign_free)
        offset = len(rows) + int(baseline)
        if norms is not None and group.label in norms:
            sizes = np.asarray(norms[group.label], dtype=np.float64)
            if sizes.shape != (len(vectors), len(signed)):
                raise ValueError(f"{group.label}: norms {sizes.shape} for {len(vectors)} vectors × "
                                 f"{len(signed)} scales")
            rows += [(v * float(n)).float() for v, row in zip(vectors, sizes) for n in row]
        else:
            rows += [(v * s).float() for v in vectors for s in signed]
        spans.append(Span(group, offset, len(vectors), signed))
    if baseline:
        rows.insert(0, torch.zeros(width))
    return Grid(torch.stack(rows), spans, 0 if baseline else None)


def random_directions(n: int, width: int, seed: int, layer: int) -> torch.Tensor:
    """``n`` random unit directions [n, width] fp64 for a source layer, the same for the same
    (seed, layer) everywhere: eval's random control and the matrix's reference rows."""
    generator = torch.Generator().manual_seed(seed * 1000 + layer)
    directions = torch.randn(n, width, generator=generator, dtype=torch.float64)
    return directions / directions.norm(dim=1, keepdim=True)
