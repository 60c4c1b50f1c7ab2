"""A/B logit difference of steered models: the fast path.

Fast path (docs/DESIGN.md, "The core idea"): questions sorted by length into batches; per batch, layers 0..S run
once (``run_prefix``); then several θ settings are stacked along the batch and only layers
S+1..end run from the cached residual; the final norm and the unembedding are applied at the
answer position only. The full vocabulary row is computed there (one position per question)
because the answer mass, p(positive) + p(negative), needs the softmax normaliser. The opening every
question shares (the chat template's system turn) runs through layers S+1.. once per setting, and
each batch attends to its cached keys and values.

Its plain twin, ``steerlab.measure.reference.evaluate_plain``, runs one full HF forward per setting with a
hook adding θ at ``down_proj``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from steerlab.lm.segment import (
    batched_prefixes,
    opening_shareable,
    record_opening,
    repeat_rows,
    run_layers,
    run_prefix,
    setting_rows,
    suffix_layer_kwargs,
    with_cache,
)
from steerlab.lm.site import decoder_layers, head
from steerlab.questions.prompts import AnswerTokens, common_opening

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


@dataclass
class Pass:
    """Logits of one pass of the fast path: some sequences under some settings."""
    sequences: list[int]  # indices into the sequences given
    settings: slice  # rows of thetas
    logits: torch.Tensor  # [n_settings_in_pass, n_read, vocab]: per sequence, its read positions
    counts: list[int]  # positions read per sequence, in the order of ``sequences``


@torch.no_grad()
def steered_logits(model: torch.nn.Module, sequences: list[tuple[int, ...]],
                   read_at: list[list[int]], source_layer: int, *, thetas: torch.Tensor, pad_id: int,
                   batch_size: int = QUESTIONS_PER_PASS, settings_per_pass: int = SETTINGS_PER_PASS,
                   share_opening: bool = True) -> Iterator[Pass]:
    """The fast path's core: logits at positions ``read_at[i]`` of ``sequences[i]`` under every θ
    row of ``thetas`` [m, d], one pass (a length-sorted batch of sequences × a chunk of settings)
    at a time; within a batch the settings' chunks come in order. Layers 0..S run once per batch,
    the settings are stacked along the batch for layers S+1..end, the head runs only at the read
    positions. ``share_opening`` runs the tokens every sequence opens with (before any read
    position) through layers S+1.. once per setting instead of once per sequence."""
    n_settings = thetas.shape[0]
    last_layer = len(decoder_layers(model)) - 1
    device = next(model.parameters()).device
    opening = 0
    if share_opening and opening_shareable(model, source_layer):
        opening = min(common_opening(sequences), min(min(at) for at in read_at))
    if opening:
        ids = torch.tensor([sequences[0][:opening]], device=device)
        opening_prefix = run_prefix(model, ids, torch.ones_like(ids), source_layer)
        opening_cache = record_opening(model, opening_prefix, thetas.to(device), last_layer)
    for batch, prefix in batched_prefixes(model, sequences, source_layer, pad_id, batch_size):
        # (row, column) of every read position in the batch, counted from the end of the opening
        rows = torch.tensor([b for b, i in enumerate(batch) for _ in read_at[i]], device=device)
        cols = torch.tensor([at - opening for i in batch for at in read_at[i]], device=device)
        hidden = prefix.hidden[:, opening:]
        kwargs = (suffix_layer_kwargs(prefix.layer_kwargs, prefix.attention_mask, opening)
                  if opening else prefix.layer_kwargs)
        for first in range(0, n_settings, settings_per_pass):
            chunk = thetas[first:first + settings_per_pass]
            stacked_kwargs = repeat_rows(kwargs, len(batch), len(chunk))
            if opening:
                stacked_kwargs = with_cache(stacked_kwargs, opening_cache.attending(
                    setting_rows(slice(first, first + len(chunk)), len(batch), device)))
            # settings are stacked setting-major: θ repeats per sequence row
            theta_rows = chunk.repeat_interleave(len(batch), dim=0)[:, None, :]
            stacked = hidden.repeat(len(chunk), 1, 1) + theta_rows.to(device=device, dtype=hidden.dtype)
            stacked = run_layers(model, stacked, stacked_kwargs, source_layer + 1, last_layer)
            read_rows = torch.arange(len(chunk), device=device)[:, None] * len(batch) + rows[None]
            logits = head(model, stacked[read_rows, cols[None].expand_as(read_rows)])
            yield Pass(batch, slice(first, first + len(chunk)), logits,
                       [len(read_at[i]) for i in batch])


@torch.no_grad()
def evaluate(model: torch.nn.Module, answers: list[AnswerTokens], source_layer: int,
             thetas: torch.Tensor, *, pad_id: int, batch_size: int = QUESTIONS_PER_PASS,
             settings_per_pass: int = SETTINGS_PER_PASS, share_opening: bool = True,
             progress: Callable[[int], None] | None = None) -> EvalResult:
    """Logit difference and answer mass for every θ row of ``thetas`` [m, d] (already scaled; a zero
    row is the unsteered model) on every question: the fast path (``steered_logits``, read at the
    last real token, whose logits predict the answer). ``progress(n)`` is told of every n
    question×settings done. ``share_opening`` is off only to test that it changes nothing."""
    logit_diff = torch.empty(thetas.shape[0], len(answers))
    answer_mass = torch.empty(thetas.shape[0], len(answers))
    sequences = [a.prefix_ids for a in answers]
    for done in steered_logits(model, sequences, [[len(s) - 1] for s in sequences], source_layer,
                               thetas=thetas, pad_id=pad_id, batch_size=batch_size, settings_per_pass=settings_per_pass, share_opening=share_opening):
        n_chunk, batch = done.logits.shape[0], done.sequences
        diff, mass = answer_scores(done.logits.reshape(n_chunk * len(batch), -1),
                                   [answers[i] for i in batch] * n_chunk)
        index = torch.tensor(batch)
        logit_diff[done.settings, index] = diff.view(n_chunk, len(batch))
        answer_mass[done.settings, index] = mass.view(n_chunk, len(batch))
        if progress:
            progress(n_chunk * len(batch))
    return EvalResult(logit_diff, answer_mass)
