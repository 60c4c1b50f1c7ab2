"""The steered forward: next-token logits at chosen positions of token sequences, with θ added
after layer S, for a stack of θ settings (docs/DESIGN.md, "The core idea").

Per batch, layers 0..S run once without θ (``run_prefix``). Above S each setting is its own rows
of one stacked batch, and three kinds of sharing cut what passes through layers S+1.. per setting:

- the **opening** every sequence starts with (the chat template's system turn) runs once per
  setting, its keys and values cached;
- sequences given one **stem** (the four continuations of a question: the letter prompt in both
  orders and the cloze prompt with each answer) run their longest common prefix once per setting,
  and each continuation attends to its stem's cached keys and values;
- the **head** (final norm and unembedding) runs only at the positions read.

Tokens after a sequence's last read position are never run. A stem ends before its sequences'
first read position, so every read falls in a continuation. Models whose masks these shortcuts
cannot rebuild (eager attention, sliding windows: ``opening_shareable``) run every sequence
whole with the model's own masks, with the same numbers.

Its plain twins (a full HF forward with θ hooked in) are in ``steerlab.measure.reference``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from steerlab.lm.segment import (
    KeyValueCache,
    batched_prefixes,
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
from steerlab.questions.prompts import common_opening, length_batches, pad_right

# About 8 sequences per pass is fastest on the 2-core dev CPU (docs/development.md,
# "Performance"); GPUs want far more. A pass holds QUESTIONS_PER_PASS stems (or sequences) of
# SETTINGS_PER_PASS settings.
QUESTIONS_PER_PASS = 4
SETTINGS_PER_PASS = 2


@dataclass
class Pass:
    """Logits of one pass: some sequences under some settings."""
    sequences: list[int]  # indices into the sequences given
    settings: slice  # rows of thetas
    logits: torch.Tensor  # [n_settings_in_pass, n_read, vocab]: per sequence, its read positions in order
    counts: list[int]  # positions read per sequence, in the order of ``sequences``

    def part(self, start: int, stop: int) -> "Pass | None":
        """The pass restricted to sequences ``start..stop-1`` of the request, renumbered from 0
        (one part of a request that asked for several kinds of sequences); None if it has none."""
        offsets = [0]
        for count in self.counts:
            offsets.append(offsets[-1] + count)
        kept = [k for k, i in enumerate(self.sequences) if start <= i < stop]
        if not kept:
            return None
        columns = torch.tensor([c for k in kept for c in range(offsets[k], offsets[k + 1])],
                               device=self.logits.device)
        return Pass([self.sequences[k] - start for k in kept], self.settings, self.logits[:, columns],
                    [self.counts[k] for k in kept])


@dataclass(frozen=True)
class SharedLayout:
    """Where the shared parts of a request end: the opening (all sequences) and each stem."""
    opening: int
    stem: list[int]  # per group: its stem's length (== opening: no stem of its own)
    groups: list[list[int]]  # per group: its sequences' indices
    needed: list[tuple[int, ...]]  # each sequence up to its last read position
    shared: bool  # False: every sequence runs whole


def shared_layout(model: torch.nn.Module, sequences: Sequence[tuple[int, ...]], read_at: Sequence[list[int]],
                  source_layer: int, stems: Sequence[int] | None = None, share: bool = True) -> SharedLayout:
    """How ``steered_logits`` runs a request: the opening every sequence shares, each stem's
    length (its sequences' common prefix, ending before their first read), or every sequence
    whole (``shared`` False) where the model's masks cannot be rebuilt."""
    if len(sequences) != len(read_at):
        raise ValueError(f"{len(sequences)} sequences but {len(read_at)} lists of read positions")
    for seq, at in zip(sequences, read_at):
        if not at or min(at) < 0 or max(at) >= len(seq):
            raise ValueError(f"read positions {at} outside a sequence of {len(seq)} tokens")
    needed = [tuple(seq[: max(at) + 1]) for seq, at in zip(sequences, read_at)]
    members: dict[int, list[int]] = {}
    for index, stem in enumerate(range(len(sequences)) if stems is None else stems):
        members.setdefault(stem, []).append(index)
    groups = list(members.values())
    shared = share and opening_shareable(model, source_layer)
    opening = min(common_opening(needed), min(min(at) for at in read_at)) if shared else 0
    stem = [opening] * len(groups)
    if shared and opening > 0:  # a stem's pad queries attend to the opening, never to nothing
        for g, indices in enumerate(groups):
            if len(indices) > 1:
                first_read = min(min(read_at[i]) for i in indices)
                stem[g] = max(opening, min(common_opening([needed[i] for i in indices]), first_read))
    if shared and opening == 0:
        shared = False  # nothing cached to attend to: whole sequences, the model's own masks
    return SharedLayout(opening, stem, groups, needed, shared)


@torch.no_grad()
def steered_logits(model: torch.nn.Module, sequences: Sequence[tuple[int, ...]], read_at: Sequence[list[int]],
                   source_layer: int, *, thetas: torch.Tensor, pad_id: int,
                   stems: Sequence[int] | None = None, batch_size: int = QUESTIONS_PER_PASS,
                   settings_per_pass: int = SETTINGS_PER_PASS, share: bool = True) -> Iterator[Pass]:
    """Logits at positions ``read_at[i]`` of ``sequences[i]`` under every θ row of ``thetas``
    [m, d] (already scaled; a zero row is the unsteered model), one pass at a time: batches of
    ``batch_size`` stems (sequences with the same ``stems[i]``; None: each sequence its own),
    each under chunks of ``settings_per_pass`` settings in order. ``share`` False runs every
    sequence whole through layers S+1.. (the structure of the plain twin, to test that sharing
    changes nothing)."""
    layout = shared_layout(model, sequences, read_at, source_layer, stems, share)
    device = next(model.parameters()).device
    last_layer = len(decoder_layers(model)) - 1
    thetas = thetas.to(device)
    opening_cache = None
    if layout.shared:
        ids = torch.tensor([layout.needed[0][: layout.opening]], device=device)
        opening_cache = record_opening(model, run_prefix(model, ids, torch.ones_like(ids), source_layer),
                                       thetas, last_layer)
    # stems batched by their length (the stem pass pads to the longest), then by their longest
    # continuation; continuations are bucketed by length inside each batch (tail_buckets)
    sizes = [(layout.stem[g], max(len(layout.needed[i]) - layout.stem[g] for i in indices))
             for g, indices in enumerate(layout.groups)]
    for batch in length_batches(sizes, batch_size):
        rows = [i for g in batch for i in layout.groups[g]]
        ids, mask = pad_right([layout.needed[i] for i in rows], pad_id)
        prefix = run_prefix(model, ids.to(device), mask.to(device), source_layer)
        counts = [len(read_at[i]) for i in rows]
        passes = (_stem_passes(model, prefix, layout, batch, read_at, thetas, opening_cache,
                               settings_per_pass, last_layer)
                  if layout.shared else
                  _whole_passes(model, prefix, [read_at[i] for i in rows], thetas, settings_per_pass,
                                last_layer))
        for settings, logits in passes:
            yield Pass(rows, settings, logits, counts)


def _whole_passes(model, prefix, reads: list[list[int]], thetas: torch.Tensor, settings_per_pass: int,
                  last_layer: int) -> Iterator[tuple[slice, torch.Tensor]]:
    """Every sequence whole through layers S+1.., with the model's own masks."""
    device, n = prefix.hidden.device, prefix.batch_size
    row_of = torch.tensor([r for r, at in enumerate(reads) for _ in at], device=device)
    col_of = torch.tensor([c for at in reads for c in at], device=device)
    for first in range(0, thetas.shape[0], settings_per_pass):
        chunk = thetas[first:first + settings_per_pass]
        m = len(chunk)
        steered = (prefix.hidden.repeat(m, 1, 1)
                   + chunk.repeat_interleave(n, 0)[:, None].to(prefix.hidden.dtype))
        steered = run_layers(model, steered, repeat_rows(prefix.layer_kwargs, n, m), prefix.source_layer + 1,
                             last_layer)
        read_rows = torch.arange(m, device=device)[:, None] * n + row_of[None]
        yield slice(first, first + m), head(model, steered[read_rows, col_of[None].expand_as(read_rows)])


def _stem_passes(model, prefix, layout: SharedLayout, batch: list[int], read_at, thetas: torch.Tensor,
                 opening_cache: KeyValueCache, settings_per_pass: int, last_layer: int
                 ) -> Iterator[tuple[slice, torch.Tensor]]:
    """Per chunk of settings: the batch's stems (after the opening), their keys and values kept,
    then every sequence's continuation attending to its stem."""
    device, hidden = prefix.hidden.device, prefix.hidden
    opening, d = layout.opening, hidden.shape[-1]
    n_g = len(batch)
    row = 0
    first_row, group_of, starts, tails = [], [], [], []  # per group: its first row; per sequence: ...
    for g_index, g in enumerate(batch):
        first_row.append(row)
        for i in layout.groups[g]:
            group_of.append(g_index)
            starts.append(layout.stem[g])
            tails.append(len(layout.needed[i]) - layout.stem[g])
            row += 1
    group_of_t = torch.tensor(group_of, device=device)
    stem_len = [layout.stem[g] for g in batch]
    width_s = max(stem_len)
    has_stems = width_s > opening
    mask_s = torch.zeros(n_g, width_s, dtype=torch.long, device=device)
    for g_index, length in enumerate(stem_len):
        mask_s[g_index, :length] = 1
    if has_stems:
        hidden_s = hidden.new_zeros(n_g, width_s - opening, d)
        for g_index, length in enumerate(stem_len):
            hidden_s[g_index, : length - opening] = hidden[first_row[g_index], opening:length]
        kwargs_s = suffix_layer_kwargs(truncated(prefix.layer_kwargs, width_s), mask_s, opening)
    reads = [at for g in batch for at in (read_at[i] for i in layout.groups[g])]
    offsets = [0]
    for at in reads:
        offsets.append(offsets[-1] + len(at))
    parts = [_tail_part(hidden, prefix.layer_kwargs, rows, tails, starts, reads, offsets, mask_s, group_of_t)
             for rows in tail_buckets(tails)]
    for first in range(0, thetas.shape[0], settings_per_pass):
        chunk = thetas[first:first + settings_per_pass]
        m = len(chunk)
        settings = slice(first, first + m)
        each = torch.arange(m, device=device)
        if has_stems:
            stem_cache = opening_cache.attending(setting_rows(settings, n_g, device), record=True)
            steered = hidden_s.repeat(m, 1, 1) + chunk.repeat_interleave(n_g, 0)[:, None].to(hidden.dtype)
            run_layers(model, steered, with_cache(repeat_rows(kwargs_s, n_g, m), stem_cache),
                       prefix.source_layer + 1, last_layer)
        logits = None
        for part in parts:
            n_b = len(part.hidden)
            cache = (stem_cache.attending((each[:, None] * n_g + part.groups[None]).flatten()) if has_stems
                     else opening_cache.attending(setting_rows(settings, n_b, device)))
            steered = part.hidden.repeat(m, 1, 1) + chunk.repeat_interleave(n_b, 0)[:, None].to(hidden.dtype)
            steered = run_layers(model, steered, with_cache(repeat_rows(part.kwargs, n_b, m), cache),
                                 prefix.source_layer + 1, last_layer)
            read_rows = each[:, None] * n_b + part.read_rows[None]
            found = head(model, steered[read_rows, part.read_cols[None].expand_as(read_rows)])
            if logits is None:
                logits = found.new_empty(m, offsets[-1], found.shape[-1])
            logits[:, part.read_index] = found
        yield settings, logits


@dataclass
class _TailPart:
    """The continuations of a batch run together: rows of similar length, so little is padding."""
    hidden: torch.Tensor  # [n, width, d] their residuals after S
    kwargs: dict[str, dict]  # their decoder-layer arguments (attending to their stems)
    groups: torch.Tensor  # [n] each row's stem, within the batch
    read_rows: torch.Tensor  # per read position of these rows: its row here
    read_cols: torch.Tensor  # ... and its column here
    read_index: torch.Tensor  # ... and its place in the batch's reads (sequence order)


def tail_buckets(lengths: list[int], spread: float = 1.5) -> list[list[int]]:
    """Indices of ``lengths`` grouped so that within a group the longest is at most ``spread``
    times the shortest (ascending): one pass each, so short continuations (a cloze answer) are not
    padded to the length of long ones (a letter prompt's choice block)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    buckets: list[list[int]] = []
    for i in order:
        if buckets and lengths[i] <= spread * max(lengths[buckets[-1][0]], 1):
            buckets[-1].append(i)
        else:
            buckets.append([i])
    return buckets


def _tail_part(hidden: torch.Tensor, layer_kwargs: dict, rows: list[int], tails: list[int], starts: list[int],
               reads: list[list[int]], offsets: list[int], mask_s: torch.Tensor, group_of: torch.Tensor
               ) -> _TailPart:
    device, d = hidden.device, hidden.shape[-1]
    width = max(tails[r] for r in rows)
    part_hidden = hidden.new_zeros(len(rows), width, d)
    mask = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    for j, r in enumerate(rows):
        part_hidden[j, : tails[r]] = hidden[r, starts[r]:starts[r] + tails[r]]
        mask[j, : tails[r]] = 1
    index = torch.tensor(rows, device=device)
    groups = group_of[index]
    part_starts = torch.tensor(starts, device=device)[index]
    kwargs = continuation_layer_kwargs(layer_kwargs, mask_s[groups], part_starts, mask)
    read_rows = torch.tensor([j for j, r in enumerate(rows) for _ in reads[r]], device=device)
    read_cols = torch.tensor([c - starts[r] for r in rows for c in reads[r]], device=device)
    read_index = torch.tensor([offsets[r] + k for r in rows for k in range(len(reads[r]))], device=device)
    return _TailPart(part_hidden, kwargs, groups, read_rows, read_cols, read_index)


# What a gradient request scores: the logits at a batch's read positions [n_read, vocab] (sequence
# after sequence, each its read positions in order), the indices of the batch's sequences and how
# many positions each read; one value per sequence, differentiable.
Objective = Callable[[torch.Tensor, list[int], list[int]], torch.Tensor]


def sequence_gradients(model: torch.nn.Module, sequences: Sequence[tuple[int, ...]],
                       read_at: Sequence[list[int]], source_layer: int, objective: Objective, *, pad_id: int,
                       batch_size: int = QUESTIONS_PER_PASS, theta0: torch.Tensor | None = None,
                       progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """[n_sequences, d] fp64: for each sequence, the gradient with respect to θ (added after
    layer S at every position, so the gradient sums over positions) of ``objective``'s value for
    it, at ``theta0`` (default 0). One backward per batch: each sequence has its own θ row, so the
    gradient of the batch's sum is every sequence's own gradient. Runs whole sequences with the
    model's own masks; the plain twin is a finite difference of the same objective."""
    needed = [tuple(seq[: max(at) + 1]) for seq, at in zip(sequences, read_at)]
    d = model.get_input_embeddings().embedding_dim
    last_layer = len(decoder_layers(model)) - 1
    out = torch.zeros(len(sequences), d, dtype=torch.float64)
    for batch, prefix in batched_prefixes(model, needed, source_layer, pad_id, batch_size):
        device, dtype = prefix.hidden.device, prefix.hidden.dtype
        reads = [read_at[i] for i in batch]
        rows = torch.tensor([r for r, at in enumerate(reads) for _ in at], device=device)
        cols = torch.tensor([c for at in reads for c in at], device=device)
        theta = torch.zeros(len(batch), d, dtype=dtype, device=device, requires_grad=True)
        start = prefix.hidden if theta0 is None else prefix.hidden + theta0.to(device, dtype)
        with torch.enable_grad():
            hidden = run_layers(model, start + theta[:, None, :], prefix.layer_kwargs, source_layer + 1,
                                last_layer)
            values = objective(head(model, hidden[rows, cols]), batch, [len(at) for at in reads])
            (grad,) = torch.autograd.grad(values.sum(), theta)
        out[batch] = grad.double().cpu()
        if progress:
            progress(len(batch))
    return out
