"""What a steering vector costs, from Python: the size at which it moves the next-token
distribution on neutral text by a given KL, the unit every number of the lab is reported in
(eval's KL column and its search, steerlab/measure/scales/calibrate.py)."""
from __future__ import annotations

from dataclasses import replace
from importlib.resources import files
from typing import Sequence

from steerlab.lm.generate import generate_ids, prompt_ids
from steerlab.lm.model import LoadedModel, as_loaded
from steerlab.lm.vector import SteeringVector
from steerlab.measure.scales.calibrate import MAX_UNITS, UNIT_START, kl_norms
from steerlab.measure.scales.norms import residual_norm
from steerlab.measure.side_effects import ScoredText
from steerlab.questions.data import load_prompts


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
