"""What one set of θ settings does and costs: the A/B scores of every setting on every question,
in both answer orders (letter), the log-probability of each answer's text after the stem
(cloze), and its KL on neutral text. Eval and the cross-behaviour matrix both score their
settings here, so the two cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, get_args

import numpy as np
import torch

from steerlab.base.parallel import SINGLE, Ranks
from steerlab.lm.steered import steered_logits
from steerlab.measure.cloze import ClozeSums, cloze_reads
from steerlab.measure.letter import LetterScores, letter_reads
from steerlab.measure.side_effects import ScoredText, side_effects
from steerlab.questions.cloze_form import ClozeItem, cloze_items
from steerlab.questions.data import Item
from steerlab.questions.orders import MIRROR_SUFFIX, answers_in_order
from steerlab.questions.prompts import AnswerTokens

# What eval scores: the A/B letter logit difference, the cloze log-probabilities, or both.
ScoreSet = Literal["both", "letter", "cloze"]
SCORE_SETS: tuple[ScoreSet, ...] = get_args(ScoreSet)
SCORES_IN = {"both": ("letter", "cloze"), "letter": ("letter",), "cloze": ("cloze",)}
# What a choice on val can maximise (steerlab.measure.analysis.select_by).
Score = Literal["cloze", "letter"]  # one score: what the val choice maximises, what a table shows
SCORE_NAMES: tuple[Score, ...] = get_args(Score)


@dataclass
class SettingScores:
    """Every score of a stack of θ settings (``score``)."""
    logit_diff: np.ndarray | None  # [n_settings, n_orders, n_q]; None without letter answers
    answer_mass: np.ndarray | None  # [n_settings, n_orders, n_q]
    kl: np.ndarray | None  # [n_settings, n_texts] mean per-token KL(unsteered ‖ steered); None without texts
    top1: np.ndarray | None  # [n_settings, n_texts]
    cloze: np.ndarray | None = None  # [n_settings, 2 (positive, negative), n_q] summed log-probs


def usable_questions(tokenizer, items: list[Item], order: str, scores: ScoreSet
                     ) -> tuple[list[AnswerTokens], list[ClozeItem] | None, list[str]]:
    """The items' letter answers in ``order`` (``answers_in_order``; empty without the letter
    score) and cloze forms (None without the cloze score) for ``scores`` (one of SCORE_SETS),
    restricted to the questions every score asked for can ask, in item order; and one message
    per item left out."""
    skipped: list[str] = []
    cloze = None
    if "cloze" in SCORES_IN[scores]:
        cloze, skipped = cloze_items(tokenizer, items)
        kept = {c.item_id for c in cloze}
        items = [item for item in items if item.id in kept]
    answers: list[AnswerTokens] = []
    if "letter" in SCORES_IN[scores]:
        answers, letter_skipped = answers_in_order(tokenizer, items, order)
        skipped += letter_skipped
        if cloze is not None:  # a mirrored answer's id carries the mirror's suffix; its question's does not
            kept = {a.item_id.removesuffix(MIRROR_SUFFIX) for a in answers}
            cloze = [c for c in cloze if c.item_id in kept]
    return answers, cloze, skipped


def question_ids(answers: list[AnswerTokens], cloze: list[ClozeItem] | None, n_orders: int) -> list[str]:
    """The ids of the questions ``usable_questions`` kept, in order: from the letter answers
    (order-major, ``n_orders`` of them) or, without the letter score, the cloze items."""
    if answers:
        return [a.item_id for a in answers[: len(answers) // n_orders]]
    return [c.item_id for c in cloze or []]


def rank_share(answers: list[AnswerTokens], n_orders: int, ranks: Ranks) -> list[AnswerTokens]:
    """This rank's share of the questions, in every order, order-major like ``answers``."""
    n_q = len(answers) // n_orders
    return [answers[order * n_q + i] for order in range(n_orders) for i in ranks.span(n_q)]


def rank_work(n_settings: int, answers: list[AnswerTokens], n_orders: int, n_texts: int,
              ranks: Ranks = SINGLE, n_cloze: int = 0) -> int:
    """How many question×settings, cloze item×settings and text×settings ``score`` does on this
    rank: the total of its progress reports."""
    return n_settings * (len(rank_share(answers, n_orders, ranks)) + len(ranks.span(n_cloze))
                         + len(ranks.span(n_texts)))


def score(model: torch.nn.Module, answers: list[AnswerTokens], n_orders: int,
          texts: list[ScoredText], *, source_layer: int, thetas: torch.Tensor, pad_id: int,
          batch_size: int, settings_per_pass: int,
          progress: Callable[[int], None] | None = None, ranks: Ranks = SINGLE,
          cloze: list[ClozeItem] | None = None, share: bool = True) -> SettingScores:
    """``answers`` are order-major (every question as written, then every one mirrored, as
    ``steerlab.questions.orders.answers_in_order`` lists them; empty: no letter score), ``cloze`` the same
    questions' cloze forms (None: no cloze score); ``progress(n)`` hears of n question×settings,
    item×settings or text×settings done, θ = 0 rows of the KL included (they cost nothing).
    Both scores of a question are one request to the steered forward with the question as their
    stem: its letter prompts (each order) and its cloze prompt with each answer share their
    longest common prefix, run once per setting. Under several ``ranks`` each scores its share
    of the questions and texts, and the scores are gathered: every rank returns them all, in the
    order given. ``share`` is off only to test that sharing changes nothing."""
    m = len(thetas)
    mine = rank_share(answers, n_orders, ranks) if answers else []
    my_items = ranks.part(cloze) if cloze is not None else []
    letter = LetterScores.empty(m, len(mine))
    sums = ClozeSums(m, my_items)
    if mine or my_items:
        n_q = len(mine) // n_orders if mine else len(my_items)
        sequences, reads = letter_reads(mine)
        stems = [i for _ in range(n_orders if mine else 0) for i in range(n_q)]
        cloze_sequences, cloze_at, cloze_stems = cloze_reads(my_items)
        n_letter = len(sequences)
        for done in steered_logits(model, sequences + cloze_sequences, reads + cloze_at, source_layer,
                                   thetas=thetas, pad_id=pad_id, stems=stems + cloze_stems,
                                   batch_size=batch_size, settings_per_pass=settings_per_pass, share=share):
            held = 0.0
            if (part := done.part(0, n_letter)) is not None:
                held += letter.take(part, mine)
            if (part := done.part(n_letter, n_letter + len(cloze_sequences))) is not None:
                held += sums.take(part)
            if progress:
                progress(held)
    logit_diff = answer_mass = None
    if answers:
        shape = (m, n_orders, len(mine) // n_orders)
        logit_diff = ranks.cat(letter.logit_diff.numpy().reshape(shape), 2)
        answer_mass = ranks.cat(letter.answer_mass.numpy().reshape(shape), 2)
    cloze_scores = None if cloze is None else ranks.cat(sums.values.numpy(), 2)
    kl = top1 = None
    if texts:
        my_texts = ranks.part(texts)
        kl = top1 = np.zeros((m, 0))
        if my_texts:
            cost = side_effects(model, my_texts, source_layer, thetas, pad_id=pad_id, batch_size=batch_size,
                                settings_per_pass=settings_per_pass, share=share, progress=progress)
            kl, top1 = cost.kl.numpy(), cost.top1.numpy()
            if progress:
                progress(len(my_texts) * int((thetas == 0).all(1).sum()))
        kl, top1 = ranks.cat(kl, 1), ranks.cat(top1, 1)
    return SettingScores(logit_diff, answer_mass, kl, top1, cloze_scores)
