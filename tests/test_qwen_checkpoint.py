"""The real Qwen2.5-Coder-0.5B-Instruct (`make model MODEL=qwen2.5-0.5b`), the seed experiment's
model family: the residual site, the fast paths against their plain twins, and the JVP against a
finite difference, in fp64 on shipped A/B checkpoint_items.

`make test-qwen` installs the checkpoint and runs this file (CI does); in `make test` it runs when
the checkpoint is there and is skipped, saying so, when it is not.
"""
from __future__ import annotations

import pytest

from steerlab.lm.site import mlp_site_difference, resolve_site
from tests.checkpoint_checks import (
    eval_fast_paths_equal_their_plain_twins,
    jvp_matches_a_central_difference,
    segment_and_head_match_the_forward,
)

SOURCE = 12  # the study's layer on this model (presets/qwen2.5-0.5b.mk)
TARGET = 20
pytestmark = pytest.mark.qwen_checkpoint



def test_it_is_the_real_qwen2_5_instruct_model(real_qwen):
    config = real_qwen.model.config
    assert config.model_type == "qwen2" and real_qwen.n_layers == 24 and real_qwen.d_model == 896
    assert config.num_key_value_heads == 2 and not config.tie_word_embeddings
    assert "<|im_start|>" in real_qwen.tokenizer.chat_template


def test_the_mlp_site_is_the_residual_add(real_qwen):
    """Qwen2 adds the MLP output straight into the residual stream: θ at down_proj and θ after
    block S give the same network, so `auto` takes the MLP site."""
    assert mlp_site_difference(real_qwen.model, SOURCE) < 1e-9
    assert resolve_site(real_qwen.model, SOURCE, "auto") == "mlp"


def test_segment_and_head_equal_the_models_own_logits_with_theta_hooked_at_its_site(
        real_qwen, checkpoint_items):
    segment_and_head_match_the_forward(real_qwen, checkpoint_items, SOURCE, 8.0, "mlp")


def test_the_eval_fast_paths_equal_their_plain_twins(real_qwen, checkpoint_items):
    eval_fast_paths_equal_their_plain_twins(real_qwen, checkpoint_items, SOURCE, 8.0, "mlp")


def test_the_jvp_equals_a_central_finite_difference(real_qwen, checkpoint_items):
    assert jvp_matches_a_central_difference(real_qwen, checkpoint_items, SOURCE, TARGET, eps=1e-2) < 1e-3
