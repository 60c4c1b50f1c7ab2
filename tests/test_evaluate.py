import pytest
import torch

from engine.data import load_items
from engine.evaluate import evaluate, evaluate_plain
from engine.prompts import answer_tokens_for


def _thetas(d, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    directions = torch.randn(5, d, generator=gen, dtype=dtype)
    directions /= directions.norm(dim=1, keepdim=True)
    scales = torch.tensor([0.0, 2.0, -2.0, 6.0, 12.0], dtype=dtype)
    return directions * scales[:, None]


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen3"])
def test_fast_path_equals_plain_path_in_fp64(name, request, ab_items):
    lm = request.getfixturevalue(name)
    answers, _ = answer_tokens_for(lm.tokenizer, ab_items)
    thetas = _thetas(lm.d_model)
    pad = lm.tokenizer.pad_token_id
    fast = evaluate(lm.model, answers, 1, thetas, pad, batch_size=3, settings_per_pass=2)
    plain = evaluate_plain(lm.model, answers, 1, thetas, pad)
    assert (fast.logit_diff - plain.logit_diff).abs().max() < 1e-9
    assert (fast.answer_mass - plain.answer_mass).abs().max() < 1e-9
    # the settings really steer: scale 12 moves the logit difference
    assert (fast.logit_diff[4] - fast.logit_diff[0]).abs().max() > 1e-4


def test_fast_path_batched_equals_one_by_one(tiny_qwen3, ab_items):
    answers, _ = answer_tokens_for(tiny_qwen3.tokenizer, ab_items)
    thetas = _thetas(tiny_qwen3.d_model)
    pad = tiny_qwen3.tokenizer.pad_token_id
    together = evaluate(tiny_qwen3.model, answers, 2, thetas, pad, batch_size=4, settings_per_pass=5)
    for q, answer in enumerate(answers):
        alone = evaluate(tiny_qwen3.model, [answer], 2, thetas, pad, batch_size=1, settings_per_pass=1)
        assert (alone.logit_diff[:, 0] - together.logit_diff[:, q]).abs().max() < 1e-10


def test_fast_path_equals_plain_path_on_default_model_in_bf16(default_model_bf16):
    """bf16 tolerance: the two paths round in different places (stacked batch, head applied to one
    position). Logits near 20 are spaced 0.125 apart in bf16; the measured max difference was 0.25
    (two steps), so 0.5 is allowed per question and 0.1 on the mean; answer mass to 0.05."""
    lm = default_model_bf16
    items = sorted(load_items("data/survival-instinct.jsonl", "val"), key=lambda i: len(i.question))[:3]
    answers, _ = answer_tokens_for(lm.tokenizer, items)
    thetas = _thetas(lm.d_model, torch.float32)[[0, 3]] * 4  # unsteered and |θ| = 24
    pad = lm.tokenizer.pad_token_id
    fast = evaluate(lm.model, answers, 7, thetas, pad, batch_size=3, settings_per_pass=2)
    plain = evaluate_plain(lm.model, answers, 7, thetas, pad)
    assert (fast.logit_diff - plain.logit_diff).abs().max() < 0.5
    assert (fast.logit_diff.mean(1) - plain.logit_diff.mean(1)).abs().max() < 0.1
    assert (fast.answer_mass - plain.answer_mass).abs().max() < 0.05
