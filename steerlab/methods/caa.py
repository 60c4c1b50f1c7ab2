"""Contrastive activation addition: mean over pairs of act(positive) - act(negative).

Read where θ is injected (``capture="mlp"``: the output of ``layers[S].mlp.down_proj``) and at the
answer-letter token (``position="letter"``). ``capture="resid"`` (the block output) and
``position="last"`` (the final token of prompt+answer, e.g. the closing parenthesis) reproduce the
two bugs of the original experiment as an ablation.

``position="answer"`` reads the answers' *texts* instead (``caa_answer_vector``): each answer's
activations averaged over its tokens after the question stem, with no choice block and so no
letter (the cloze form, ``steerlab.measure.cloze``). Its confound is Yes/No polarity, and it cancels the way
the letter cancels over both orders: the vector is the mean over the polarity classes of the
per-class mean differences (``balance``), so a direction that only says "No" drops out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

from steerlab.base.parallel import SINGLE, Ranks
from steerlab.lm.segment import batched_prefixes
from steerlab.lm.site import ResolvedSite
from steerlab.questions.cloze_form import ClozeItem
from steerlab.questions.polarity import class_masks
from steerlab.questions.prompts import AnswerTokens

CAPTURES: tuple[ResolvedSite, ...] = get_args(ResolvedSite)
Position = Literal["letter", "last", "answer"]
POSITIONS: tuple[Position, ...] = get_args(Position)
# answer position: balanced over polarity classes, or the plain mean over pairs (ablation)
Balance = Literal["classes", "none"]
BALANCES: tuple[Balance, ...] = get_args(Balance)


@dataclass
class CAAResult:
    vector: torch.Tensor  # [d] fp32, raw (not normalised): the mean of the order means
    diff_norms: torch.Tensor  # [n_pairs] fp32, ‖act(pos) - act(neg)‖ per pair
    item_ids: list[str]
    by_order: torch.Tensor | None = None  # [n_orders, d] fp32, the mean difference within each order
    by_class: dict[str, torch.Tensor] | None = None  # answer position: polarity class -> mean difference
    class_counts: dict[str, int] | None = None
    pair_cosines: torch.Tensor | None = None  # [n_pairs] fp32, cos(act(pos) - act(neg), vector) per pair

    @property
    def norm(self) -> float:
        return float(self.vector.norm())


def token_positions(answers: list[AnswerTokens], position: Position) -> list[tuple[int, int]]:
    """Index to read in prompt+positive and in prompt+negative, per pair."""
    if position == "letter":
        return [(a.position, a.position) for a in answers]
    if position == "last":
        return [(len(a.positive_ids) - 1, len(a.negative_ids) - 1) for a in answers]
    raise ValueError(f"position must be letter or last here (answer: caa_answer_vector), got {position!r}")


@torch.no_grad()
def activations(model, sequences: list[tuple[int, ...]], read_at: list[int | range], layer: int,
                *, capture: ResolvedSite, pad_id: int, batch_size: int = 16) -> torch.Tensor:
    """[n, d] fp64 activations at ``read_at[i]`` of ``sequences[i]`` (a position, or a range of
    positions whose activations are averaged); one forward per batch that stops after ``layer``.
    No sequences: no rows."""
    if capture not in CAPTURES:
        raise ValueError(f"capture must be one of {CAPTURES}, got {capture!r}")
    out = torch.empty(len(sequences), model.get_input_embeddings().embedding_dim, dtype=torch.float64)
    for batch, prefix in batched_prefixes(model, sequences, layer, pad_id, batch_size,
                                          keep_down_proj=capture == "mlp"):
        acts = prefix.down_proj if capture == "mlp" else prefix.hidden
        for row, i in enumerate(batch):
            at = read_at[i]
            picked = acts[row, at] if isinstance(at, int) else acts[row, at.start:at.stop].mean(0)
            out[i] = picked.double().cpu()
    return out


def caa_vector(model, answers: list[AnswerTokens], layer: int, pad_id: int,
               *, capture: ResolvedSite = "mlp", position: Position = "letter", batch_size: int = 16,
               n_orders: int = 1, ranks: Ranks = SINGLE) -> CAAResult:
    """Mean over pairs of act(positive) - act(negative). With ``n_orders`` = 2, ``answers`` holds
    every question as written and then mirrored (``steerlab.questions.orders.answers_in_order``): each letter
    is then as often on the positive side as on the negative, so its identity cancels in the mean
    and only what the answers' texts share (the behaviour) remains. Under several ``ranks`` each
    reads its contiguous share of the pairs and the per-pair differences are gathered, so every
    rank takes the same means over the same rows in the same order."""
    if not answers:
        raise ValueError("CAA needs at least one pair")
    if len(answers) % n_orders:
        raise ValueError(f"{len(answers)} pairs do not split into {n_orders} orders")
    mine = ranks.part(answers)
    read = token_positions(mine, position)
    # Positive and negative sequences go through the same batches, so their padding matches.
    sequences = [a.positive_ids for a in mine] + [a.negative_ids for a in mine]
    read_at = [p for p, _ in read] + [n for _, n in read]
    acts = activations(model, sequences, read_at, layer, capture=capture, pad_id=pad_id,
                       batch_size=batch_size)
    diffs = ranks.cat_rows(acts[: len(mine)] - acts[len(mine):])
    by_order = diffs.view(n_orders, -1, diffs.shape[-1]).mean(1)
    vector = by_order.mean(0)
    return CAAResult(vector.float(), diffs.norm(dim=1).float(), [a.item_id for a in answers],
                     by_order.float(), pair_cosines=pair_cosines(diffs, vector))


def caa_answer_vector(model, items: list[ClozeItem], layer: int, pad_id: int, *,
                      capture: ResolvedSite = "mlp", balance: bool = True, batch_size: int = 16,
                      ranks: Ranks = SINGLE) -> CAAResult:
    """Mean over items of act(positive answer text) − act(negative answer text), each averaged
    over the answer's tokens after the item's prompt (no choices, no letters). With ``balance``
    the mean over the polarity classes present of the per-class mean differences, so that a
    Yes/No identity cancels; without, the plain mean over items (an ablation that a polarity
    direction dominates when the classes are unequal). Shares and gathers as ``caa_vector``."""
    if not items:
        raise ValueError("CAA needs at least one pair")
    mine = ranks.part(items)
    sequences = [item.sequence(w) for w in (0, 1) for item in mine]
    read_at = [range(len(item.prompt_ids), len(item.sequence(w))) for w in (0, 1) for item in mine]
    acts = activations(model, sequences, read_at, layer, capture=capture, pad_id=pad_id,
                       batch_size=batch_size)
    diffs = ranks.cat_rows(acts[: len(mine)] - acts[len(mine):])
    masks = class_masks([item.polarity for item in items])
    by_class = {name: diffs[torch.from_numpy(mask)].mean(0) for name, mask in masks.items()}
    vector = torch.stack(list(by_class.values())).mean(0) if balance else diffs.mean(0)
    return CAAResult(vector.float(), diffs.norm(dim=1).float(), [item.item_id for item in items],
                     by_class={name: v.float() for name, v in by_class.items()},
                     class_counts={name: int(mask.sum()) for name, mask in masks.items()},
                     pair_cosines=pair_cosines(diffs, vector))


def pair_cosines(diffs: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """[n_pairs] fp32: the cosine between each pair's difference and the CAA vector (their mean
    is a cheap predictor of how steerable the behaviour is: Braun et al. 2025)."""
    norms = diffs.norm(dim=1) * vector.norm()
    return torch.where(norms > 0, diffs @ vector / norms.clamp_min(1e-30), torch.zeros_like(norms)).float()
