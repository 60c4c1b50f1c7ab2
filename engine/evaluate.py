"""A/B logit difference of steered models: the fast path.

Fast path (design section 4): questions sorted by length into batches; per batch, layers 0..S run
once (``run_prefix``); then several θ settings are stacked along the batch and only layers
S+1..end run from the cached residual; the final norm and the unembedding are applied at the
answer position only. The full vocabulary row is computed there (one position per question)
because the answer mass, p(positive) + p(negative), needs the softmax normaliser. The opening every
question shares (the chat template's system turn) runs through layers S+1.. once per setting, and
each batch attends to its cached keys and values.

Its plain twin, ``engine.reference.evaluate_plain``, runs one full HF forward per setting with a
hook adding θ at ``down_proj``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from engine.prompts import AnswerTokens, common_opening
from engine.segment import (
    OpeningCache,
    batched_prefixes,
    repeat_rows,
    run_layers,
    run_prefix,
    suffix_layer_kwargs,
)
from engine.site import decoder_layers, head

# About 8 sequences per pass is fastest on the 2-core dev CPU: 162 ms per question×setting against
# 272 ms for 16 questions × 4 settings (bigger passes fall out of cache). GPUs want far more.
QUESTIONS_PER_PASS = 4
SETTINGS_PER_PASS = 2


@dataclass
class EvalResult:
    logit_diff: torch.Tensor  # [n_settings, n_q] fp32: logit(positive) - logit(negative)
    answer_mass: torch.Tensor  # [n_settings, n_q] fp32: p(positive) + p(negative)


def answer_scores(logits: torch.Tensor, answers: list[AnswerTokens]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logit difference and answer mass from [n, vocab] logits, row i for ``answers[i]``."""
    logits = logits.float()
    pos = torch.tensor([a.positive_id for a in answers], device=logits.device)
    neg = torch.tensor([a.negative_id for a in answers], device=logits.device)
    rows = torch.arange(len(answers), device=logits.device)
    log_probs = logits.log_softmax(-1)
    diff = logits[rows, pos] - logits[rows, neg]
    mass = log_probs[rows, pos].exp() + log_probs[rows, neg].exp()
    return diff.cpu(), mass.cpu()


@torch.no_grad()
def evaluate(model: torch.nn.Module, answers: list[AnswerTokens], source_layer: int,
             thetas: torch.Tensor, pad_id: int, batch_size: int = QUESTIONS_PER_PASS,
             settings_per_pass: int = SETTINGS_PER_PASS, share_opening: bool = True,
             progress: Callable[[int, int], None] | None = None) -> EvalResult:
    """Logit difference and answer mass for every θ row of ``thetas`` [m, d] (already scaled; a zero
    row is the unsteered model) on every question: the fast path. ``share_opening`` runs the
    tokens every question opens with through layers S+1.. once per setting instead of once per
    question (same numbers; off only to test that)."""
    n_settings, n_q = thetas.shape[0], len(answers)
    last_layer = len(decoder_layers(model)) - 1
    device = next(model.parameters()).device
    logit_diff = torch.empty(n_settings, n_q)
    answer_mass = torch.empty(n_settings, n_q)
    n_batches = -(-n_q // batch_size)
    sequences = [a.prefix_ids for a in answers]
    opening = common_opening(sequences) if share_opening else 0
    if opening:
        ids = torch.tensor([sequences[0][:opening]], device=device)
        opening_prefix = run_prefix(model, ids, torch.ones_like(ids), source_layer)
        opening_cache = OpeningCache.record(model, opening_prefix, thetas.to(device), last_layer)
    for done, (batch, prefix) in enumerate(
            batched_prefixes(model, sequences, source_layer, pad_id, batch_size)):
        batch_answers = [answers[i] for i in batch]
        # the last real token's logits predict the answer; counted from the end of the opening
        answer_at = prefix.attention_mask.sum(1) - 1 - opening
        index = torch.tensor(batch)
        hidden = prefix.hidden[:, opening:]
        kwargs = (suffix_layer_kwargs(prefix.layer_kwargs, prefix.attention_mask, opening)
                  if opening else prefix.layer_kwargs)
        for first in range(0, n_settings, settings_per_pass):
            chunk = thetas[first:first + settings_per_pass]
            stacked_kwargs = repeat_rows(kwargs, len(batch), len(chunk))
            if opening:
                stacked_kwargs["past_key_values"] = opening_cache.for_pass(
                    slice(first, first + len(chunk)), len(batch))
            # settings are stacked setting-major: θ repeats per question row
            theta_rows = chunk.repeat_interleave(len(batch), dim=0)[:, None, :]
            stacked = hidden.repeat(len(chunk), 1, 1) + theta_rows.to(device=device, dtype=hidden.dtype)
            stacked = run_layers(model, stacked, stacked_kwargs, source_layer + 1, last_layer)
            rows = torch.arange(stacked.shape[0], device=device)
            logits = head(model, stacked[rows, answer_at.repeat(len(chunk))])
            diff, mass = answer_scores(logits, batch_answers * len(chunk))
            logit_diff[first:first + len(chunk), index] = diff.view(len(chunk), len(batch))
            answer_mass[first:first + len(chunk), index] = mass.view(len(chunk), len(batch))
        if progress:
            progress(done + 1, n_batches)
    return EvalResult(logit_diff, answer_mass)
