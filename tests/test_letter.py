import pytest
import torch

from steerlab.measure.letter import letter_scores
from steerlab.measure.reference import letter_plain
from steerlab.questions.data import load_items
from steerlab.questions.orders import answers_in_order
from steerlab.questions.prompts import answer_tokens_for, common_opening
from tests.helpers import scaled_directions


def _thetas(d, dtype=torch.float64, seed=0):
    return scaled_directions(d, (0.0, 2.0, -2.0, 6.0, 12.0), dtype, seed)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen3"])
def test_fast_path_equals_plain_path_in_fp64(name, request, ab_items):
    lm = request.getfixturevalue(name)
    answers, _ = answer_tokens_for(lm.tokenizer, ab_items)
    thetas = _thetas(lm.d_model)
    pad = lm.tokenizer.pad_token_id
    fast = letter_scores(lm.model, answers, 1, thetas, pad_id=pad, batch_size=3, settings_per_pass=2)
    plain = letter_plain(lm.model, answers, 1, thetas, pad)
    assert (fast.logit_diff - plain.logit_diff).abs().max() < 1e-9
    assert (fast.answer_mass - plain.answer_mass).abs().max() < 1e-9
    in_chunks = letter_plain(lm.model, answers, 1, thetas, pad, questions_per_forward=2)
    assert (in_chunks.logit_diff - plain.logit_diff).abs().max() < 1e-9
    # the settings really steer: scale 12 moves the logit difference
    assert (fast.logit_diff[4] - fast.logit_diff[0]).abs().max() > 1e-4


def test_fast_path_batched_equals_one_by_one(tiny_qwen3, ab_items):
    answers, _ = answer_tokens_for(tiny_qwen3.tokenizer, ab_items)
    thetas = _thetas(tiny_qwen3.d_model)
    pad = tiny_qwen3.tokenizer.pad_token_id
    together = letter_scores(tiny_qwen3.model, answers, 2, thetas, pad_id=pad, batch_size=4,
                             settings_per_pass=5)
    for q, answer in enumerate(answers):
        alone = letter_scores(tiny_qwen3.model, [answer], 2, thetas, pad_id=pad, batch_size=1,
                              settings_per_pass=1)
        assert (alone.logit_diff[:, 0] - together.logit_diff[:, q]).abs().max() < 1e-10


def test_fast_path_in_bf16_is_as_close_to_fp32_as_the_plain_path(default_model, default_model_bf16):
    """In bf16 both paths round, in different places (the fast path stacks settings, caches the
    shared opening and applies the head at one position), so each is compared with the fp32 answer.
    Logits near 20 are spaced 0.125 apart in bf16; measured on these 6 questions × 3 settings: fast
    max 0.33 / mean 0.11, plain max 0.36 / mean 0.09. A wrong mask or position is off by ~1 or more."""
    items = sorted(load_items("data/survival-instinct.jsonl", "val"), key=lambda i: len(i.question))[:6]
    errors = {}
    for lm in (default_model, default_model_bf16):
        answers, _ = answer_tokens_for(lm.tokenizer, items)
        thetas = _thetas(lm.d_model, torch.float32)[[0, 3, 4]] * 2  # unsteered, |θ| = 12 and 24
        pad = lm.tokenizer.pad_token_id
        errors[lm.dtype] = (letter_scores(lm.model, answers, 7, thetas, pad_id=pad, batch_size=3),
                            letter_plain(lm.model, answers, 7, thetas, pad))
    fast32, plain32 = errors["fp32"]
    assert (fast32.logit_diff - plain32.logit_diff).abs().max() < 1e-3
    fast16, plain16 = errors["bf16"]
    fast_err = (fast16.logit_diff - plain32.logit_diff).abs()
    plain_err = (plain16.logit_diff - plain32.logit_diff).abs()
    assert fast_err.max() < 0.5
    assert fast_err.mean() < 2 * plain_err.mean() + 0.02
    assert (fast16.answer_mass - plain32.answer_mass).abs().max() < 0.05


def test_common_opening():
    assert common_opening([(1, 2, 3, 4), (1, 2, 5), (1, 2, 3)]) == 2
    assert common_opening([(7, 2), (1, 2)]) == 0
    # a sequence that is all opening keeps its last token for itself
    assert common_opening([(1, 2, 3), (1, 2, 3, 4)]) == 2
    assert common_opening([(1, 2, 3)]) == 2


def test_shared_opening_changes_nothing(tiny_llama, ab_items):
    """The opening cache is on by default; the chat template's system turn is the shared part."""
    answers, _ = answer_tokens_for(tiny_llama.tokenizer, ab_items)
    assert common_opening([a.prefix_ids for a in answers]) > 5
    thetas = _thetas(tiny_llama.d_model)
    pad = tiny_llama.tokenizer.pad_token_id
    shared = letter_scores(tiny_llama.model, answers, 0, thetas, pad_id=pad, batch_size=2,
                           settings_per_pass=3)
    alone = letter_scores(tiny_llama.model, answers, 0, thetas, pad_id=pad, batch_size=2, settings_per_pass=3,
                     share=False)
    assert (shared.logit_diff - alone.logit_diff).abs().max() < 1e-10
    assert (shared.answer_mass - alone.answer_mass).abs().max() < 1e-12


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen3"])
def test_fast_path_equals_plain_path_in_both_orders(name, request, ab_items):
    lm = request.getfixturevalue(name)
    answers, skipped = answers_in_order(lm.tokenizer, ab_items, "both")
    assert not skipped and len(answers) == 2 * len(ab_items)
    half = len(ab_items)
    # the mirror of a question is the same question with its answers' letters exchanged
    assert [a.positive_id for a in answers[half:]] == [a.negative_id for a in answers[:half]]
    thetas = _thetas(lm.d_model)
    pad = lm.tokenizer.pad_token_id
    fast = letter_scores(lm.model, answers, 1, thetas, pad_id=pad, batch_size=3, settings_per_pass=2)
    plain = letter_plain(lm.model, answers, 1, thetas, pad)
    assert (fast.logit_diff - plain.logit_diff).abs().max() < 1e-9
    assert (fast.answer_mass - plain.answer_mass).abs().max() < 1e-9


def test_eager_attention_gives_the_sdpa_numbers_on_the_default_model(default_model):
    """What a model without SDPA support runs with; on SmolLM2 the eval numbers must not move.
    Eager also turns off the shared opening, so this checks that shortcut against no shortcut too."""
    from steerlab.lm.model import DEFAULT_MODEL_DIR, load_model
    from steerlab.lm.segment import opening_shareable

    eager = load_model(str(DEFAULT_MODEL_DIR), "fp32", attention="eager")
    assert eager.attention == "eager" and default_model.attention == "sdpa"
    assert not opening_shareable(eager.model, 7) and opening_shareable(default_model.model, 7)
    items = sorted(load_items("data/survival-instinct.jsonl", "val"), key=lambda i: len(i.question))[:4]
    answers, _ = answer_tokens_for(default_model.tokenizer, items)
    thetas = _thetas(default_model.d_model, torch.float32)[[0, 3, 4]] * 2
    pad = default_model.tokenizer.pad_token_id
    sdpa = letter_scores(default_model.model, answers, 7, thetas, pad_id=pad)
    plain = letter_scores(eager.model, answers, 7, thetas, pad_id=pad)
    assert (sdpa.logit_diff - plain.logit_diff).abs().max() < 1e-3
    assert (sdpa.answer_mass - plain.answer_mass).abs().max() < 1e-4
