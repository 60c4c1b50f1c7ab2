"""Run under torchrun by tests/test_parallel.py: every method's engine function on this process
group against the same function on one rank (``SINGLE``), in every process, on shares that are
uneven or empty. Rank 0 writes {case: largest absolute difference} as JSON to argv[1].

The tiny model is fp64 (the same seed on every rank); the default model runs in fp32.
"""
from __future__ import annotations

import json
import sys

import torch

from engine.caa import caa_vector
from engine.data import load_items
from engine.generate import generate_ids
from engine.jacobian import jacobian_at, relative_change
from engine.melbo import melbo
from engine.model import DEFAULT_MODEL_DIR, load_model
from engine.orders import answers_in_order
from engine.parallel import start
from engine.power import power_iteration
from engine.prompts import length_batches
from engine.scores import score
from engine.segment import prompt_prefixes
from engine.side_effects import ScoredText
from tests.helpers import tiny_model

DATA = "data/survival-instinct.jsonl"


def largest(a, b) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max()) if a.numel() else 0.0


def methods(lm, ranks, items, prefix: str, heavy: bool) -> dict[str, float]:
    """Largest |ranks − one process| of each method on ``lm``."""
    pad, layer, target = lm.tokenizer.pad_token_id, 1, 3
    out = {}
    for n_items, orders in ((5, "both"), (3, "original"), (1, "original")):  # 5/5, 1/2, 0/1
        answers, _ = answers_in_order(lm.tokenizer, items[:n_items], orders)
        n = 2 if orders == "both" else 1
        one = caa_vector(lm.model, answers, layer, pad, batch_size=3, n_orders=n)
        many = caa_vector(lm.model, answers, layer, pad, batch_size=3, n_orders=n, ranks=ranks)
        out[f"{prefix}caa_{n_items}x{orders}"] = max(
            largest(one.vector, many.vector), largest(one.by_order, many.by_order),
            largest(one.diff_norms, many.diff_norms), abs(one.resid_norm - many.resid_norm))

    answers, _ = answers_in_order(lm.tokenizer, items[:5], "both")
    gen = torch.Generator().manual_seed(3)
    thetas = torch.randn(3, lm.d_model, generator=gen, dtype=torch.float64)
    thetas = 4 * thetas / thetas.norm(dim=1, keepdim=True)
    thetas[0] = 0
    texts = [ScoredText(f"n{i}", tuple(a.prefix_ids[:-3]), len(a.prefix_ids) - 9)
             for i, a in enumerate(answers[:3])]
    for n_q in (5, 1):  # questions 2/3 and 0/1 (and texts 1/2)
        asked = answers[:n_q] + answers[5:5 + n_q]
        one = score(lm.model, asked, 2, texts, layer, thetas, pad, 2, 2)
        many = score(lm.model, asked, 2, texts, layer, thetas, pad, 2, 2, ranks=ranks)
        out[f"{prefix}eval_{n_q}q"] = max(largest(one.logit_diff, many.logit_diff),
                                         largest(one.answer_mass, many.answer_mass),
                                         largest(one.kl, many.kl), largest(one.top1, many.top1))

    prompts = [a.prefix_ids for a in answers[:3]]
    one = generate_ids(lm.model, prompts, layer, thetas[1], 6, pad, batch_size=2)
    many = generate_ids(lm.model, prompts, layer, thetas[1], 6, pad, batch_size=2, ranks=ranks)
    out[f"{prefix}generate_tokens_differ"] = float(one.tokens != many.tokens)
    if not heavy:
        return out

    for n_prompts in (3, 1):  # batches of 2: 1/1 and 0/1
        batches = length_batches([len(p) for p in prompts[:n_prompts]], 2)
        every = prompt_prefixes(lm.model, [[prompts[i] for i in b] for b in batches], pad, layer)
        mine = ranks.part(every)
        theta0 = thetas[1]
        op_one = jacobian_at(lm.model, every, target, theta0=theta0)
        op_many = jacobian_at(lm.model, mine, target, theta0=theta0, ranks=ranks)
        one = power_iteration(op_one, 2, iters=4, oversample=2, tol=1e-12, seed=0)
        many = power_iteration(op_many, 2, iters=4, oversample=2, tol=1e-12, seed=0, ranks=ranks)
        at_zero_one = jacobian_at(lm.model, every, target)
        at_zero_many = jacobian_at(lm.model, mine, target, ranks=ranks)
        moved_one = relative_change(op_one, at_zero_one, one.vectors)
        moved_many = relative_change(op_many, at_zero_many, many.vectors)
        out[f"{prefix}pi_{n_prompts}prompts"] = max(
            largest(one.vectors, many.vectors), largest(one.sigmas, many.sigmas),
            largest(one.trace, many.trace), largest(moved_one, moved_many))

        one = melbo(lm.model, every, target, 2, 4.0, steps=3, lr=0.05, seed=1)
        many = melbo(lm.model, mine, target, 2, 4.0, steps=3, lr=0.05, seed=1, ranks=ranks)
        out[f"{prefix}melbo_{n_prompts}prompts"] = max(
            largest(one.vectors, many.vectors), largest(one.trace, many.trace),
            largest(one.objective, many.objective))
    return out


def main(path: str) -> None:
    torch.set_num_threads(1)
    ranks, _ = start("cpu")
    assert ranks.size == 2, "run under torchrun --nproc-per-node 2"
    default = load_model(str(DEFAULT_MODEL_DIR), "fp32")
    items = load_items(DATA, "train")
    diffs = methods(tiny_model("llama", default.tokenizer), ranks, items, "tiny_", heavy=True)
    diffs |= methods(default, ranks, items, "default_", heavy=False)
    try:  # a replicated tensor that is not: every rank must hear of it
        ranks.check_identical(torch.tensor([float(ranks.rank)]), "each rank's own number")
        diffs["check_identical_missed_a_difference"] = 1.0
    except RuntimeError:
        diffs["check_identical_missed_a_difference"] = 0.0
    if ranks.writer:
        with open(path, "w") as out:
            json.dump(diffs, out, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
