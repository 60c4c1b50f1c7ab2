"""The prompting baseline ("just ask"): the unsteered model with an instruction in its system
turn, scored as eval scores a steering setting, so that it stands as one more row beside the
methods.

Every question is asked plainly (eval's prompts) and under each instruction (a behaviour's
``ask`` and ``ask_opposite``, ``steerlab.questions.behaviors``; where the prompt format has no
system turn, before the question: ``steerlab.questions.prompts.format_prompt``), in both
scores: the letter logit difference in each answer order and the cloze log-probabilities of
both answer texts, from ``steerlab.measure.scores.score`` at θ = 0. Only the questions usable in
every form are kept, each with the same cloze answer tokens in every form, so Δ = prompted −
plain compares the same questions and the same continuations.

What an instruction costs is its KL on neutral text, as a steering setting's is: each neutral
text is a prompt and the unsteered model's greedy continuation of it (``steerlab.measure.neutral``);
the same continuation is read after the same prompt with the instruction as its system turn,
and per text the mean over the continuation's positions of KL(plain ‖ instructed) and the share
of positions whose top-1 tokens agree (``steerlab.measure.side_effects.compare``). Plain values
in and out; the runner (steerlab/cli/prompting.py) reads and writes the store.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from steerlab.base.errors import DataError
from steerlab.lm.generate import prompt_ids
from steerlab.lm.steered import QUESTIONS_PER_PASS, steered_logits
from steerlab.measure.scores import score
from steerlab.measure.side_effects import ScoredText, compare
from steerlab.questions.cloze_form import ClozeItem, cloze_items, cloze_token_counts
from steerlab.questions.data import Item
from steerlab.questions.orders import Orders, answers_in_order, n_orders
from steerlab.questions.prompts import AnswerTokens

# θ is zero everywhere here, so where it would be added changes nothing: after layer 0 leaves the
# most of every forward to the shared openings and stems of the steered forward.
SOURCE_LAYER = 0


@dataclass
class PromptedQuestions:
    """The questions every form can ask (``prompted_questions``), in each form."""
    question_ids: list[str]
    instructions: dict[str, str]  # name: text, in order
    answers: list[list[AnswerTokens]]  # per form (plain, then each instruction): order-major
    cloze: list[list[ClozeItem]]  # per form, one per question
    skipped: list[str]  # one message per item left out

    @property
    def n_questions(self) -> int:
        return len(self.question_ids)


def _usable(tokenizer, items: list[Item], system: str | None
            ) -> tuple[dict[str, AnswerTokens], dict[str, ClozeItem], list[str]]:
    """The items whose letter prompts (both orders) and cloze form exist under ``system``, by id."""
    answers, letter_skipped = answers_in_order(tokenizer, items, "both", system)
    cloze, cloze_skipped = cloze_items(tokenizer, items, system)
    return ({a.item_id: a for a in answers[: len(answers) // 2]}, {c.item_id: c for c in cloze},
            letter_skipped + cloze_skipped)


def prompted_questions(tokenizer, items: list[Item], instructions: dict[str, str], order: Orders = "both"
                       ) -> PromptedQuestions:
    """``items`` asked plainly and under each of ``instructions`` (name: text), in ``order``, both
    scores: the items whose letter prompts (in both orders, as eval asks them) and cloze form
    exist in every form and whose cloze answers are the same tokens in every form, in item order;
    one message per item left out (the plain form's as eval words them, then why an
    instruction left out an item the plain form kept)."""
    plain_answers, plain_cloze, skipped = _usable(tokenizer, items, None)
    kept = [item.id for item in items if item.id in plain_answers and item.id in plain_cloze]
    for name, text in instructions.items():
        answers, cloze, messages = _usable(tokenizer, items, text)
        still = []
        for item_id in kept:
            if item_id in answers and item_id in cloze:
                same = (cloze[item_id].positive_ids, cloze[item_id].negative_ids) == \
                    (plain_cloze[item_id].positive_ids, plain_cloze[item_id].negative_ids)
                if same:
                    still.append(item_id)
                else:
                    skipped.append(f"{item_id}: its cloze answers tokenize otherwise after the {name} "
                                   "instruction; left out of every form")
                continue
            why = "; ".join(m for m in messages if m.startswith(item_id)) or "not usable"
            skipped.append(f"{item_id}: with the {name} instruction: {why}; left out of every form")
        kept = still
    keep = set(kept)
    chosen = [item for item in items if item.id in keep]
    forms_answers, forms_cloze = [], []
    for system in (None, *instructions.values()):
        answers, _ = answers_in_order(tokenizer, chosen, order, system)
        cloze, _ = cloze_items(tokenizer, chosen, system)
        forms_answers.append(answers)
        forms_cloze.append(cloze)
    return PromptedQuestions(kept, dict(instructions), forms_answers, forms_cloze, skipped)


@dataclass
class PromptedScores:
    """Both scores of the plain and the instructed model on the same questions, and each
    instruction's KL on neutral text (``prompting``). Instructions come in ``names`` order."""
    question_ids: list[str]
    names: list[str]
    logit_diff: np.ndarray  # [n_instructions, n_orders, n_q] logit(positive) − logit(negative)
    answer_mass: np.ndarray  # [n_instructions, n_orders, n_q] p(positive) + p(negative)
    cloze_logprob: np.ndarray  # [n_instructions, 2 (positive, negative), n_q] summed log-probs
    baseline_logit_diff: np.ndarray  # [n_orders, n_q] the plain prompts'
    baseline_answer_mass: np.ndarray  # [n_orders, n_q]
    baseline_cloze_logprob: np.ndarray  # [2, n_q]
    cloze_n_tokens: np.ndarray  # [2, n_q] int32, the same in every form
    polarity: np.ndarray  # [n_q] yes, no or other
    neutral_ids: list[str]
    kl: np.ndarray  # [n_instructions, n_texts] mean per-token KL(plain ‖ instructed), nats
    top1: np.ndarray  # [n_instructions, n_texts] share of positions with the same top-1 token
    skipped: list[str]


