"""The yardstick of scales: the typical norm of the residual stream at the source layer.

With ``SCALE_UNIT=resid`` every scale is a fraction of ‖h_S‖, so that one grid means the same on
models whose residual streams live at different norms (SmolLM2-135M's is ~110 at layer 7,
Gemma-3-270M's thousands). The norm is measured once per model, source layer and behaviour over
the real tokens of the first ``NORM_PROMPTS`` train prompts (as eval builds them, up to the
generation prompt) and stored; every runner reads that one number.

The yardstick is the **median** per-token norm, not the mean: the first token of every sequence
is an attention sink whose norm is 25,000 at SmolLM2's layers 11–20 against ~130–240 for every
other token (7× at layer 7), so a mean is set by one position that steering never needs to move
(docs/DESIGN.md, "Scales"). Mean and quantiles are stored beside it.
"""
from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import torch

from steerlab.lm.segment import batched_prefixes
from steerlab.store.groups import QUANTILES, ResidualNorm

NORM_PROMPTS = 128
ScaleUnit = Literal["kl", "resid", "abs"]
SCALE_UNITS: tuple[ScaleUnit, ...] = get_args(ScaleUnit)


@torch.no_grad()
def residual_norm(model: torch.nn.Module, sequences: list[tuple[int, ...]], layer: int, pad_id: int,
                  batch_size: int = 16) -> ResidualNorm:
    """‖h_S‖ of every real token of ``sequences`` after layer ``layer`` (fp64), summarised."""
    norms = [prefix.residual_norms().cpu()
             for _, prefix in batched_prefixes(model, sequences, layer, pad_id, batch_size)]
    values = torch.cat(norms).numpy()
    return ResidualNorm(layer, float(np.median(values)), float(values.mean()),
                        tuple(float(q) for q in np.quantile(values, QUANTILES)), len(values), len(sequences))


def absolute(scales: list[float], unit: str, norm: float | None) -> list[float]:
    """The L2 norms of θ that ``scales`` mean: fractions of ``norm`` (unit ``resid``) or
    themselves (unit ``abs``). Unit ``kl`` has no one norm per scale: each direction's is found
    by ``steerlab.measure.scales.calibrate``."""
    if unit == "abs":
        return list(scales)
    if unit == "kl":
        raise ValueError("a scale in unit kl is a cost, not a norm: calibrate it per direction (steerlab.measure.scales.calibrate)")
    if unit != "resid":
        raise ValueError(f"unit must be one of {SCALE_UNITS}, got {unit!r}")
    if norm is None or not norm > 0:
        raise ValueError(f"a scale in units of ‖h_S‖ needs a positive norm, got {norm}")
    return [float(s) * norm for s in scales]
