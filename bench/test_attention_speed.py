"""Eval on the default model with eager attention against SDPA (what `load_model` picks where a
model supports it; Gemma-2 runs eager because transformers has no SDPA for it).

The workload is `make eval`'s per split: the first 16 val questions in both answer orders, 4 θ
settings, fp32. With eager attention the fast path also runs every sequence whole (the shared
opening needs SDPA's boolean mask), so the ratio `eval_eager_vs_sdpa` = eager time / SDPA time
prices both. The numbers themselves agree (tests/test_letter.py).
"""
import pytest
import torch

from bench.conftest import smoke
from steerlab.lm.model import DEFAULT_MODEL_DIR, load_model
from steerlab.measure.letter import letter_scores
from steerlab.questions.data import load_items
from steerlab.questions.orders import answers_in_order

LAYER, N_QUESTIONS, N_SETTINGS = 7, smoke(16, 2), smoke(4, 1)
RATIOS = {"eval_eager_vs_sdpa": ("test_eval_eager_fp32", "test_eval_sdpa_fp32", 1.0)}


@pytest.fixture(scope="module")
def setup():
    items = sorted(load_items("data/survival-instinct.jsonl", "val"), key=lambda i: i.id)[:N_QUESTIONS]
    models = {name: load_model(str(DEFAULT_MODEL_DIR), "fp32", attention=name) for name in ("sdpa", "eager")}
    answers, _ = answers_in_order(models["sdpa"].tokenizer, items, "both")
    gen = torch.Generator().manual_seed(0)
    thetas = torch.randn(N_SETTINGS, models["sdpa"].d_model, generator=gen)
    return models, answers, 8 * thetas / thetas.norm(dim=1, keepdim=True)


def _eval(benchmark, setup, name):
    models, answers, thetas = setup
    lm = models[name]
    benchmark.pedantic(letter_scores, args=(lm.model, answers, LAYER, thetas),
                       kwargs={"pad_id": lm.tokenizer.pad_token_id}, rounds=2, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(questions=len(answers), settings=len(thetas), attention=name)


def test_eval_sdpa_fp32(benchmark, setup):
    _eval(benchmark, setup, "sdpa")


def test_eval_eager_fp32(benchmark, setup):
    _eval(benchmark, setup, "eager")
