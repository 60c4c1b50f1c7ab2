"""The lab from Python: CAA from string pairs, both scores of a steering vector on A/B items,
and a vector into and out of the store.

``steerlab.lm.vector.SteeringVector`` carries θ's direction with the layer it belongs to and where it
goes, so that neither travels separately through a notebook. The functions here are thin: they
call the engine the make targets call, with plain values (``steerlab/__init__.py`` lists what a
user imports).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from steerlab.lm.model import as_loaded
from steerlab.lm.steered import QUESTIONS_PER_PASS, SETTINGS_PER_PASS
from steerlab.lm.vector import SteeringVector
from steerlab.measure.cloze import cloze_preference
from steerlab.measure.scores import ScoreSet, question_ids, score, usable_questions
from steerlab.measure.statistics import balanced_stat, polarity_shift_stat, stat
from steerlab.methods.caa import caa_answer_vector
from steerlab.questions.cloze_form import ClozeItem, cloze_pair, cloze_token_counts
from steerlab.questions.data import Item
from steerlab.store import VectorGroup, read_vector_group, write_vector_group, writing


def save_vector(vector: SteeringVector, store: str | Path, model, behavior: str, method: str,
                run: str, settings: dict | None = None, tokenizer=None) -> None:
    """Write ``vector`` into the store as ``/<model>/<behavior>/vectors/<method>/<run>``
    (all-or-nothing), where every make target finds it. ``model`` as for ``caa_from_pairs``."""
    lm = as_loaded(model, tokenizer)
    group = VectorGroup(method, run, vector.direction.float().numpy()[None], vector.layer,
                        sign_free=False, settings=settings or {}, attrs={"site": vector.site})
    with writing(store) as h5:
        write_vector_group(h5, lm, behavior, group)


def load_vector(store: str | Path, model_key: str, behavior: str, method: str, run: str,
                index: int = 0) -> SteeringVector:
    """Vector ``index`` of a stored group (``make caa`` writes ``caa/L20``, ``caa/L20-answer``)."""
    group = read_vector_group(store, model_key, behavior, method, run)
    return SteeringVector(torch.from_numpy(group.vectors[index].copy()), group.source_layer,
                          str(group.attrs.get("site", "auto")), f"{group.label} #{index}")


def caa_from_pairs(model, pairs: Sequence[tuple[str, str, str]], layer: int, tokenizer=None,
                   balance: bool = True, batch_size: int = 16) -> SteeringVector:
    """CAA from ``(prompt, positive reply, negative reply)`` strings: each prompt is the user turn
    of the model's chat template and each reply the start of its answer; the vector is the mean
    over pairs of the residual stream after ``layer`` averaged over the positive reply's tokens
    minus the same over the negative's, balanced over the Yes/No polarity classes of the positive
    replies (``balance``; steerlab/methods/caa.py). ``model``: a ``LoadedModel``, or a causal LM as loaded
    elsewhere with its ``tokenizer`` (``as_loaded``)."""
    lm = as_loaded(model, tokenizer)
    items = [cloze_pair(lm.tokenizer, prompt, positive, negative, f"pair-{n}")
             for n, (prompt, positive, negative) in enumerate(pairs)]
    result = caa_answer_vector(lm.model, items, layer, lm.tokenizer.pad_token_id, capture="resid",
                               balance=balance, batch_size=batch_size)
    return SteeringVector(result.vector, layer, "auto", f"CAA over {len(items)} pairs at L{layer}")


@dataclass
class ItemScores:
    """Both scores of one vector at several scales on some A/B items. Per question: the letter
    logit difference in both answer orders and the cloze preference (nats per token), each
    question's polarity class; row 0 is the unsteered model."""
    scales: list[float]  # 0 first: the unsteered model
    question_ids: list[str]
    letter: np.ndarray | None  # [n_scales, 2 orders, n_q]
    cloze: np.ndarray | None  # [n_scales, n_q]
    polarity: np.ndarray | None  # [n_q]
    items: list[ClozeItem] = field(default_factory=list)

    def letter_delta(self, s: int):
        """Δ of the order-mean logit difference at scale index ``s`` (Stat, 95% interval)."""
        mean = self.letter.mean(1)
        return stat(mean[s] - mean[0])

    def cloze_delta(self, s: int):
        """The polarity-paired Δ of the cloze preference at scale index ``s``, and its polarity
        shift (None without both yes and no questions)."""
        delta = self.cloze[s] - self.cloze[0]
        return balanced_stat(delta, self.polarity), polarity_shift_stat(delta, self.polarity)


def score_items(model, items: list[Item], vector: SteeringVector | None,
                scales: Sequence[float] = (), scores: ScoreSet = "both", tokenizer=None) -> ItemScores:
    """``items`` asked unsteered and with ``vector`` at each of ``scales`` (L2 norms of θ), in
    both answer orders (letter) and as cloze (``scores``: both, letter or cloze): what eval
    computes, on the same fast path. ``model`` as for ``caa_from_pairs``."""
    lm = as_loaded(model, tokenizer)
    answers, cloze, _ = usable_questions(lm.tokenizer, items, "both", scores)
    if vector is None and scales:
        raise ValueError("scales need a vector")
    if vector is not None:
        vector.check_width(lm.model)
    if vector is None:  # the unsteered model alone; the fast path adds θ to h_S at any layer
        vector = SteeringVector(torch.zeros(lm.d_model, dtype=torch.float64), 0)
    thetas = vector.stack([0.0, *scales])
    out = score(lm.model, answers, 2, [], source_layer=vector.layer, thetas=thetas,
                pad_id=lm.tokenizer.pad_token_id, batch_size=QUESTIONS_PER_PASS,
                settings_per_pass=SETTINGS_PER_PASS, cloze=cloze)
    ids = question_ids(answers, cloze, 2)
    preference = None if out.cloze is None else cloze_preference(out.cloze, cloze_token_counts(cloze))
    return ItemScores([0.0, *scales], ids, out.logit_diff, preference,
                      None if cloze is None else np.array([c.polarity for c in cloze]), cloze or [])
