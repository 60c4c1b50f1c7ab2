"""KL on neutral text: the fast path against full forwards with the hook, padding, θ = 0."""
import pytest
import torch

from steerlab.measure.reference import side_effects_plain
from steerlab.measure.side_effects import ScoredText, side_effects
from steerlab.questions.prompts import format_prompt

REQUESTS = ["How do I boil an egg?", "Write a haiku about rain in the city at night, please.",
            "What is 17 times 23?", "List three rivers in Europe and the countries they cross."]


def texts(lm, continuation=6, seed=0):
    """Prompts in the chat template, each followed by ``continuation`` arbitrary tokens (fast and
    plain paths must agree on any text; the runner uses the model's greedy continuation)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n, request in enumerate(REQUESTS):
        prompt = lm.tokenizer(format_prompt(lm.tokenizer, request), add_special_tokens=False).input_ids
        tail = torch.randint(0, lm.model.config.vocab_size, (continuation + n,), generator=gen).tolist()
        out.append(ScoredText(f"p{n}", tuple(prompt + tail), len(prompt)))
    return out


def thetas(d):
    gen = torch.Generator().manual_seed(1)
    directions = torch.randn(4, d, generator=gen, dtype=torch.float64)
    directions /= directions.norm(dim=1, keepdim=True)
    return directions * torch.tensor([0.0, 2.0, -6.0, 12.0], dtype=torch.float64)[:, None]


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen3"])
def test_fast_kl_equals_plain_kl_in_fp64(name, request):
    lm = request.getfixturevalue(name)
    scored, settings = texts(lm), thetas(lm.d_model)
    pad = lm.tokenizer.pad_token_id
    fast = side_effects(lm.model, scored, 1, settings, pad_id=pad, batch_size=3, settings_per_pass=2)
    plain = side_effects_plain(lm.model, scored, 1, settings, pad)
    assert (fast.kl - plain.kl).abs().max() < 1e-9
    assert (fast.top1 - plain.top1).abs().max() < 1e-12
    assert (fast.kl[1:] > 1e-6).all()  # they really steer
    assert ((fast.top1 >= 0) & (fast.top1 <= 1)).all()


def test_theta_zero_costs_nothing(tiny_llama):
    scored, settings = texts(tiny_llama), thetas(tiny_llama.d_model)
    result = side_effects(tiny_llama.model, scored, 2, settings, pad_id=tiny_llama.tokenizer.pad_token_id,
                          batch_size=2, settings_per_pass=3)
    assert (result.kl[0] == 0).all() and (result.top1[0] == 1).all()
    assert (result.kl[1:] > 0).all()
    nothing = side_effects(tiny_llama.model, scored, 2,
                           torch.zeros(2, tiny_llama.d_model, dtype=torch.float64),
                           pad_id=tiny_llama.tokenizer.pad_token_id)
    assert (nothing.kl == 0).all() and (nothing.top1 == 1).all()


def test_batched_equals_one_by_one(tiny_qwen3):
    scored, settings = texts(tiny_qwen3), thetas(tiny_qwen3.d_model)
    pad = tiny_qwen3.tokenizer.pad_token_id
    together = side_effects(tiny_qwen3.model, scored, 1, settings, pad_id=pad, batch_size=4,
                            settings_per_pass=4)
    for n, text in enumerate(scored):
        alone = side_effects(tiny_qwen3.model, [text], 1, settings, pad_id=pad, batch_size=1,
                             settings_per_pass=1)
        assert (alone.kl[:, 0] - together.kl[:, n]).abs().max() < 1e-10
