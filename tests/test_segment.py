from contextlib import ExitStack

import pytest
import torch

from steerlab.lm.segment import (
    CACHE_ARGUMENTS,
    LayerContractError,
    cache_argument,
    run_prefix,
    segment,
    with_cache,
)
from steerlab.lm.site import add_to_down_proj, reading_output
from steerlab.questions.prompts import answer_tokens, pad_right


def _batch(lm, items):
    return pad_right([answer_tokens(lm.tokenizer, item).prefix_ids for item in items],
                     lm.tokenizer.pad_token_id)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen3"])
def test_segment_equals_full_forward_with_hook_on_down_proj(name, request, ab_items):
    lm = request.getfixturevalue(name)
    ids, mask = _batch(lm, ab_items)
    theta = torch.randn(lm.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    prefix = run_prefix(lm.model, ids, mask, source_layer=1)
    fast = segment(lm.model, prefix, theta, target_layer=2)
    with add_to_down_proj(lm.model, 1, theta):
        plain = lm.model(ids, attention_mask=mask, output_hidden_states=True).hidden_states[3]
    real = mask.bool()
    assert (fast - plain)[real].abs().max() < 1e-12
    assert not torch.allclose(segment(lm.model, prefix, 0 * theta, 2)[real], plain[real])


def test_prefix_stops_after_source_layer(tiny_llama, ab_items):
    ids, mask = _batch(tiny_llama, ab_items)
    with ExitStack() as stack:
        seen = [stack.enter_context(reading_output(layer)) for layer in tiny_llama.model.model.layers]
        run_prefix(tiny_llama.model, ids, mask, source_layer=1)
    assert [len(outputs) for outputs in seen] == [1, 1, 0, 0]


def test_batched_prefix_equals_one_by_one(tiny_qwen3, ab_items):
    ids, mask = _batch(tiny_qwen3, ab_items)
    batched = run_prefix(tiny_qwen3.model, ids, mask, 2).hidden
    for row, item in enumerate(ab_items):
        one_ids, one_mask = _batch(tiny_qwen3, [item])
        alone = run_prefix(tiny_qwen3.model, one_ids, one_mask, 2).hidden[0]
        n = int(one_mask.sum())
        assert (batched[row, :n] - alone[:n]).abs().max() < 1e-12


def test_the_cache_goes_under_the_name_the_model_passed_it(tiny_llama, ab_items):
    """transformers 5.24 renamed the decoder layers' cache argument (past_key_values → cache);
    the captured arguments keep the model's own name so with_cache fills that one in."""
    ids, mask = _batch(tiny_llama, ab_items)
    kwargs = run_prefix(tiny_llama.model, ids, mask, source_layer=1).layer_kwargs
    passed = {cache_argument(k) for k in kwargs.values()}
    assert len(passed) == 1 and passed <= set(CACHE_ARGUMENTS)
    marker = object()
    filled = with_cache(kwargs, marker)
    assert all(k[cache_argument(k)] is marker for k in filled.values())
    renamed = {kind: {("cache" if key in CACHE_ARGUMENTS else key): v for key, v in k.items()}
               for kind, k in kwargs.items()}
    assert all(k["cache"] is marker for k in with_cache(renamed, marker).values())


def test_an_unknown_layer_call_contract_is_refused_with_the_transformers_version(tiny_llama, ab_items):
    import transformers

    ids, mask = _batch(tiny_llama, ab_items)
    kwargs = run_prefix(tiny_llama.model, ids, mask, source_layer=1).layer_kwargs
    no_cache = {kind: {key: v for key, v in k.items() if key not in CACHE_ARGUMENTS}
                for kind, k in kwargs.items()}
    with pytest.raises(LayerContractError, match=transformers.__version__):
        with_cache(no_cache, object())
    both = {kind: dict(k, cache=None, past_key_values=None) for kind, k in no_cache.items()}
    with pytest.raises(LayerContractError, match="cache, past_key_values"):
        with_cache(both, object())
