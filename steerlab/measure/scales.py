"""Scale units: how big θ is, in the three units a scale can be read in (SCALE_UNIT).

- ``abs``: a scale is an L2 norm of θ.
- ``resid``: a scale is a fraction of ‖h_S‖, the typical norm of the residual stream at the
  source layer, so that one grid means the same on models whose residual streams live at
  different norms. The norm is measured once per model, source layer and behaviour over the real
  tokens of the first ``NORM_PROMPTS`` train prompts (as eval builds them, up to the generation
  prompt) and stored at /<model>/<behavior>/norms/L<S>; every runner reads that one number. It
  is the **median** per-token norm, not the mean: the first token of every sequence is an
  attention sink whose norm is orders of magnitude above every other token's, so a mean is set by
  one position that steering never needs to move (docs/DESIGN.md, "Scales"). Mean and quantiles
  are stored beside it.
- ``kl`` (the default): a scale t is the |θ| at which that direction, with that sign, costs t
  nats per token of mean KL(unsteered ‖ steered) on the val neutral texts, the statistic eval
  reports. A norm means a different cost for every direction and every model; the cost means the
  same on all (docs/usage.md, "Scales that travel between models"). It has no one norm per
  scale: each direction's is searched for (``steerlab.measure.kl_search``), with the median
  ‖h_S‖ as the search's yardstick; eval's groups are calibrated by
  ``steerlab.measure.calibration``, other sizes by cost by ``steerlab.measure.cost``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch

from steerlab.base.parallel import ranks
from steerlab.base.progress import say, step
from steerlab.lm.generate import prompt_ids
from steerlab.lm.model import LoadedModel
from steerlab.lm.segment import residual_norms
from steerlab.questions.data import load_items
from steerlab.store import (
    code_version,
    file_checksum,
    is_current,
    norms_path,
    now,
    read_norm,
    run_attrs,
    write_norm,
    writing,
)
from steerlab.store.groups import QUANTILES, ResidualNorm

NORM_PROMPTS = 128
ScaleUnit = Literal["kl", "resid", "abs"]
SCALE_UNITS: tuple[ScaleUnit, ...] = get_args(ScaleUnit)


@torch.no_grad()
def residual_norm(model: torch.nn.Module, sequences: list[tuple[int, ...]], layer: int, pad_id: int,
                  batch_size: int = 16) -> ResidualNorm:
    """‖h_S‖ of every real token of ``sequences`` after layer ``layer`` (fp64), summarised."""
    values = residual_norms(model, sequences, layer, pad_id, batch_size).numpy()
    return ResidualNorm(layer, float(np.median(values)), float(values.mean()),
                        tuple(float(q) for q in np.quantile(values, QUANTILES)), len(values), len(sequences))


def absolute(scales: list[float], unit: str, norm: float | None) -> list[float]:
    """The L2 norms of θ that ``scales`` mean: fractions of ``norm`` (unit ``resid``) or
    themselves (unit ``abs``). Unit ``kl`` has no one norm per scale: each direction's is found
    by ``kl_norms`` (``Calibrator``, ``signed_size_at_cost``)."""
    if unit == "abs":
        return list(scales)
    if unit == "kl":
        raise ValueError("a scale in unit kl is a cost, not a norm: "
                         "calibrate it per direction (kl_norms, Calibrator)")
    if unit != "resid":
        raise ValueError(f"unit must be one of {SCALE_UNITS}, got {unit!r}")
    if norm is None or not norm > 0:
        raise ValueError(f"a scale in units of ‖h_S‖ needs a positive norm, got {norm}")
    return [float(s) * norm for s in scales]


def residual_units(store: str | Path, lm: LoadedModel, layers, *, model: str, dtype: str,
                   behavior: str, data: str | Path) -> dict[int, ResidualNorm]:
    """The unit at each of ``layers`` for ``behavior`` (its items ``data``): read from ``store``
    when current (same model, dtype, data and code), else measured once and written (rank 0
    decides and writes; every rank measures, so none waits). ``model`` and ``dtype`` are
    recorded as given."""
    version = code_version("steerlab.measure.scales:residual_units", "steerlab.lm.model:load_model")
    found, missing = {}, []
    for layer in sorted(set(layers)):
        settings = {"model": model, "dtype": dtype, "behavior": behavior,
                    "data_checksum": file_checksum(data), "layer": layer, "n_prompts": NORM_PROMPTS}
        where = norms_path(lm.key, behavior, layer)
        if ranks().same(is_current(store, where, settings, version)):
            found[layer] = read_norm(store, lm.key, behavior, layer)
        else:
            missing.append((layer, settings))
    if missing:
        items = load_items(data, "train")[:NORM_PROMPTS]
        sequences = prompt_ids(lm.tokenizer, [item.question for item in items])
        for layer, settings in missing:
            started, t0 = now(), time.perf_counter()
            with step(f"‖h_S‖ at layer {layer} over {len(sequences)} {behavior} train prompts "
                      "(the scale unit)"):
                found[layer] = residual_norm(lm.model, sequences, layer, lm.tokenizer.pad_token_id)
            if ranks().writer:
                with writing(store) as h5:
                    write_norm(h5, lm, behavior, found[layer],
                               run_attrs(settings, version, started, time.perf_counter() - t0))
    for layer, norm in sorted(found.items()):
        say(f"  scale unit at layer {layer}: median ‖h_S‖ = {norm.median:.1f} (mean {norm.mean:.1f}, "
            f"{norm.n_tokens} tokens)")
    return found
