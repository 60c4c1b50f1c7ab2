"""Run under torchrun by tests/test_parallel.py, once for both of its kinds of check:

1. every method's engine function on this process group against the same function on one rank
   (``SINGLE``), on shares that are uneven or empty; rank 0 writes {case: largest absolute
   difference} as JSON to argv[1]. The tiny model is fp64 (the same seed on every rank); the
   default model runs in fp32. The ranks take turns at the one-rank references (``differences``),
   so each computes half of them.
2. the runners' plumbing (shares, gathers, rank 0's store decisions and writes): each runner
   command in the JSON list argv[2] (``[module, arg, ...]``, what `make -n ... NPROC=2` runs),
   one after another under ``main_guard`` as `torchrun -m <module>` would run it. A runner that
   fails stops the script with its exit status.

One launch does both: two processes that import torch and load the default model are the slow
part of either.
"""
from __future__ import annotations

import importlib
import json
import sys
from typing import Any, Callable
from unittest import mock

import torch

from steerlab.base.parallel import SINGLE, Ranks, start
from steerlab.cli.options import main_guard
from steerlab.lm.generate import generate_ids
from steerlab.lm.jacobian import jacobian_at, relative_change
from steerlab.lm.model import DEFAULT_MODEL_DIR, load_model
from steerlab.lm.segment import prompt_prefixes
from steerlab.lm.vector import SteeringVector
from steerlab.measure.scores import score
from steerlab.measure.side_effects import ScoredText
from steerlab.methods.caa import caa_vector
from steerlab.methods.melbo import melbo
from steerlab.methods.power import power_iteration
from steerlab.questions.data import load_items
from steerlab.questions.orders import answers_in_order
from steerlab.questions.prompts import length_batches
from tests.helpers import tiny_model

DATA = "data/survival-instinct.jsonl"


def largest(a, b) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max()) if a.numel() else 0.0


Case = tuple[str, Callable[[Ranks], Any], Callable[[Any, Any], float]]


def cases(lm, items, prefix: str, heavy: bool) -> list[Case]:
    """Each method on ``lm`` as (name, compute on some ranks, largest |ranks − one process|)."""
    pad, layer, target = lm.tokenizer.pad_token_id, 1, 3
    out: list[Case] = []
    for n_items, orders in ((5, "both"), (3, "original"), (1, "original")):  # 5/5, 1/2, 0/1
        answers, _ = answers_in_order(lm.tokenizer, items[:n_items], orders)
        n = 2 if orders == "both" else 1
        out.append((f"{prefix}caa_{n_items}x{orders}",
                    lambda ranks, answers=answers, n=n: caa_vector(lm.model, answers, layer, pad,
                                                                   batch_size=3, n_orders=n, ranks=ranks),
                    lambda one, many: max(
                        largest(one.vector, many.vector), largest(one.by_order, many.by_order),
                        largest(one.diff_norms, many.diff_norms))))

    answers, _ = answers_in_order(lm.tokenizer, items[:5], "both")
    gen = torch.Generator().manual_seed(3)
    thetas = torch.randn(3, lm.d_model, generator=gen, dtype=torch.float64)
    thetas = 4 * thetas / thetas.norm(dim=1, keepdim=True)
    thetas[0] = 0
    texts = [ScoredText(f"n{i}", tuple(a.prefix_ids[:-3]), len(a.prefix_ids) - 9)
             for i, a in enumerate(answers[:3])]
    for n_q in (5, 1):  # questions 2/3 and 0/1 (and texts 1/2)
        asked = answers[:n_q] + answers[5:5 + n_q]
        out.append((f"{prefix}eval_{n_q}q",
                    lambda ranks, asked=asked: score(lm.model, asked, 2, texts, source_layer=layer,
                                                     thetas=thetas, pad_id=pad, batch_size=2,
                                                     settings_per_pass=2, ranks=ranks),
                    lambda one, many: max(largest(one.logit_diff, many.logit_diff),
                                          largest(one.answer_mass, many.answer_mass),
                                          largest(one.kl, many.kl), largest(one.top1, many.top1))))

    prompts = [a.prefix_ids for a in answers[:3]]
    out.append((f"{prefix}generate_tokens_differ",
                lambda ranks: generate_ids(lm.model, prompts, SteeringVector(thetas[1], layer, "mlp"), 6,
                                           pad_id=pad, batch_size=2, ranks=ranks),
                lambda one, many: float(one.tokens != many.tokens)))
    if not heavy:
        return out

    for n_prompts in (3, 1):  # batches of 2: 1/1 and 0/1
        batches = length_batches([len(p) for p in prompts[:n_prompts]], 2)
        every = prompt_prefixes(lm.model, [[prompts[i] for i in b] for b in batches], pad, layer)

        def power(ranks, every=every):
            mine = ranks.part(every)
            op = jacobian_at(lm.model, mine, target, theta0=thetas[1], ranks=ranks)
            found = power_iteration(op, 2, iters=4, oversample=2, tol=1e-12, seed=0, ranks=ranks)
            moved = relative_change(op, jacobian_at(lm.model, mine, target, ranks=ranks), found.vectors)
            return found, moved

        out.append((f"{prefix}pi_{n_prompts}prompts", power, lambda one, many: max(
            largest(one[0].vectors, many[0].vectors), largest(one[0].sigmas, many[0].sigmas),
            largest(one[0].trace, many[0].trace), largest(one[1], many[1]))))
        out.append((f"{prefix}melbo_{n_prompts}prompts",
                    lambda ranks, every=every: melbo(lm.model, ranks.part(every), target, 2, radius=4.0,
                                                     steps=3, lr=0.05, seed=1, ranks=ranks),
                    lambda one, many: max(largest(one.vectors, many.vectors), largest(one.trace, many.trace),
                                          largest(one.objective, many.objective))))
    return out


def differences(every_case: list[Case], ranks: Ranks) -> dict[str, float]:
    """Every case on all ranks together first (their collectives in the same order on each),
    then each case's one-process reference on one rank, the ranks taking turns; the differences
    gathered, so that every rank computes half of the references."""
    on_ranks = [compute(ranks) for _, compute, _ in every_case]
    mine = {name: difference(compute(SINGLE), many)
            for index, ((name, compute, difference), many) in enumerate(zip(every_case, on_ranks))
            if index % ranks.size == ranks.rank}
    return {name: value for share in ranks.gather([mine]) for name, value in share.items()}


def run_commands(path: str) -> None:
    for module, *args in json.loads(open(path).read()):
        with mock.patch.object(sys, "argv", [module, *args]):
            main_guard(importlib.import_module(module).run)


def main(path: str, commands: str) -> None:
    torch.set_num_threads(1)
    ranks, _ = start("cpu")
    assert ranks.size == 2, "run under torchrun --nproc-per-node 2"
    default = load_model(str(DEFAULT_MODEL_DIR), "fp32")
    items = load_items(DATA, "train")
    diffs = differences(cases(tiny_model("llama", default.tokenizer), items, "tiny_", heavy=True)
                        + cases(default, items, "default_", heavy=False), ranks)
    try:  # a replicated tensor that is not: every rank must hear of it
        ranks.check_identical(torch.tensor([float(ranks.rank)]), "each rank's own number")
        diffs["check_identical_missed_a_difference"] = 1.0
    except RuntimeError:
        diffs["check_identical_missed_a_difference"] = 0.0
    if ranks.writer:
        with open(path, "w") as out:
            json.dump(diffs, out, indent=1)
    run_commands(commands)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
