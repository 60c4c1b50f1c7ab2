"""The scale unit of SCALE_UNIT=resid, cached in the store: the median ‖h_S‖ of each source layer
over the first NORM_PROMPTS train prompts of a behaviour (``steerlab.measure.scales.norms`` measures it), stored at
/<model>/<behavior>/norms/L<S> (docs/DESIGN.md, "Scales")."""
from __future__ import annotations

import time
from pathlib import Path

from steerlab.base.parallel import ranks
from steerlab.base.progress import say, step
from steerlab.lm.generate import prompt_ids
from steerlab.lm.model import LoadedModel
from steerlab.measure.scales.norms import NORM_PROMPTS, residual_norm
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
from steerlab.store.groups import ResidualNorm


def residual_units(store: str | Path, lm: LoadedModel, layers, *, model: str, dtype: str,
                   behavior: str, data: str | Path) -> dict[int, ResidualNorm]:
    """The unit at each of ``layers`` for ``behavior`` (its items ``data``): read from ``store``
    when current (same model, dtype, data and code), else measured once and written (rank 0
    decides and writes; every rank measures, so none waits). ``model`` and ``dtype`` are
    recorded as given."""
    version = code_version("steerlab.measure.scales.norms")
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
            with step(f"‖h_S‖ at layer {layer} over {len(sequences)} {behavior} train prompts (the scale unit)"):
                found[layer] = residual_norm(lm.model, sequences, layer, lm.tokenizer.pad_token_id)
            if ranks().writer:
                with writing(store) as h5:
                    write_norm(h5, lm, behavior, found[layer],
                               run_attrs(settings, version, started, time.perf_counter() - t0))
    for layer, norm in sorted(found.items()):
        say(f"  scale unit at layer {layer}: median ‖h_S‖ = {norm.median:.1f} (mean {norm.mean:.1f}, "
            f"{norm.n_tokens} tokens)")
    return found
