"""Eval throughput on the default model: the fast path vs what a first script would do.

Twice: in bf16 (the issue's setting) on 12 questions, and in fp32 (what DTYPE=auto runs on a
CPU; bf16 matmuls are ~7x slower here) on 32 questions, each on the first questions of the
validation split as the data file lists them, with 2 θ settings. The plain loop runs one full
HF forward per setting with a hook on down_proj, all questions padded in one batch in file order,
full logits at every position. Reported as questions×settings per second in extra_info and as the
ratios `eval_speedup_vs_plain` (bf16) and `eval_speedup_vs_plain_fp32` (plain time / fast time for
the same work). The plain path's padding grows with the number of questions (longest/mean length
1.5 for the first 12, 1.6 for 32, 3.3 for the whole split), so larger evals gain more.
"""
import pytest
import torch

from engine.data import load_items
from engine.evaluate import evaluate, evaluate_plain
from engine.model import DEFAULT_MODEL_DIR, load_model
from engine.prompts import answer_tokens_for

N_QUESTIONS = {"bf16": 12, "fp32": 32}
N_SETTINGS, LAYER = 2, 7
RATIOS = {"eval_speedup_vs_plain": ("test_eval_plain_bf16", "test_eval_fast_bf16", 1.0),
          "eval_speedup_vs_plain_fp32": ("test_eval_plain_fp32", "test_eval_fast_fp32", 1.0)}


def _setup(dtype):
    lm = load_model(str(DEFAULT_MODEL_DIR), dtype)
    items = load_items("data/survival-instinct.jsonl", "val")[: N_QUESTIONS[dtype]]
    answers, _ = answer_tokens_for(lm.tokenizer, items)
    gen = torch.Generator().manual_seed(0)
    thetas = torch.randn(N_SETTINGS, lm.d_model, generator=gen)
    thetas = 8 * thetas / thetas.norm(dim=1, keepdim=True)
    return lm, answers, thetas


@pytest.fixture(scope="module")
def bf16():
    return _setup("bf16")


@pytest.fixture(scope="module")
def fp32():
    return _setup("fp32")


def _run(benchmark, fn, setup):
    lm, answers, thetas = setup
    result = benchmark.pedantic(fn, args=(lm.model, answers, LAYER, thetas, lm.tokenizer.pad_token_id),
                                rounds=1, iterations=1, warmup_rounds=0)
    benchmark.extra_info["question_settings_per_second"] = (
        len(answers) * len(thetas) / benchmark.stats.stats.median)
    return result


def _fast(*args):
    return evaluate(*args)  # the runner's defaults for batch size and settings per pass


def test_eval_fast_bf16(benchmark, bf16):
    _run(benchmark, _fast, bf16)


def test_eval_plain_bf16(benchmark, bf16):
    _run(benchmark, evaluate_plain, bf16)


def test_eval_fast_fp32(benchmark, fp32):
    _run(benchmark, _fast, fp32)


def test_eval_plain_fp32(benchmark, fp32):
    _run(benchmark, evaluate_plain, fp32)
