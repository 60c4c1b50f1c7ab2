"""Cloze scores: how likely the model finds each answer's *text* after the question, no letters.

An A/B item becomes a cloze item by dropping its choice block: the question stem (the text
before ``Choices:``) goes into the prompt (the chat template, as every prompt here), and each of
the positive and negative answer texts is scored as the continuation, by the sum of its tokens'
log-probabilities. Kept per answer with its token and character counts, so sum, per-token (the
headline) and per-character normalisations can all be recomputed (lm-evaluation-harness'
``acc``/``acc_norm`` idea). There is no letter to prefer here; the confound of cloze scores is
Yes/No polarity (``steerlab.questions.polarity``).

The fast path (``cloze_logprobs``) runs layers 0..S once per batch over prompt + answer, then,
per θ setting, the item's prompt through layers S+1.. once (its keys and values cached, after
the shared opening of every prompt) and both answers against that cache, with the head applied
only where an answer token is predicted. Its plain twin is ``steerlab.measure.reference.cloze_plain``.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from steerlab.lm.segment import (
    KeyValueCache,
    continuation_layer_kwargs,
    opening_shareable,
    record_opening,
    repeat_rows,
    run_layers,
    run_prefix,
    setting_rows,
    suffix_layer_kwargs,
    truncated,
    with_cache,
)
from steerlab.lm.site import decoder_layers, head
from steerlab.measure.evaluate import QUESTIONS_PER_PASS, SETTINGS_PER_PASS, steered_logits
from steerlab.questions.cloze_form import ClozeItem
from steerlab.questions.prompts import common_opening, length_batches, pad_right


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


@torch.no_grad()
def cloze_logprobs(model: torch.nn.Module, items: list[ClozeItem], source_layer: int,
                   thetas: torch.Tensor, *, pad_id: int, batch_size: int = QUESTIONS_PER_PASS,
                   settings_per_pass: int = SETTINGS_PER_PASS, share_prompt: bool = True,
                   progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """[n_settings, 2 (positive, negative), n_items] fp64: the summed log-probability of each
    answer's tokens after its prompt, under every θ row of ``thetas`` [m, d] (already scaled; a
    zero row is the unsteered model). ``progress(n)`` hears of n item×settings done.
    ``share_prompt`` is off only to test that sharing changes nothing; models where the opening
    cannot be shared (eager attention, sliding windows) run every answer with its prompt whole."""
    if share_prompt and opening_shareable(model, source_layer):
        return _shared_prompts(model, items, source_layer, thetas, pad_id=pad_id, batch_size=batch_size,
                               settings_per_pass=settings_per_pass, progress=progress)
    return _whole_sequences(model, items, source_layer, thetas, pad_id=pad_id, batch_size=batch_size,
                            settings_per_pass=settings_per_pass, progress=progress)


def _whole_sequences(model, items, source_layer, thetas, *, pad_id, batch_size, settings_per_pass,
                     progress) -> torch.Tensor:
    """Each answer with its prompt as one sequence, through ``steered_logits``."""
    out = torch.zeros(thetas.shape[0], 2, len(items), dtype=torch.float64)
    sequences = [item.sequence(w) for w in (0, 1) for item in items]
    read_at = [item.read_at(w) for w in (0, 1) for item in items]
    targets = [item.answer(w) for w in (0, 1) for item in items]
    for done in steered_logits(model, sequences, read_at, source_layer, thetas=thetas, pad_id=pad_id,
                               batch_size=2 * batch_size, settings_per_pass=settings_per_pass):
        n_chunk = done.logits.shape[0]
        wanted = torch.tensor([t for i in done.sequences for t in targets[i]], device=done.logits.device)
        per_token = token_log_probs(done.logits.reshape(-1, done.logits.shape[-1]),
                                    wanted.repeat(n_chunk)).view(n_chunk, -1).double().cpu()
        start = 0
        for i, count in zip(done.sequences, done.counts):
            which, item = divmod(i, len(items))
            out[done.settings, which, item] = per_token[:, start:start + count].sum(1)
            start += count
        if progress:
            progress(n_chunk * len(done.sequences) / 2)  # two answers make one item
    return out


def _shared_prompts(model, items, source_layer, thetas, *, pad_id, batch_size, settings_per_pass,
                    progress) -> torch.Tensor:
    """Per batch of items: layers 0..S over prompt + answer (both answers, θ-free, once), then
    per chunk of settings two passes through layers S+1..: the prompts (after the opening every
    prompt shares, from its own cache), whose keys and values are kept, and the answers, each
    attending to its item's prompt."""
    device = next(model.parameters()).device
    last_layer = len(decoder_layers(model)) - 1
    out = torch.zeros(thetas.shape[0], 2, len(items), dtype=torch.float64)
    opening = common_opening([item.prompt_ids for item in items])
    opening_cache = None
    if opening:
        ids = torch.tensor([items[0].prompt_ids[:opening]], device=device)
        opening_cache = record_opening(model, run_prefix(model, ids, torch.ones_like(ids), source_layer),
                                       thetas.to(device), last_layer)
    sizes = [len(item.prompt_ids) + max(len(item.positive_ids), len(item.negative_ids)) for item in items]
    for batch in length_batches(sizes, batch_size):
        chosen = [items[i] for i in batch]
        n = len(chosen)
        ids, mask = pad_right([item.sequence(w) for w in (0, 1) for item in chosen], pad_id)
        prefix = run_prefix(model, ids.to(device), mask.to(device), source_layer)
        prompt_len = torch.tensor([len(item.prompt_ids) for item in chosen], device=device)
        answers = [item.answer(w) for w in (0, 1) for item in chosen]  # answer r: item r % n
        width_p = int(prompt_len.max())
        hidden_p = prefix.hidden.new_zeros(n, width_p, prefix.hidden.shape[-1])
        mask_p = torch.zeros(n, width_p, dtype=torch.long, device=device)
        for i, length in enumerate(prompt_len.tolist()):
            hidden_p[i, :length] = prefix.hidden[i, :length]
            mask_p[i, :length] = 1
        kwargs_p = suffix_layer_kwargs(truncated(prefix.layer_kwargs, width_p), mask_p, opening)
        hidden_p = hidden_p[:, opening:]
        # The last prompt position predicts every answer's first token; answer token t predicts
        # token t + 1, so the answer pass carries each answer but its last token, and only the
        # answers of two or more tokens ("No" and "Yes" are one).
        first_tokens = torch.tensor([a[0] for a in answers], device=device)
        item_of_answer = torch.arange(2 * n, device=device) % n
        longer = [r for r, a in enumerate(answers) if len(a) > 1]
        if longer:
            width_a = max(len(answers[r]) - 1 for r in longer)
            hidden_a = prefix.hidden.new_zeros(len(longer), width_a, prefix.hidden.shape[-1])
            mask_a = torch.zeros(len(longer), width_a, dtype=torch.long, device=device)
            for row, r in enumerate(longer):
                start, length = int(prompt_len[r % n]), len(answers[r]) - 1
                hidden_a[row, :length] = prefix.hidden[r, start:start + length]
                mask_a[row, :length] = 1
            item_of_row = item_of_answer[longer]
            kwargs_a = continuation_layer_kwargs(prefix.layer_kwargs, mask_p[item_of_row],
                                                 prompt_len[item_of_row], mask_a)
            rows = torch.tensor([row for row, r in enumerate(longer) for _ in answers[r][1:]], device=device)
            cols = torch.tensor([t for r in longer for t in range(len(answers[r]) - 1)], device=device)
            answer_of = torch.tensor(longer, device=device)[rows]
            later_tokens = torch.tensor([t for r in longer for t in answers[r][1:]], device=device)
        for first in range(0, thetas.shape[0], settings_per_pass):
            chunk = thetas[first:first + settings_per_pass].to(device)
            m = len(chunk)
            settings = slice(first, first + m)
            each = torch.arange(m, device=device)
            prompt_cache = (opening_cache.attending(setting_rows(settings, n, device), record=True)
                            if opening else KeyValueCache(record=True))
            steered = hidden_p.repeat(m, 1, 1) + chunk.repeat_interleave(n, 0)[:, None].to(hidden_p.dtype)
            steered = run_layers(model, steered, with_cache(repeat_rows(kwargs_p, n, m), prompt_cache),
                                 source_layer + 1, last_layer)
            last = (prompt_len - 1 - opening).repeat(m)
            logits_p = head(model, steered[torch.arange(m * n, device=device), last])  # [m * n, V]
            prompt_rows = (each[:, None] * n + item_of_answer[None]).flatten()  # setting s, answer r
            sums = token_log_probs(logits_p[prompt_rows], first_tokens.repeat(m)).double().view(m, 2 * n)
            if longer:
                # answer row (setting s, row) attends to prompt row s * n + its item
                answer_cache = prompt_cache.attending((each[:, None] * n + item_of_row[None]).flatten())
                steered = (hidden_a.repeat(m, 1, 1)
                           + chunk.repeat_interleave(len(longer), 0)[:, None].to(hidden_a.dtype))
                steered = run_layers(model, steered, with_cache(repeat_rows(kwargs_a, len(longer), m),
                                                                answer_cache), source_layer + 1, last_layer)
                setting_of = each.repeat_interleave(len(rows))
                later = token_log_probs(head(model, steered[setting_of * len(longer) + rows.repeat(m),
                                                            cols.repeat(m)]), later_tokens.repeat(m)).double()
                sums.index_put_((setting_of, answer_of.repeat(m)), later, accumulate=True)
            out[settings, :, torch.tensor(batch)] = sums.view(m, 2, n).cpu()
            if progress:
                progress(m * n)
    return out
