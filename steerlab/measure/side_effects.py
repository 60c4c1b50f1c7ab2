"""What steering costs on harmless text: KL(unsteered ‖ steered) of next-token distributions.

Each neutral prompt is followed by the unsteered model's own greedy continuation (computed once
per model and stored, so every setting is scored on the same tokens). At every position that
predicts a continuation token, the steered and the unsteered next-token distributions are
compared: the cost of a setting on a prompt is the mean over those positions of
KL(unsteered ‖ steered), and its top-1 agreement the share of positions where both pick the same
token. Computed from the steered forward (``steerlab.lm.steered``), with the unsteered model as
an extra θ = 0 setting in the same passes; ``steerlab.measure.reference.side_effects_plain`` is
its twin.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from steerlab.lm.steered import QUESTIONS_PER_PASS, SETTINGS_PER_PASS, steered_logits


@dataclass
class SideEffects:
    kl: torch.Tensor  # [n_settings, n_prompts] fp64: mean per-token KL(unsteered ‖ steered), nats
    top1: torch.Tensor  # [n_settings, n_prompts] fp64: share of positions with the same argmax


@dataclass(frozen=True)
class ScoredText:
    """A neutral prompt and its unsteered greedy continuation, as one token sequence."""
    prompt_id: str
    token_ids: tuple[int, ...]  # prompt + continuation
    prompt_length: int  # the continuation starts here

    @property
    def read_at(self) -> list[int]:
        """The positions whose next-token distributions predict the continuation."""
        return list(range(self.prompt_length - 1, len(self.token_ids) - 1))


def compare(unsteered: torch.Tensor, steered: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position (last axis = vocabulary): KL(unsteered ‖ steered) in fp64 and whether the
    argmax agrees. ``unsteered`` broadcasts against ``steered`` ([n, V] against [m, n, V]: one
    reference for m settings), so each reference distribution is normalised once."""
    p_log = unsteered.double().log_softmax(-1)
    p = p_log.exp()
    q = steered.double()
    # Σ p (log p − log q) with log q = q − logsumexp(q): no log-softmax of every steered row
    kl = (p * p_log).sum(-1) - (p * q).sum(-1) + q.logsumexp(-1)
    return kl, (unsteered.argmax(-1) == steered.argmax(-1)).double()


@torch.no_grad()
def side_effects(model: torch.nn.Module, texts: list[ScoredText], source_layer: int,
                 thetas: torch.Tensor, *, pad_id: int, batch_size: int = QUESTIONS_PER_PASS,
                 settings_per_pass: int = SETTINGS_PER_PASS, share: bool = True,
                 progress: Callable[[int], None] | None = None) -> SideEffects:
    """KL and top-1 agreement of every θ row of ``thetas`` [m, d] against the unsteered model,
    per text. Rows with θ = 0 are the unsteered model itself: they are not run again and score
    exactly 0 and 1. ``share`` is off only to test that sharing changes nothing."""
    steered_rows = torch.nonzero((thetas != 0).any(1)).flatten()
    kl = torch.zeros(thetas.shape[0], len(texts), dtype=torch.float64)
    top1 = torch.ones_like(kl)
    if len(steered_rows) == 0:
        return SideEffects(kl, top1)
    # setting 0 of every batch is the unsteered model: its pass comes first within the batch
    all_thetas = torch.cat([torch.zeros(1, thetas.shape[1], dtype=thetas.dtype), thetas[steered_rows]])
    unsteered: torch.Tensor | None = None
    for done in steered_logits(model, [t.token_ids for t in texts], [t.read_at for t in texts], source_layer,
                               thetas=all_thetas, pad_id=pad_id, batch_size=batch_size,
                               settings_per_pass=settings_per_pass, share=share):
        logits = done.logits
        if done.settings.start == 0:
            unsteered, logits = logits[0], logits[1:]
        first = max(done.settings.start - 1, 0)
        rows = steered_rows[first:first + len(logits)]
        per_kl, per_top1 = compare(unsteered, logits)
        # mean over each text's own positions
        start = 0
        for index, count in zip(done.sequences, done.counts):
            kl[rows, index] = per_kl[:, start:start + count].mean(1)
            top1[rows, index] = per_top1[:, start:start + count].mean(1)
            start += count
        if progress:
            progress(len(logits) * len(done.sequences))
    return SideEffects(kl, top1)
