"""Counterbalanced answer orders: every A/B item is also asked mirrored.

On small models the A/B logit difference is mostly a preference for one letter. In the mirror
the positive and the negative answer exchange their texts, and so their letters, while every
other choice stays where it is; averaging over both orders cancels the letter, and half their
difference measures it (docs/DESIGN.md, "Orders"). Mirrors are derived here when items are
loaded, never stored, so the data file stays the one source of truth.

An item whose choice block cannot be read with certainty is reported and left out of both
orders: kept in one order only, it would bring its letter preference back in.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal, get_args

from steerlab.base.errors import DataError, UserError
from steerlab.questions.data import ANSWER, CHOICE_LINE, Item
from steerlab.questions.prompts import AnswerTokens, answer_tokens_for

Orders = Literal["both", "original", "mirrored"]
ORDER_NAMES = ("original", "mirrored")
# What a run may ask for: both orders (the default everywhere) or one of them as an ablation.
ORDERS: tuple[Orders, ...] = get_args(Orders)
# Mirrors get a derived id so per-question results of the two orders can be told apart and joined.
MIRROR_SUFFIX = "~m"
MIRROR_NOTE = " (mirrored)"

# A blank line ends a choice's text; whatever follows the last choice after one (e.g. "Answer:")
# belongs to the prompt, not to that choice, and must not move with it.
_BLANK_LINE = re.compile(r"\n[ \t]*\n")


class ChoiceError(DataError):
    """The choice block of an item cannot be parsed with certainty, so it cannot be mirrored."""


@dataclass(frozen=True)
class Choice:
    """One choice of a question: its letter and where its text lies in the question.

    The span excludes the whitespace around the text, so swapping two spans keeps each line's
    own formatting (indent, the space after the letter, the line breaks) in place.
    """
    letter: str
    start: int
    end: int


def parse_choices(question: str) -> list[Choice]:
    """The choices of the block after the question's last ``Choices:``, in order.

    A choice starts at a line beginning with ``(X)`` and its text runs to the next such line, a
    blank line, or the end of the question; it may span several lines. Anything that would make
    the text of a choice a guess is refused with ChoiceError.
    """
    head, marker, _ = question.rpartition("Choices:")
    if not marker:
        raise ChoiceError("no 'Choices:' block")
    starts = list(CHOICE_LINE.finditer(question, len(head) + len(marker)))
    if not starts:
        raise ChoiceError("no '(X)' choice lines after 'Choices:'")
    choices, seen = [], set()
    for index, match in enumerate(starts):
        letter = match.group(1)
        if letter in seen:
            raise ChoiceError(f"choice ({letter}) appears twice")
        seen.add(letter)
        region_end = starts[index + 1].start() if index + 1 < len(starts) else len(question)
        region = question[match.end():region_end]
        blank = _BLANK_LINE.search(region)
        text = region[:blank.start()] if blank else region
        is_last = index + 1 == len(starts)
        if blank and not is_last and region[blank.start():].strip():
            raise ChoiceError(f"text after a blank line inside choice ({letter}) belongs to no clear choice")
        stripped = text.strip()
        if not stripped:
            raise ChoiceError(f"choice ({letter}) has no text")
        start = match.end() + text.index(stripped)
        choices.append(Choice(letter, start, start + len(stripped)))
    return choices


def mirror(item: Item) -> Item:
    """The item with its positive and negative answer texts exchanged, and so their letters.

    Only the two texts move; the stem, the other choices and all whitespace stay, so the two
    orders differ in nothing but which letter carries which answer. Mirroring is its own inverse:
    the mirror of a mirror is the original item, id and source included.
    """
    by_letter = {choice.letter: choice for choice in parse_choices(item.question)}
    spans = []
    for role, answer in (("positive", item.positive), ("negative", item.negative)):
        match = ANSWER.match(answer)
        letter = match.group(1) if match else None
        if letter not in by_letter:
            raise ChoiceError(f"{role} answer {answer!r} is not among the parsed choices "
                              f"({', '.join(sorted(by_letter))})")
        spans.append(by_letter[letter])
    first, second = sorted(spans, key=lambda choice: choice.start)
    if first is second:
        raise ChoiceError(f"positive and negative answers are both ({first.letter})")
    q = item.question
    question = (q[:first.start] + q[second.start:second.end] + q[first.end:second.start]
                + q[first.start:first.end] + q[second.end:])
    return replace(item, id=_toggle(item.id, MIRROR_SUFFIX), question=question,
                   positive=item.negative, negative=item.positive,
                   source=_toggle(item.source, MIRROR_NOTE))


def counterbalance(items: list[Item]) -> tuple[list[Item], list[Item], list[str]]:
    """The items that mirror, their mirrors in the same order, and one message per item left out.

    An item that cannot be mirrored is dropped from both lists, so the two orders always hold
    the same questions and a per-question comparison across orders is always possible.
    """
    originals, mirrors, dropped = [], [], []
    for item in items:
        try:
            mirrored = mirror(item)
        except ChoiceError as err:
            where = f" ({item.source})" if item.source else ""
            dropped.append(f"{item.id}{where}: {err}; left out of both orders")
            continue
        originals.append(item)
        mirrors.append(mirrored)
    return originals, mirrors, dropped


def in_order(items: list[Item], order: str) -> tuple[list[Item], list[str]]:
    """The items a run with ``order`` uses, and the messages for items left out.

    ``both`` lists the originals then their mirrors. A single order still drops the items that
    do not mirror, so an ablation asks exactly the questions the counterbalanced run asks.
    """
    if order not in ORDERS:
        raise UserError(f"unknown order {order!r}: expected one of {', '.join(ORDERS)}")
    originals, mirrors, dropped = counterbalance(items)
    chosen = {"both": originals + mirrors, "original": originals, "mirrored": mirrors}[order]
    return chosen, dropped


def _toggle(text: str, suffix: str) -> str:
    # Adding or removing the mark keeps mirror() its own inverse on every field.
    return text[:-len(suffix)] if text.endswith(suffix) else text + suffix


def n_orders(order: str) -> int:
    return 2 if order == "both" else 1


def answers_in_order(tokenizer, items: list[Item], order: str, system: str | None = None
                     ) -> tuple[list[AnswerTokens], list[str]]:
    """Answer tokens of ``items`` asked in ``order``, order-major: for ``both``, every original
    and then every mirror, in the same item order, so row i and row i + n are one question
    (``system``: an instruction for the prompt's system turn, ``steerlab.questions.prompts.format_prompt``).

    An item is kept only if it mirrors and its answer tokens are found in both orders (also for
    a single-order ablation, which therefore asks exactly the counterbalanced run's questions);
    one message per item left out.
    """
    chosen, dropped = in_order(items, "both")
    half = len(chosen) // 2
    found, skipped = answer_tokens_for(tokenizer, chosen, system)
    by_id = {answer.item_id: answer for answer in found}
    pairs = [(by_id.get(o.id), by_id.get(m.id)) for o, m in zip(chosen[:half], chosen[half:])]
    kept = [(o, m) for o, m in pairs if o is not None and m is not None]
    dropped += skipped
    dropped += [f"{(o or m).item_id}: answer tokens found in one order only; left out of both"
                for o, m in pairs if (o is None) != (m is None)]
    columns = {"both": (0, 1), "original": (0,), "mirrored": (1,)}[order]
    return [pair[column] for column in columns for pair in kept], dropped
