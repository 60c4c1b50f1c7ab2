"""The cloze form of an A/B question: its stem as the prompt and its two answer texts as the
continuations, tokenized, with each answer's polarity class (``steerlab.measure.cloze`` scores them).

An A/B item becomes a cloze item by dropping its choice block: the question stem (the text
before ``Choices:``) goes into the prompt (the chat template, as every prompt here), and each of
the positive and negative answer texts is a continuation. Kept per answer with its token and
character counts, so sum, per-token and per-character normalisations can all be recomputed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from steerlab.questions.data import Item
from steerlab.questions.orders import ChoiceError, parse_choices
from steerlab.questions.polarity import polarity
from steerlab.questions.prompts import format_prompt

ANSWERS = ("positive", "negative")


class ClozeError(ValueError):
    """An item whose cloze form cannot be built with certainty (reported and skipped)."""


@dataclass(frozen=True)
class ClozeItem:
    item_id: str
    prompt_ids: tuple[int, ...]  # the stem in the prompt format: the context both answers follow
    positive_ids: tuple[int, ...]  # the positive answer text's tokens, after the prompt
    negative_ids: tuple[int, ...]
    positive_chars: int  # characters of the answer texts, for per-character normalisation
    negative_chars: int
    polarity: str  # the positive answer's class: yes, no or other

    def answer(self, which: int) -> tuple[int, ...]:
        """Token ids of answer ``which`` (0 positive, 1 negative)."""
        return (self.positive_ids, self.negative_ids)[which]

    def sequence(self, which: int) -> tuple[int, ...]:
        return self.prompt_ids + self.answer(which)

    def read_at(self, which: int) -> list[int]:
        """The positions whose next-token logits predict answer ``which``'s tokens."""
        start = len(self.prompt_ids)
        return list(range(start - 1, start + len(self.answer(which)) - 1))


def stem_and_answers(item: Item) -> tuple[str, str, str]:
    """(the question without its choice block, the positive answer's text, the negative's)."""
    try:
        choices = {choice.letter: choice for choice in parse_choices(item.question)}
    except ChoiceError as err:
        raise ClozeError(f"{item.id}: {err}") from None
    texts = []
    for answer in (item.positive, item.negative):
        choice = choices.get(answer.strip("()"))
        if choice is None:
            raise ClozeError(f"{item.id}: answer {answer} is not among the parsed choices")
        texts.append(item.question[choice.start:choice.end])
    stem = item.question.rpartition("Choices:")[0].strip()
    if not stem:
        raise ClozeError(f"{item.id}: the question has no text before its choices")
    if texts[0] == texts[1]:
        raise ClozeError(f"{item.id}: both answers read {texts[0]!r}")
    return stem, texts[0], texts[1]


def cloze_item(tokenizer, item: Item, system: str | None = None) -> ClozeItem:
    """The tokenized cloze form of ``item``: its stem as the prompt, its answer texts as the two
    continuations (``cloze_pair``)."""
    stem, positive, negative = stem_and_answers(item)
    return cloze_pair(tokenizer, stem, positive, negative, item.id, system)


def cloze_pair(tokenizer, question: str, positive: str, negative: str, item_id: str = "",
               system: str | None = None) -> ClozeItem:
    """``question`` as the user turn of the prompt format and each answer text as the start of
    the reply. A prompt that ends in a space (the plain ``Answer: `` format) hands the space to
    the answers, so that the word after it tokenizes as in running text; answer tokens are what
    tokenizing prompt + answer adds to the prompt's, and a pair where the prompt's tokens are not a
    prefix of that is refused (ClozeError)."""
    prompt = format_prompt(tokenizer, question, system)
    context = prompt.rstrip(" ")
    gap = prompt[len(context):]
    context_ids = tuple(tokenizer(context, add_special_tokens=False).input_ids)
    answers = []
    for text in (positive, negative):
        whole = tuple(tokenizer(context + gap + text, add_special_tokens=False).input_ids)
        if whole[:len(context_ids)] != context_ids or len(whole) == len(context_ids):
            raise ClozeError(f"{item_id}: the prompt's tokens change when {text[:40]!r} follows it")
        answers.append(whole[len(context_ids):])
    if answers[0] == answers[1]:
        raise ClozeError(f"{item_id}: both answers read {positive!r}")
    return ClozeItem(item_id, context_ids, answers[0], answers[1], len(positive), len(negative),
                     polarity(positive))


def cloze_items(tokenizer, items: list[Item], system: str | None = None
                ) -> tuple[list[ClozeItem], list[str]]:
    """The cloze form of every item that has one, and one message per item skipped."""
    found, skipped = [], []
    for item in items:
        try:
            found.append(cloze_item(tokenizer, item, system))
        except ClozeError as err:
            skipped.append(f"{err}; no cloze score")
    return found, skipped


def cloze_token_counts(items: list[ClozeItem]) -> np.ndarray:
    """[2 (positive, negative), n_items] int32: each answer's token count."""
    return np.array([[len(item.positive_ids) for item in items],
                     [len(item.negative_ids) for item in items]], dtype=np.int32)