def question_scores(model: torch.nn.Module, questions: PromptedQuestions, n_orders_: int, *, pad_id: int,
                    batch_size: int = QUESTIONS_PER_PASS, progress: Callable[[int], None] | None = None
                    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per form (plain, then each instruction): the letter logit difference and answer mass
    [n_orders, n_q] and the cloze log-probabilities [2, n_q], each as eval's θ = 0 setting scores
    them (``score``, one setting)."""
    zero = torch.zeros(1, model.get_input_embeddings().embedding_dim)
    out = []
    for answers, cloze in zip(questions.answers, questions.cloze):
        scored = score(model, answers, n_orders_, [], source_layer=SOURCE_LAYER, thetas=zero, pad_id=pad_id,
                       batch_size=batch_size, settings_per_pass=1, progress=progress, cloze=cloze)
        out.append((scored.logit_diff[0], scored.answer_mass[0], scored.cloze[0]))
    return out


def instructed_texts(tokenizer, texts: list[ScoredText], prompts: dict[str, str],
                     system: str) -> list[ScoredText]:
    """Each neutral text's continuation after its prompt (``prompts``: id → text) formatted with
    ``system`` as the system turn. The plain prompt is checked to be the text's own, so the two
    read the same continuation of the same prompt."""
    out = []
    for text, plain, instructed in zip(texts, prompt_ids(tokenizer, [prompts[t.prompt_id] for t in texts]),
                                       prompt_ids(tokenizer, [prompts[t.prompt_id] for t in texts], system)):
        if plain != text.token_ids[: text.prompt_length]:
            raise DataError(f"neutral prompt {text.prompt_id}: its stored tokens are not those of its text "
                            "in the prompt format (another prompt file or template?): rerun with FORCE=1")
        out.append(ScoredText(text.prompt_id, instructed + text.token_ids[text.prompt_length:],
                              len(instructed)))
    return out


def instruction_kl(model: torch.nn.Module, tokenizer, texts: list[ScoredText], prompts: dict[str, str],
                   instructions: list[str], *, pad_id: int, batch_size: int = QUESTIONS_PER_PASS,
                   progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """KL(plain ‖ instructed) and top-1 agreement [n_instructions, n_texts] of each instruction
    on ``texts`` (neutral prompts with the plain model's continuation; ``prompts``: their texts
    by id): per text, the mean over the continuation's positions. One steered-forward request at
    θ = 0 in which a text's forms share a stem, so each pass holds every form of its texts."""
    n, forms = len(texts), [texts] + [instructed_texts(tokenizer, texts, prompts, s) for s in instructions]
    kl = np.zeros((len(instructions), n))
    top1 = np.ones((len(instructions), n))
    if n == 0 or not instructions:
        return kl, top1
    sequences = [t.token_ids for form in forms for t in form]
    reads = [t.read_at for form in forms for t in form]
    zero = torch.zeros(1, model.get_input_embeddings().embedding_dim)
    for done in steered_logits(model, sequences, reads, SOURCE_LAYER, thetas=zero, pad_id=pad_id,
                               stems=[i for _ in forms for i in range(n)], batch_size=batch_size,
                               settings_per_pass=1):
        columns, start = {}, 0
        for index, count in zip(done.sequences, done.counts):
            columns[index] = slice(start, start + count)
            start += count
        for text in sorted({index % n for index in done.sequences}):
            plain = done.logits[0, columns[text]]
            for f in range(len(instructions)):
                per_kl, per_top1 = compare(plain, done.logits[0, columns[(f + 1) * n + text]])
                kl[f, text], top1[f, text] = per_kl.mean().item(), per_top1.mean().item()
        if progress:
            progress(len(done.sequences))
    return kl, top1


def prompting(model: torch.nn.Module, tokenizer, questions: PromptedQuestions, texts: list[ScoredText],
              prompts: dict[str, str], *, order: Orders = "both", pad_id: int,
              batch_size: int = QUESTIONS_PER_PASS, progress: Callable[[int], None] | None = None
              ) -> PromptedScores:
    """Everything the prompting baseline measures: ``questions`` (``prompted_questions``, in
    ``order``) in both scores, plain and under each of its instructions, and each instruction's
    KL on the neutral ``texts`` (their prompts' texts by id in ``prompts``)."""
    forms = question_scores(model, questions, n_orders(order), pad_id=pad_id, batch_size=batch_size,
                            progress=progress)
    kl, top1 = instruction_kl(model, tokenizer, texts, prompts, list(questions.instructions.values()),
                              pad_id=pad_id, batch_size=batch_size, progress=progress)
    (base_diff, base_mass, base_cloze), prompted = forms[0], forms[1:]
    return PromptedScores(
        questions.question_ids, list(questions.instructions),
        np.stack([diff for diff, _, _ in prompted]), np.stack([mass for _, mass, _ in prompted]),
        np.stack([cloze for _, _, cloze in prompted]), base_diff, base_mass, base_cloze,
        cloze_token_counts(questions.cloze[0]), np.array([c.polarity for c in questions.cloze[0]]),
        [t.prompt_id for t in texts], kl, top1, questions.skipped)


def prompting_work(questions: PromptedQuestions, n_orders_: int, n_texts: int) -> int:
    """What ``prompting`` reports to its ``progress``: question×orders and cloze items per form,
    and every form of every neutral text."""
    n_forms = len(questions.answers)
    return n_forms * (questions.n_questions * (n_orders_ + 1) + n_texts)
