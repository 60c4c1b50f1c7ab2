"""Prompt building, answer-token detection, and padded batches.

The answer position is never hard-coded: prompt+positive answer and prompt+negative answer are
tokenized as whole strings and the first position where they differ is the answer position; the
two tokens there are the positive and negative answer tokens. SmolLM2 splits ``(A)`` into
``(``, ``A``, ``)``; Qwen3 merges ``(A`` into one token; both come out right.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from steerlab.questions.data import Item

PLAIN_FORMAT = "Question: {question}\nAnswer: "
# Where an instruction goes that the prompt format has no system turn for: before the question.
SYSTEM_BEFORE = "{system}\n\n{text}"


def format_prompt(tokenizer, question: str, system: str | None = None) -> str:
    """The chat template with the question as the user turn and the generation prompt added;
    ``system`` (an instruction) as its system turn, in place of any default one the template
    inserts. A template without a system turn (it refuses a system message, or drops it) gets
    the instruction at the start of the user turn, and the plain format of a model without a
    template before its question (``SYSTEM_BEFORE``)."""
    if not getattr(tokenizer, "chat_template", None):
        plain = PLAIN_FORMAT.format(question=question)
        return SYSTEM_BEFORE.format(system=system, text=plain) if system else plain
    user = {"role": "user", "content": question}
    if system:
        from jinja2 import TemplateError  # what a template's raise_exception raises

        try:
            prompt = _chat(tokenizer, [{"role": "system", "content": system}, user])
        except TemplateError:
            prompt = ""
        if system in prompt:
            return prompt
        user = {"role": "user", "content": SYSTEM_BEFORE.format(system=system, text=question)}
    return _chat(tokenizer, [user])


def _chat(tokenizer, messages: list[dict]) -> str:
    # enable_thinking=False is read by templates that know it (Qwen3) and ignored by the rest.
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         enable_thinking=False)


@dataclass(frozen=True)
class AnswerTokens:
    """Token ids of prompt+answer up to the answer position, and the two answer tokens there."""

    item_id: str
    prefix_ids: tuple[int, ...]  # everything before the answer position (what eval feeds)
    positive_id: int
    negative_id: int
    positive_ids: tuple[int, ...]  # the whole prompt+positive answer (what CAA reads)
    negative_ids: tuple[int, ...]

    @property
    def position(self) -> int:
        """Index of the answer (letter) token in prompt+answer."""
        return len(self.prefix_ids)


class AnswerTokenError(ValueError):
    pass


def answer_tokens(tokenizer, item: Item, system: str | None = None) -> AnswerTokens:
    prompt = format_prompt(tokenizer, item.question, system)
    pos = tokenizer(prompt + item.positive, add_special_tokens=False).input_ids
    neg = tokenizer(prompt + item.negative, add_special_tokens=False).input_ids
    first_diff = next((i for i, (a, b) in enumerate(zip(pos, neg)) if a != b), None)
    if first_diff is None:
        raise AnswerTokenError(
            f"{item.id}: prompt+{item.positive} and prompt+{item.negative} tokenize to a common prefix"
        )
    if first_diff == 0:
        raise AnswerTokenError(f"{item.id}: the two answers differ at the first token")
    return AnswerTokens(item.id, tuple(pos[:first_diff]), pos[first_diff], neg[first_diff],
                        tuple(pos), tuple(neg))


def answer_tokens_for(tokenizer, items: list[Item], system: str | None = None
                      ) -> tuple[list[AnswerTokens], list[str]]:
    """Answer tokens of every item where they can be found, and one message per item skipped."""
    found, skipped = [], []
    for item in items:
        try:
            found.append(answer_tokens(tokenizer, item, system))
        except AnswerTokenError as err:
            skipped.append(str(err))
    return found, skipped


def padded(sequences: list[tuple[int, ...]], pad_id: int, side: str = "right"
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and attention mask of ``sequences`` padded to the longest. Right padding (every
    fast path and its twin) keeps every real token's position and what it attends to unchanged,
    so batched runs equal one-by-one runs; left padding (generation) ends every row at the last
    column, where generation continues."""
    if side not in ("right", "left"):
        raise ValueError(f"side must be right or left, got {side!r}")
    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        at = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        ids[row, at] = torch.tensor(seq, dtype=torch.long)
        mask[row, at] = 1
    return ids, mask


def pad_right(sequences: list[tuple[int, ...]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    return padded(sequences, pad_id, "right")


def pad_left(sequences: list[tuple[int, ...]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    return padded(sequences, pad_id, "left")


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, so batches carry little padding."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def common_opening(sequences: list[tuple[int, ...]]) -> int:
    """Length of the token prefix every sequence starts with (the chat template's system turn, say),
    capped one short of the shortest sequence so that every sequence keeps a token of its own."""
    shortest = min(len(seq) for seq in sequences)
    first = sequences[0]
    for length in range(shortest - 1):
        if any(seq[length] != first[length] for seq in sequences):
            return length
    return max(shortest - 1, 0)
