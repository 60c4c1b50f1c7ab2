"""What one set of θ settings does and costs: the A/B scores of every setting on every question,
in both answer orders, and its KL on neutral text. Eval and the cross-behaviour matrix both
score their settings here, so the two cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from engine.evaluate import evaluate
from engine.prompts import AnswerTokens
from engine.side_effects import ScoredText, side_effects


@dataclass
class Scores:
    logit_diff: np.ndarray  # [n_settings, n_orders, n_q]
    answer_mass: np.ndarray  # [n_settings, n_orders, n_q]
    kl: np.ndarray | None  # [n_settings, n_texts] mean per-token KL(unsteered ‖ steered); None without texts
    top1: np.ndarray | None  # [n_settings, n_texts]


def score(model: torch.nn.Module, answers: list[AnswerTokens], n_orders: int,
          texts: list[ScoredText], source_layer: int, thetas: torch.Tensor, pad_id: int,
          batch_size: int, settings_per_pass: int,
          progress: Callable[[int], None] | None = None) -> Scores:
    """``answers`` are order-major (every question as written, then every one mirrored, as
    ``engine.orders.answers_in_order`` lists them); ``progress(n)`` hears of n question×settings
    or text×settings done, θ = 0 rows of the KL included (they cost nothing)."""
    result = evaluate(model, answers, source_layer, thetas, pad_id, batch_size, settings_per_pass,
                      progress=progress)
    shape = (len(thetas), n_orders, -1)
    kl = top1 = None
    if texts:
        cost = side_effects(model, texts, source_layer, thetas, pad_id, batch_size,
                            settings_per_pass, progress=progress)
        kl, top1 = cost.kl.numpy(), cost.top1.numpy()
        if progress:
            progress(len(texts) * int((thetas == 0).all(1).sum()))
    return Scores(result.logit_diff.numpy().reshape(shape), result.answer_mass.numpy().reshape(shape),
                  kl, top1)
