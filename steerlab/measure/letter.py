"""The letter score: the A/B logit difference at the answer position, logit(positive letter) −
logit(negative letter), and the answer mass p(positive) + p(negative) beside it.

Computed from the steered forward's logits (``steerlab.lm.steered``), read at the last token of
each prompt, whose logits predict the answer letter. The full vocabulary row is needed there
because the answer mass needs the softmax normaliser. Its plain twin is
``steerlab.measure.reference.letter_plain``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from steerlab.lm.steered import QUESTIONS_PER_PASS, SETTINGS_PER_PASS, Pass, steered_logits
from steerlab.questions.prompts import AnswerTokens


@dataclass
class LetterScores:
    logit_diff: torch.Tensor  # [n_settings, n_q] fp32: logit(positive) - logit(negative)
    answer_mass: torch.Tensor  # [n_settings, n_q] fp32: p(positive) + p(negative)

    @classmethod
    def empty(cls, n_settings: int, n_q: int) -> "LetterScores":
        return cls(torch.empty(n_settings, n_q), torch.empty(n_settings, n_q))

    def take(self, done: Pass, answers: list[AnswerTokens]) -> int:
        """Fill in one pass whose sequences are ``answers``' prompts (one read each); returns
        the question×settings it held."""
        n_chunk, batch = done.logits.shape[0], done.sequences
        diff, mass = answer_scores(done.logits.reshape(n_chunk * len(batch), -1),
                                   [answers[i] for i in batch] * n_chunk)
        index = torch.tensor(batch)
        self.logit_diff[done.settings, index] = diff.view(n_chunk, len(batch))
        self.answer_mass[done.settings, index] = mass.view(n_chunk, len(batch))
        return n_chunk * len(batch)


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


def letter_reads(answers: list[AnswerTokens]) -> tuple[list[tuple[int, ...]], list[list[int]]]:
    """The steered forward's request for ``answers``: each prompt, read at its last token."""
    sequences = [a.prefix_ids for a in answers]
    return sequences, [[len(s) - 1] for s in sequences]


def letter_scores(model: torch.nn.Module, answers: list[AnswerTokens], source_layer: int,
                  thetas: torch.Tensor, *, pad_id: int, batch_size: int = QUESTIONS_PER_PASS,
                  settings_per_pass: int = SETTINGS_PER_PASS, share: bool = True,
                  progress: Callable[[int], None] | None = None) -> LetterScores:
    """Logit difference and answer mass for every θ row of ``thetas`` [m, d] (already scaled; a
    zero row is the unsteered model) on every prompt of ``answers``. ``progress(n)`` hears of
    every n question×settings done. ``share`` is off only to test that sharing changes nothing."""
    out = LetterScores.empty(thetas.shape[0], len(answers))
    sequences, reads = letter_reads(answers)
    for done in steered_logits(model, sequences, reads, source_layer, thetas=thetas, pad_id=pad_id,
                               batch_size=batch_size, settings_per_pass=settings_per_pass, share=share):
        n = out.take(done, answers)
        if progress:
            progress(n)
    return out
