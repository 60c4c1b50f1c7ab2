"""Completions of a steered model: HF ``generate`` with a ``SteeringVector`` added on every forward.

The hook of ``steerlab.lm.site.add_at`` (at ``down_proj`` or at the block's output, the resolved site)
adds θ at every position of every forward call, so the prompt and every generated token are
steered; the KV cache holds keys and values computed with θ, which is what a full forward over
the whole text would compute. Batches are left-padded
(generation appends on the right); HF derives position ids from the attention mask, so a padded
row gets the same positions, logits and tokens as the row alone. Pad positions receive θ as well,
but no real token attends to them.

Open-ended prompts are JSONL, one object per line::

    {"id": "...", "text": "question or instruction", "topic": "...", "split": "test", "source": "..."}
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from steerlab.base.errors import UserError
from steerlab.base.parallel import SINGLE, Ranks
from steerlab.lm.site import add_at, resolve_site
from steerlab.lm.vector import SteeringVector
from steerlab.questions.prompts import format_prompt, length_batches, pad_left

# Sampling draws from the model's own (steered) distribution: these override any temperature,
# top-k or top-p of the model's generation config (greedy ignores them; HF warns if they are passed).
NEUTRAL_SAMPLING = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}


def check_max_new_tokens(max_new_tokens: int) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise UserError(f"MAX_NEW_TOKENS must be a whole number of at least 1, got {max_new_tokens!r}")


def prompt_ids(tokenizer, texts: list[str], system: str | None = None) -> list[tuple[int, ...]]:
    """Token ids of each text as the user turn of the chat template, generation prompt added
    (no special tokens beyond the template's, as for the A/B prompts)."""
    return [tuple(tokenizer(format_prompt(tokenizer, text, system), add_special_tokens=False).input_ids)
            for text in texts]


@dataclass
class Generated:
    tokens: list[tuple[int, ...]]  # new tokens per prompt, up to and including the first EOS
    seconds: float  # wall time of the generate calls
    first_logits: torch.Tensor | None = None  # [n, vocab] logits of the first new token, if asked
    texts: list[str] = field(default_factory=list)  # decoded by ``generate``

    @property
    def n_tokens(self) -> int:
        return sum(len(tokens) for tokens in self.tokens)


def _eos_ids(model: torch.nn.Module) -> set[int]:
    eos = model.generation_config.eos_token_id
    return set() if eos is None else {eos} if isinstance(eos, int) else set(eos)


def _cut_at_eos(tokens: list[int], eos: set[int]) -> tuple[int, ...]:
    """Finished rows of a batch continue with padding; a row alone would have stopped at EOS."""
    for i, token in enumerate(tokens):
        if token in eos:
            return tuple(tokens[: i + 1])
    return tuple(tokens)


@torch.no_grad()
def generate_ids(model: torch.nn.Module, sequences: list[tuple[int, ...]], vector: SteeringVector | None,
                 max_new_tokens: int, *, pad_id: int, sample: bool = False, seed: int = 0,
                 batch_size: int = 8, first_logits: bool = False,
                 progress: Callable[[], None] | None = None, ranks: Ranks = SINGLE) -> Generated:
    """New tokens for every prompt (token ids, e.g. from ``prompt_ids``) with ``vector``'s θ as
    it is (``SteeringVector.scaled`` sets its size) added after its layer at its site, at every
    position; ``vector=None`` runs the plain model without a hook. Greedy, or with ``sample``
    drawn from the model's distribution with the global
    RNG seeded by ``seed`` (and restored afterwards). Prompts are batched by length;
    ``progress()`` is called after each batch. Under several ``ranks`` each generates for its
    share of the prompts and the results are gathered (``seconds``: the slowest rank's). Greedy
    output does not depend on the ranks; sampled output does (each rank seeds its own stream)."""
    check_max_new_tokens(max_new_tokens)
    weight = next(model.parameters())
    eos = _eos_ids(model)
    if vector is not None:  # resolved and cast once, not on every batch
        site = resolve_site(model, vector.layer, vector.site)
        theta = vector.theta().to(device=weight.device, dtype=weight.dtype)
    mine = ranks.part(sequences)
    tokens: list[tuple[int, ...]] = [()] * len(mine)
    logits = [None] * len(mine)
    devices = [weight.device] if weight.device.type == "cuda" else []
    start = time.perf_counter()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for batch in length_batches([len(seq) for seq in mine], batch_size):
            ids, mask = pad_left([mine[i] for i in batch], pad_id)
            kwargs = dict(input_ids=ids.to(weight.device), attention_mask=mask.to(weight.device),
                          max_new_tokens=max_new_tokens, do_sample=sample, pad_token_id=pad_id,
                          return_dict_in_generate=True, output_logits=first_logits,
                          **(NEUTRAL_SAMPLING if sample else {}))
            if vector is None:
                out = model.generate(**kwargs)
            else:
                with add_at(model, vector.layer, theta, site):
                    out = model.generate(**kwargs)
            new = out.sequences[:, ids.shape[1]:].tolist()
            for row, i in enumerate(batch):
                tokens[i] = _cut_at_eos(new[row], eos)
                if first_logits:
                    logits[i] = out.logits[0][row]
            if progress is not None:
                progress()
    seconds = ranks.largest(time.perf_counter() - start)
    tokens = ranks.gather(tokens)
    stacked = None
    if first_logits:
        stacked = torch.stack(logits) if logits else torch.empty(
            0, model.config.vocab_size, dtype=weight.dtype, device=weight.device)
        stacked = ranks.cat_rows(stacked)
    return Generated(tokens, seconds, stacked)


def generate(model: torch.nn.Module, tokenizer, texts: list[str], vector: SteeringVector | None,
             *, max_new_tokens: int, sample: bool = False, seed: int = 0, batch_size: int = 8,
             progress: Callable[[], None] | None = None, ranks: Ranks = SINGLE) -> Generated:
    """Completions of ``texts`` asked as user turns of the chat template (``generate_ids``), with
    ``texts`` filled: the new tokens decoded, special tokens skipped."""
    if vector is not None:
        vector.check_width(model)
    generated = generate_ids(model, prompt_ids(tokenizer, texts), vector, max_new_tokens,
                             pad_id=tokenizer.pad_token_id, sample=sample, seed=seed, batch_size=batch_size,
                             progress=progress, ranks=ranks)
    generated.texts = [tokenizer.decode(tokens, skip_special_tokens=True) for tokens in generated.tokens]
    return generated


@dataclass
class Setting:
    """One row of a comparison of completions: the unsteered model, or a stored vector at a scale."""
    method: str  # "unsteered" for the plain model
    run: str = ""
    index: int = -1
    scale: float = 0.0
    vector: SteeringVector | None = None  # θ exactly as added, its layer and site

    @property
    def source_layer(self) -> int:
        return -1 if self.vector is None else self.vector.layer

    @property
    def theta(self) -> np.ndarray | None:
        """[d] f32, exactly what is added."""
        return None if self.vector is None else self.vector.direction.numpy().astype(np.float32)

    @property
    def label(self) -> str:
        if self.theta is None:
            return "unsteered"
        return f"{self.method}/{self.run} #{self.index} at scale {self.scale:+.4g}"

    def record(self) -> dict:
        """What the stored group's settings say about this row (θ by checksum: a recomputed vector
        changes it)."""
        digest = "" if self.theta is None else hashlib.sha256(self.theta.tobytes()).hexdigest()[:16]
        return {"method": self.method, "run": self.run, "index": self.index, "scale": self.scale,
                "source_layer": self.source_layer, "theta_sha256": digest}


def generate_settings(model: torch.nn.Module, tokenizer, texts: list[str], settings: list[Setting], *,
                      max_new_tokens: int, sample: bool = False, seed: int = 0, batch_size: int = 8,
                      progress: Callable[[], None] | None = None,
                      finished: Callable[[Setting, Generated], None] | None = None,
                      ranks: Ranks = SINGLE) -> list[Generated]:
    """``generate`` for each setting in turn (the same prompts, seed and length), at each setting's
    own site; ``finished(setting, generated)`` is called after each."""
    width = model.get_input_embeddings().embedding_dim
    for setting in settings:
        if setting.theta is not None and setting.theta.shape != (width,):
            raise UserError(f"{setting.method}/{setting.run} has width {setting.theta.shape[0]}, "
                            f"but the model has {width}: was it computed for another model?")
    outs = []
    for setting in settings:
        outs.append(generate(model, tokenizer, texts, setting.vector, max_new_tokens=max_new_tokens,
                             sample=sample, seed=seed, batch_size=batch_size, progress=progress, ranks=ranks))
        if finished is not None:
            finished(setting, outs[-1])
    return outs
