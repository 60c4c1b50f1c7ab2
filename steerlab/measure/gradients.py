"""The gradient of each question's score with respect to θ at θ = 0: what the first-order null and
the ceiling direction are computed from (docs/conventions.md, "Floor and ceiling").

For question q and a score s, g_q = ∂s_q/∂θ with θ added after layer S at every position, so a
direction r at size |θ| moves q by |θ| g_qᵀr to first order. The letter score of q is the mean
over its answer orders of the logit difference, so its gradient is the mean of the orders'
gradients; the cloze score is the positive answer's log-probability per token minus the
negative's, so its gradient is the difference of the two answers' per-token gradients. The
gradients come from the steered forward's backward pass (``steerlab.lm.steered.sequence_gradients``),
one backward per batch of sequences.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from steerlab.lm.steered import sequence_gradients
from steerlab.measure.cloze import cloze_reads, token_log_probs
from steerlab.measure.letter import letter_reads
from steerlab.questions.cloze_form import ClozeItem
from steerlab.questions.prompts import AnswerTokens


@dataclass
class ScoreGradients:
    """Per question, the gradient of each score at θ = 0 (fp64, rows in question order)."""
    letter: np.ndarray | None  # [n_q, d]: ∂(order-mean logit difference)/∂θ; None without the letter score
    cloze: np.ndarray | None  # [n_q, d]: ∂(cloze preference, nats per token)/∂θ; None without cloze


def score_gradients(model: torch.nn.Module, answers: list[AnswerTokens], cloze: list[ClozeItem] | None,
                    n_orders: int, source_layer: int, *, pad_id: int, batch_size: int = 4,
                    theta0: torch.Tensor | None = None,
                    progress: Callable[[int], None] | None = None) -> ScoreGradients:
    """The gradients of both scores of every question (``answers`` order-major, ``cloze`` the same
    questions' cloze forms; either may be empty/None) at ``theta0`` (default 0). ``progress(n)``
    hears of n sequences done (a question is ``n_orders`` letter prompts and two cloze answers)."""
    sequences, reads = letter_reads(answers)
    n_letter = len(sequences)
    targets: list[tuple[int, ...]] = []
    if cloze is not None:
        cloze_sequences, cloze_at, _ = cloze_reads(cloze)
        sequences, reads = sequences + cloze_sequences, reads + cloze_at
        targets = [item.answer(w) for w in (0, 1) for item in cloze]
    positive = [a.positive_id for a in answers]
    negative = [a.negative_id for a in answers]

    def objective(logits: torch.Tensor, batch: list[int], counts: list[int]) -> torch.Tensor:
        values, start = [], 0
        for i, count in zip(batch, counts):
            rows = logits[start:start + count]
            if i < n_letter:  # the letter's logit difference at its one read position
                values.append(rows[0, positive[i]] - rows[0, negative[i]])
            else:  # an answer's log-probability per token
                wanted = torch.tensor(targets[i - n_letter], device=logits.device)
                values.append(token_log_probs(rows, wanted).sum() / count)
            start += count
        return torch.stack(values)

    grads = sequence_gradients(model, sequences, reads, source_layer, objective, pad_id=pad_id,
                               batch_size=batch_size, theta0=theta0, progress=progress).numpy()
    letter = None
    if answers:
        n_q = n_letter // n_orders
        letter = grads[:n_letter].reshape(n_orders, n_q, -1).mean(0)
    cloze_grads = None
    if cloze is not None:
        n_items = len(cloze)
        cloze_grads = grads[n_letter:n_letter + n_items] - grads[n_letter + n_items:]
    return ScoreGradients(letter, cloze_grads)
