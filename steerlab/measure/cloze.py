"""Cloze scores: how likely the model finds each answer's *text* after the question, no letters.

An A/B item becomes a cloze item by dropping its choice block: the question stem (the text
before ``Choices:``) goes into the prompt (the chat template, as every prompt here), and each of
the positive and negative answer texts is scored as the continuation, by the sum of its tokens'
log-probabilities. Kept per answer with its token and character counts, so sum, per-token (the
headline) and per-character normalisations can all be recomputed (lm-evaluation-harness'
``acc``/``acc_norm`` idea). There is no letter to prefer here; the confound of cloze scores is
Yes/No polarity (``steerlab.questions.polarity``).

Computed from the steered forward's logits (``steerlab.lm.steered``): both answers of an item are
one stem, so its prompt runs once per setting. Its plain twin is
``steerlab.measure.reference.cloze_plain``.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from steerlab.lm.steered import QUESTIONS_PER_PASS, SETTINGS_PER_PASS, Pass, steered_logits
from steerlab.questions.cloze_form import ClozeItem


def cloze_preference(logprob: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per question, how much more likely the positive answer's text is than the negative's, in
    nats per token (the headline normalisation): ``logprob`` [..., 2, n_q] summed log-probs over
    ``counts`` [2, n_q] tokens (or characters, for per-character scores)."""
    per_unit = np.asarray(logprob, dtype=np.float64) / np.asarray(counts)
    return per_unit[..., 0, :] - per_unit[..., 1, :]


def token_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) under [n, vocab] logits, at least in fp32."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return logits.log_softmax(-1).gather(-1, targets[:, None])[:, 0]


def cloze_reads(items: list[ClozeItem]) -> tuple[list[tuple[int, ...]], list[list[int]], list[int]]:
    """The steered forward's request for ``items``: every prompt + answer (answer-major: all
    positive answers, then all negative ones), read where each answer token is predicted, and the
    item each belongs to (its stem)."""
    sequences = [item.sequence(w) for w in (0, 1) for item in items]
    reads = [item.read_at(w) for w in (0, 1) for item in items]
    return sequences, reads, [i for _ in (0, 1) for i in range(len(items))]


class ClozeSums:
    """[n_settings, 2 (positive, negative), n_items] fp64 summed log-probabilities of each
    answer's tokens, filled in pass by pass."""

    def __init__(self, n_settings: int, items: list[ClozeItem]):
        self.items = items
        self.values = torch.zeros(n_settings, 2, len(items), dtype=torch.float64)
        self.targets = [item.answer(w) for w in (0, 1) for item in items]

    def take(self, done: Pass) -> float:
        """Fill in one pass over ``cloze_reads``' sequences; returns the item×settings it held
        (two answers make one item)."""
        n_chunk = done.logits.shape[0]
        wanted = torch.tensor([t for i in done.sequences for t in self.targets[i]], device=done.logits.device)
        per_token = token_log_probs(done.logits.reshape(-1, done.logits.shape[-1]),
                                    wanted.repeat(n_chunk)).view(n_chunk, -1).double().cpu()
        start = 0
        for i, count in zip(done.sequences, done.counts):
            which, item = divmod(i, len(self.items))
            self.values[done.settings, which, item] = per_token[:, start:start + count].sum(1)
            start += count
        return n_chunk * len(done.sequences) / 2


def cloze_logprobs(model: torch.nn.Module, items: list[ClozeItem], source_layer: int,
                   thetas: torch.Tensor, *, pad_id: int, batch_size: int = QUESTIONS_PER_PASS,
                   settings_per_pass: int = SETTINGS_PER_PASS, share: bool = True,
                   progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """[n_settings, 2 (positive, negative), n_items] fp64: the summed log-probability of each
    answer's tokens after its prompt, under every θ row of ``thetas`` [m, d] (already scaled; a
    zero row is the unsteered model). ``progress(n)`` hears of n item×settings done. ``share``
    is off only to test that sharing changes nothing."""
    out = ClozeSums(thetas.shape[0], items)
    sequences, reads, stems = cloze_reads(items)
    for done in steered_logits(model, sequences, reads, source_layer, thetas=thetas, pad_id=pad_id,
                               stems=stems, batch_size=batch_size, settings_per_pass=settings_per_pass,
                               share=share):
        n = out.take(done)
        if progress:
            progress(n)
    return out.values
