"""Eval throughput on the default model: the fast path vs what a first script would do.

The workload is the first N questions of the validation split as the data file lists them
(N = 16, what `make eval` uses by default; BENCH_EVAL_QUESTIONS=64 or =all for more) under
4 θ settings, in bf16 (the issue's setting) and in fp32 (what DTYPE=auto runs on a CPU; bf16
matmuls are ~7x slower on CPUs without bf16 units). The plain loop runs one full HF forward per
setting with a hook on down_proj, all N questions padded in one batch in file order, full logits at
every position. Both do the same work; reported as questions×settings per second in extra_info and
as the ratios `eval_speedup_vs_plain` (bf16) and `eval_speedup_vs_plain_fp32` (plain time / fast
time). The plain loop's padding grows with N (longest/mean length: 1.48 for the first 16, 1.76 for
64, 3.33 for the whole split), so larger evals gain more.
"""
import os

import pytest
import torch

from bench.conftest import median_seconds, smoke
from bench.flops import eval_flops, plain_eval_flops
from steerlab.cli.options import count_or_all
from steerlab.lm.model import DEFAULT_MODEL_DIR, load_model
from steerlab.lm.segment import opening_shareable
from steerlab.measure.letter import letter_scores
from steerlab.measure.reference import letter_plain
from steerlab.questions.data import load_items
from steerlab.questions.prompts import answer_tokens_for, common_opening

# BENCH_SMOKE=1: 2 questions, 1 setting, unless these two are set as well
N_QUESTIONS = os.environ.get("BENCH_EVAL_QUESTIONS", smoke("16", "2"))
N_SETTINGS = int(os.environ.get("BENCH_EVAL_SETTINGS", smoke("4", "1")))
# questions per forward of the plain loop (file order, each forward padded to its longest);
# all at once by default: what a first script does, and what no longer fits 24 GB at the whole
# split in fp32 (17 GB of full logits), where BENCH_EVAL_PLAIN_BATCH=32 measures a loop that batches
PLAIN_BATCH = count_or_all(os.environ.get("BENCH_EVAL_PLAIN_BATCH", "all"))
LAYER = 7
RATIOS = {"eval_speedup_vs_plain": ("test_eval_plain_bf16", "test_eval_fast_bf16", 1.0),
          "eval_speedup_vs_plain_fp32": ("test_eval_plain_fp32", "test_eval_fast_fp32", 1.0),
          "eval_bf16_speedup_over_fp32": ("test_eval_fast_fp32", "test_eval_fast_bf16", 1.0)}
FLOP_RATIOS = {"eval_fraction_of_peak": ("test_eval_fast_fp32", "test_matmul_peak[fp32]"),
               "eval_fraction_of_peak_bf16": ("test_eval_fast_bf16", "test_matmul_peak[bf16]")}


def _setup(dtype):
    lm = load_model(str(DEFAULT_MODEL_DIR), dtype)
    items = load_items("data/survival-instinct.jsonl", "val")[: count_or_all(N_QUESTIONS)]
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


def _useful_flop(lm, answers, thetas) -> int:
    """What the fast path must compute (bench/flops.py), with its shared opening."""
    sequences = [a.prefix_ids for a in answers]
    opening = 0
    if opening_shareable(lm.model, LAYER):
        opening = min(common_opening(sequences), min(len(s) - 1 for s in sequences))
    return eval_flops(lm.model.config, [len(s) for s in sequences], opening, LAYER, len(thetas))


def _plain_work_over_fast(lm, answers, thetas) -> float:
    """How much more the plain loop computes (padding, every position's logits, all layers per
    setting): the most the fast path can gain at equal FLOP/s."""
    lengths = [len(a.prefix_ids) for a in answers]
    return plain_eval_flops(lm.model.config, lengths, len(thetas), PLAIN_BATCH) / _useful_flop(
        lm, answers, thetas)


def _run(benchmark, fn, setup):
    lm, answers, thetas = setup
    benchmark.extra_info.update(flop=_useful_flop(lm, answers, thetas),
                                plain_work_over_fast=_plain_work_over_fast(lm, answers, thetas))
    benchmark.pedantic(fn, args=(lm.model, answers, LAYER, thetas, lm.tokenizer.pad_token_id),
                       rounds=1, iterations=1, warmup_rounds=0)
    lengths = [len(a.prefix_ids) for a in answers]
    benchmark.extra_info.update(
        questions=len(answers), settings=len(thetas),
        padding_of_one_batch=max(lengths) * len(lengths) / sum(lengths),
        plain_questions_per_forward=PLAIN_BATCH or len(answers))
    seconds = median_seconds(benchmark)
    if seconds is not None:
        benchmark.extra_info["question_settings_per_second"] = len(answers) * len(thetas) / seconds


def _fast(model, answers, layer, thetas, pad_id):
    # the runner's batch size and settings per pass
    return letter_scores(model, answers, layer, thetas, pad_id=pad_id)


def test_eval_fast_bf16(benchmark, bf16):
    _run(benchmark, _fast, bf16)


def _plain(model, answers, layer, thetas, pad):
    return letter_plain(model, answers, layer, thetas, pad, questions_per_forward=PLAIN_BATCH)


def test_eval_plain_bf16(benchmark, bf16):
    _run(benchmark, _plain, bf16)


def test_eval_fast_fp32(benchmark, fp32):
    _run(benchmark, _fast, fp32)


def test_eval_plain_fp32(benchmark, fp32):
    _run(benchmark, _plain, fp32)
