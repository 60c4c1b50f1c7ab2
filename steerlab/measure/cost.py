"""Sizes by cost (SCALE_UNIT=kl outside eval): the |θ| at which a direction costs a KL, found by
the KL search (``steerlab.measure.kl_search``).

For the runners: ``theta_at_scale`` (θ on a direction at a scale in any unit; PI's θ₀ along CAA),
``signed_size_at_cost`` (one direction, the sign of the scale) and ``random_radius`` (a size for
directions not found yet: MELBO's radius). From Python: ``size_at_cost`` and ``at_cost`` size a
``SteeringVector`` by its cost on neutral texts (``neutral_texts_for``: the shipped neutral
prompts, or the user's, continued by the unsteered model).
"""
from __future__ import annotations

from dataclasses import replace
from importlib.resources import files
from typing import Sequence

import numpy as np
import torch

from steerlab.lm.generate import generate_ids, prompt_ids
from steerlab.lm.model import LoadedModel, as_loaded
from steerlab.lm.vector import SteeringVector
from steerlab.measure.grid import random_directions
from steerlab.measure.kl_search import MAX_UNITS, UNIT_START, Calibration, kl_norms
from steerlab.measure.scales import ScaleUnit, absolute, residual_norm
from steerlab.measure.side_effects import ScoredText
from steerlab.questions.data import load_prompts

RADIUS_DIRECTIONS = 4  # random directions MELBO's radius is calibrated on (SCALE_UNIT=kl)


def random_radius(model: torch.nn.Module, texts: list[ScoredText], layer: int, target: float, *, pad_id: int,
                  unit: float, seed: int, n: int = RADIUS_DIRECTIONS) -> tuple[float, Calibration]:
    """A size for directions not found yet (MELBO's radius) in unit kl: the median |θ| at which
    ``n`` random directions (eval's control's, ``steerlab.measure.grid.random_directions``) cost ``target``
    nats per token on ``texts``. ``unit`` is the median ‖h_S‖ (the search's first probe and
    ceiling scale with it)."""
    directions = random_directions(n, int(model.config.hidden_size), seed, layer)
    found = kl_norms(model, texts, layer, directions, targets=[target], pad_id=pad_id,
                     start=UNIT_START * unit, max_norm=MAX_UNITS * unit)
    return float(np.median(found.norms[:, 0])), found


def signed_size_at_cost(model: torch.nn.Module, texts: list[ScoredText], layer: int, direction: torch.Tensor,
                 *, scale: float, pad_id: int, unit: float) -> float:
    """One signed scale in unit kl as a signed |θ|: the size at which ``direction`` (flipped for a
    negative ``scale``) costs |scale| nats per token on ``texts``; 0 for 0. ``unit`` is the median
    ‖h_S‖ (the search's first probe and ceiling scale with it)."""
    if scale == 0:
        return 0.0
    sign = 1.0 if scale > 0 else -1.0
    found = kl_norms(model, texts, layer, sign * direction.double()[None], targets=[abs(scale)],
                     pad_id=pad_id, start=UNIT_START * unit, max_norm=MAX_UNITS * unit)
    return sign * float(found.norms[0, 0])


def theta_at_scale(model: torch.nn.Module, direction: torch.Tensor, scale: float, unit: ScaleUnit, *,
                   layer: int, texts: list[ScoredText], pad_id: int, unit_norm: float | None) -> torch.Tensor:
    """θ on ``direction`` at ``scale`` in ``unit``: an L2 norm (abs), a fraction of ``unit_norm``, the
    median ‖h_S‖ (resid), or the size at which the direction, flipped for a negative scale, costs
    |scale| nats per token on ``texts`` (kl; ``unit_norm`` bounds the search)."""
    size = (signed_size_at_cost(model, texts, layer, direction, scale=scale, pad_id=pad_id, unit=unit_norm)
            if unit == "kl" else absolute([scale], unit, unit_norm)[0])
    return size * direction / direction.norm()


def neutral_texts_for(lm: LoadedModel, prompts: Sequence[str] | None = None, n: int = 6,
                      gen_tokens: int = 32) -> list:
    """What a cost is measured on: each neutral prompt (the lab's shipped val prompts, the first
    ``n``, or the user's ``prompts``) with the unsteered model's greedy continuation of
    ``gen_tokens`` tokens, as eval's KL column scores them."""
    if prompts is None:
        shipped = files("steerlab") / "resources" / "neutral-prompts.jsonl"
        prompts = [p.text for p in load_prompts(str(shipped), "val", n)]
    asked = prompt_ids(lm.tokenizer, list(prompts))
    continued = generate_ids(lm.model, asked, None, gen_tokens, pad_id=lm.tokenizer.pad_token_id).tokens
    return [ScoredText(f"neutral-{i}", a + c, len(a)) for i, (a, c) in enumerate(zip(asked, continued))]


def size_at_cost(vector: SteeringVector, model, tokenizer=None, kl: float = 0.04,
                 prompts: Sequence[str] | None = None, texts: list | None = None) -> float:
    """The L2 norm at which ``vector`` (its sign as it is) costs ``kl`` nats per token: the mean
    per-token KL(unsteered ‖ steered) over the unsteered model's own continuations of neutral
    prompts (``neutral_texts_for``; or ready ``texts``), found by eval's search to within 10%."""
    lm = as_loaded(model, tokenizer)
    vector.check_width(lm.model)
    if not kl > 0:
        raise ValueError(f"kl must be a positive cost in nats per token, got {kl}")
    texts = texts if texts is not None else neutral_texts_for(lm, prompts)
    pad = lm.tokenizer.pad_token_id
    unit = residual_norm(lm.model, [t.token_ids for t in texts], vector.layer, pad).median
    found = kl_norms(lm.model, texts, vector.layer, vector.direction.double()[None], targets=[kl], pad_id=pad,
                     start=UNIT_START * unit, max_norm=MAX_UNITS * unit)
    if not found.reached[0, 0]:
        raise ValueError(f"{vector.label or 'the vector'} reaches KL {found.kl[0, 0]:.3g}, not {kl}, "
                         f"within |θ| ≤ {MAX_UNITS * unit:.3g}: ask for another cost")
    return float(found.norms[0, 0])


def at_cost(vector: SteeringVector, model, tokenizer=None, kl: float = 0.04,
            prompts: Sequence[str] | None = None) -> SteeringVector:
    """``vector`` sized to cost ``kl`` nats per token on neutral text (the lab's shipped neutral
    prompts, or ``prompts``; ``size_at_cost``). ``model``: a ``LoadedModel``, or a causal LM with
    its ``tokenizer``."""
    norm = size_at_cost(vector, model, tokenizer, kl, prompts)
    return replace(vector.scaled(norm), label=f"{vector.label} at {kl:g} KL (|θ| {norm:.3g})".strip())
