"""What the cloze score costs beside the letter score, per question × setting, on the default model.

The workload is the first 16 val questions by id (what `make eval` asks by default) under 4 θ
settings at layer 20 (the main job's), fp32: the letter eval asks each question in both orders (its prompt
carries the choice block); the cloze eval scores both answer texts after the stem, with each item's prompt
shared between its two answers (``share``) or, as the plain twin would, each answer run
with its prompt whole. Ratios: `cloze_over_letter` (cloze time / letter time for the same
questions and settings: the cost of adding the cloze score) and `cloze_prompt_sharing_speedup`
(whole / shared).
"""
import pytest
import torch

from bench.conftest import smoke
from steerlab.lm.model import DEFAULT_MODEL_DIR, load_model
from steerlab.measure.cloze import cloze_logprobs
from steerlab.measure.letter import letter_scores
from steerlab.questions.cloze_form import cloze_items
from steerlab.questions.data import load_items
from steerlab.questions.orders import answers_in_order

LAYER, N_QUESTIONS, N_SETTINGS = 20, smoke(16, 2), smoke(4, 1)
RATIOS = {"cloze_over_letter": ("test_cloze[shared]", "test_letter_both_orders", 1.0),
          "cloze_prompt_sharing_speedup": ("test_cloze[whole]", "test_cloze[shared]", 1.0)}


@pytest.fixture(scope="module")
def workload():
    lm = load_model(str(DEFAULT_MODEL_DIR), "fp32")
    items = sorted(load_items("data/survival-instinct.jsonl", "val"), key=lambda i: i.id)[:N_QUESTIONS]
    answers, _ = answers_in_order(lm.tokenizer, items, "both")
    cloze, _ = cloze_items(lm.tokenizer, items)
    gen = torch.Generator().manual_seed(0)
    thetas = torch.randn(N_SETTINGS, lm.d_model, generator=gen)
    thetas = 33 * thetas / thetas.norm(dim=1, keepdim=True)  # 0.14 of ‖h_20‖
    return lm, answers, cloze, thetas


def _per_question_setting(benchmark, n_questions):
    benchmark.extra_info["question_settings"] = n_questions * N_SETTINGS


def test_letter_both_orders(benchmark, workload):
    lm, answers, _, thetas = workload
    _per_question_setting(benchmark, len(answers) // 2)
    benchmark.pedantic(letter_scores, args=(lm.model, answers, LAYER, thetas),
                       kwargs={"pad_id": lm.tokenizer.pad_token_id}, rounds=2, iterations=1, warmup_rounds=0)


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "whole"])
def test_cloze(benchmark, workload, shared):
    lm, _, cloze, thetas = workload
    _per_question_setting(benchmark, len(cloze))
    benchmark.pedantic(cloze_logprobs, args=(lm.model, cloze, LAYER, thetas),
                       kwargs={"pad_id": lm.tokenizer.pad_token_id, "share": shared}, rounds=2, iterations=1,
                       warmup_rounds=0)
