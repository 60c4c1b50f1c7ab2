"""The plain paths every fast path is tested against: full HF forwards with θ added by a hook.

Nothing here is cached or stacked; this is what a first script would do. ``letter_plain`` is
eval's twin (all questions in one padded batch, full logits), ``hidden_plain`` reads h_T with θ
hooked in, ``jtj_plain`` is one JᵀJ v per vector by a fresh autograd graph each time, and
``side_effects_plain`` is the KL on neutral text from full logits.
"""
from __future__ import annotations

import torch

from steerlab.lm.jacobian import math_attention
from steerlab.lm.site import Site, add_at, decoder_layers, reading_output
from steerlab.measure.cloze import token_log_probs
from steerlab.measure.letter import LetterScores, answer_scores
from steerlab.measure.side_effects import ScoredText, SideEffects, compare
from steerlab.questions.cloze_form import ClozeItem
from steerlab.questions.prompts import AnswerTokens, pad_right


@torch.no_grad()
def letter_plain(model: torch.nn.Module, answers: list[AnswerTokens], source_layer: int,
                   thetas: torch.Tensor, pad_id: int, site: Site = "mlp",
                   questions_per_forward: int | None = None) -> LetterScores:
    """Eval's numbers the plain way: per setting, full forwards with a hook at ``site``, over the
    questions in file order, ``questions_per_forward`` at a time (None: all in one padded batch)."""
    device = next(model.parameters()).device
    step = questions_per_forward or max(len(answers), 1)
    diffs, masses = [], []
    for theta in thetas:
        diff, mass = [], []
        for first in range(0, len(answers), step):
            chunk = answers[first:first + step]
            ids, mask = pad_right([a.prefix_ids for a in chunk], pad_id)
            ids, mask = ids.to(device), mask.to(device)
            with add_at(model, source_layer, theta, site):
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            rows = torch.arange(len(chunk), device=device)
            scores = answer_scores(logits[rows, mask.sum(1) - 1], chunk)
            diff.append(scores[0])
            mass.append(scores[1])
        diffs.append(torch.cat(diff))
        masses.append(torch.cat(mass))
    return LetterScores(torch.stack(diffs), torch.stack(masses))


def hidden_plain(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, source_layer: int,
                 *, target_layer: int, theta: torch.Tensor, site: Site = "mlp") -> torch.Tensor:
    """h_T at the real positions, [n_real, d], with θ hooked in at ``site`` of layer S:
    a full HF forward, h_T read from ``layers[T]``'s output (not ``hidden_states``, which carry
    the final norm at the last layer). Differentiable in θ."""
    with reading_output(decoder_layers(model)[target_layer]) as seen, \
            add_at(model, source_layer, theta, site), math_attention():
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    return seen[-1][mask.bool()]


def jtj_plain(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, source_layer: int,
              target_layer: int, vectors: torch.Tensor, theta0: torch.Tensor | None = None,
              site: Site = "mlp") -> torch.Tensor:
    """JᵀJ v for each row v of ``vectors`` at θ₀ (default 0), one vector at a time: a full forward
    with θ requiring grad, J v by the double-backward trick, then Jᵀ(J v)."""
    dtype = next(model.parameters()).dtype
    out = []
    for v in vectors:
        theta = (torch.zeros(v.shape[0], dtype=dtype) if theta0 is None
                 else theta0.to(dtype).clone()).requires_grad_(True)
        h = hidden_plain(model, ids, mask, source_layer, target_layer=target_layer, theta=theta, site=site)
        u = torch.zeros_like(h, requires_grad=True)
        (g,) = torch.autograd.grad(h, theta, u, create_graph=True)
        (jv,) = torch.autograd.grad(g, u, v.to(g.dtype))
        (jtjv,) = torch.autograd.grad(h, theta, jv)
        out.append(jtjv)
    return torch.stack(out)


@torch.no_grad()
def side_effects_plain(model: torch.nn.Module, texts: list[ScoredText], source_layer: int,
                       thetas: torch.Tensor, pad_id: int, site: Site = "mlp") -> SideEffects:
    """KL and top-1 agreement the plain way: one padded batch, one full forward unsteered and one
    per setting with a hook at ``site``, full logits everywhere, read at each text's positions."""
    ids, mask = pad_right([t.token_ids for t in texts], pad_id)
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    unsteered = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    kl = torch.empty(thetas.shape[0], len(texts), dtype=torch.float64)
    top1 = torch.empty_like(kl)
    for row, theta in enumerate(thetas):
        with add_at(model, source_layer, theta, site):
            steered = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        for column, text in enumerate(texts):
            at = torch.tensor(text.read_at, device=device)
            per_kl, per_top1 = compare(unsteered[column, at], steered[column, at])
            kl[row, column], top1[row, column] = per_kl.mean(), per_top1.mean()
    return SideEffects(kl, top1)


@torch.no_grad()
def cloze_plain(model: torch.nn.Module, items: list[ClozeItem], source_layer: int,
                thetas: torch.Tensor, pad_id: int, site: Site = "mlp") -> torch.Tensor:
    """Cloze log-probabilities the plain way: per setting, one padded batch of every prompt +
    answer, a full forward with a hook at ``site``, full logits, each answer's tokens read off
    where they are predicted. [n_settings, 2, n_items] fp64, as ``steerlab.measure.cloze.cloze_logprobs``."""
    device = next(model.parameters()).device
    sequences = [item.sequence(w) for w in (0, 1) for item in items]
    ids, mask = pad_right(sequences, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    out = torch.empty(thetas.shape[0], 2, len(items), dtype=torch.float64)
    for row, theta in enumerate(thetas):
        with add_at(model, source_layer, theta, site):
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        for which in (0, 1):
            for column, item in enumerate(items):
                at = torch.tensor(item.read_at(which), device=device)
                targets = torch.tensor(item.answer(which), device=device)
                picked = token_log_probs(logits[which * len(items) + column, at], targets)
                out[row, which, column] = picked.double().sum()
    return out
