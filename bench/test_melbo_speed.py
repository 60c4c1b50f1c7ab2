"""MELBO step time: k = 8 vectors stepped together (one forward/backward of 8 copies of the
prompt batch) against the reference's loop (8 single-vector steps), on the default model in fp32
(DTYPE=auto on CPU; bf16 matmuls are ~7x slower on this CPU), S = 7, T = 20, two short prompts.
Both benchmarks time one optimiser step of all 8 vectors; per vector is the median / 8."""
from __future__ import annotations

import pytest
import torch

from bench.conftest import smoke
from steerlab.base.parallel import SINGLE
from steerlab.lm.model import DEFAULT_MODEL_DIR, load_model
from steerlab.lm.segment import run_prefix, segment
from steerlab.methods.melbo import _ascend, orthonormal_after
from steerlab.questions.behaviors import DEFAULT_BEHAVIOR, data_file
from steerlab.questions.data import load_items
from steerlab.questions.prompts import answer_tokens_for, pad_right

# BENCH_SMOKE=1: 2 vectors (the test names keep saying 8) over one prompt, 2 layers
SOURCE, TARGET, K, RADIUS, N_PROMPTS = 7, smoke(20, 9), smoke(8, 2), 16.0, smoke(2, 1)
RATIOS = {"melbo_batched_speedup": ("test_melbo_step_8_vectors_sequential",
                                    "test_melbo_step_8_vectors_batched", 1.0)}


@pytest.fixture(scope="module")
def setup():
    lm = load_model(str(DEFAULT_MODEL_DIR), "fp32")
    items = load_items(data_file(DEFAULT_BEHAVIOR), "train")[:N_PROMPTS]
    answers, _ = answer_tokens_for(lm.tokenizer, items)
    prefix = run_prefix(lm.model, *pad_right([a.prefix_ids for a in answers],
                                             lm.tokenizer.pad_token_id), SOURCE)
    with torch.no_grad():
        base = segment(lm.model, prefix, torch.zeros(lm.d_model), TARGET)
    draws = torch.randn(K, lm.d_model, generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64)
    return lm, prefix, base, draws


def _step(setup, start, earlier):
    lm, prefix, base, _ = setup
    return _ascend(lm.model, [prefix], [base], TARGET, start, earlier, radius=RADIUS, p=2.0, q=1.0,
                   steps=1, lr=1e-3, progress=None, first=0, ranks=SINGLE, saved={}, save=None)


def test_melbo_step_8_vectors_batched(benchmark, setup):
    draws = setup[3]
    none = torch.zeros(0, draws.shape[1], dtype=torch.float64)
    benchmark.pedantic(_step, args=(setup, draws, none), rounds=3, iterations=1, warmup_rounds=1)


def test_melbo_step_8_vectors_sequential(benchmark, setup):
    draws = setup[3]
    basis = orthonormal_after(torch.zeros(0, draws.shape[1], dtype=torch.float64), draws)

    def eight_single_steps():
        for i in range(K):
            _step(setup, draws[i:i + 1], basis[:i])

    benchmark.pedantic(eight_single_steps, rounds=3, iterations=1, warmup_rounds=1)
