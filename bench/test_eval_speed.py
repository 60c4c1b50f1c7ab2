"""Eval throughput on the default model: the fast path vs what a first script would do.

Both in bf16 (the issue's setting; on this CPU fp32 is faster for both), on the first questions of
the validation split as the data file lists them, several θ settings. The plain loop runs one full
HF forward per setting with a hook on down_proj, all questions padded in one batch in file order,
full logits at every position. Reported as questions×settings per second in extra_info and as the
ratio `eval_speedup_vs_plain` (plain time / fast time for the same work).
"""
import pytest
import torch

from engine.data import load_items
from engine.evaluate import evaluate, evaluate_plain
from engine.model import DEFAULT_MODEL_DIR, load_model
from engine.prompts import answer_tokens_for

N_QUESTIONS, N_SETTINGS, LAYER = 12, 2, 7
RATIOS = {"eval_speedup_vs_plain": ("test_eval_plain_bf16", "test_eval_fast_bf16", 1.0)}


@pytest.fixture(scope="module")
def setup():
    lm = load_model(str(DEFAULT_MODEL_DIR), "bf16")
    items = load_items("data/survival-instinct.jsonl", "val")[:N_QUESTIONS]
    answers, _ = answer_tokens_for(lm.tokenizer, items)
    gen = torch.Generator().manual_seed(0)
    thetas = torch.randn(N_SETTINGS, lm.d_model, generator=gen)
    thetas = 8 * thetas / thetas.norm(dim=1, keepdim=True)
    return lm, answers, thetas


def _run(benchmark, fn, setup):
    lm, answers, thetas = setup
    result = benchmark.pedantic(fn, args=(lm.model, answers, LAYER, thetas, lm.tokenizer.pad_token_id),
                                rounds=1, iterations=1, warmup_rounds=0)
    benchmark.extra_info["question_settings_per_second"] = (
        len(answers) * len(thetas) / benchmark.stats.stats.median)
    return result


def test_eval_fast_bf16(benchmark, setup):
    _run(benchmark, lambda *a: evaluate(*a, batch_size=16, settings_per_pass=N_SETTINGS), setup)


def test_eval_plain_bf16(benchmark, setup):
    _run(benchmark, evaluate_plain, setup)
