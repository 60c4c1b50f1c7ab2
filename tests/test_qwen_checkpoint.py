"""The real Qwen2.5-Coder-0.5B-Instruct and -1.5B-Instruct (`make model MODEL=qwen2.5-0.5b`,
`MODEL=qwen2.5-1.5b`), the seed experiment's model family: the residual site, the fast paths
against their plain twins, and the JVP against a finite difference, in fp64 on shipped A/B items.
Every test runs once per checkpoint, one checkpoint loaded at a time.

`make test-qwen` (the 0.5B) and `make test-qwen15` (the 1.5B) install a checkpoint and run its
tests (`-m qwen_checkpoint`, `-m qwen15_checkpoint`); in `make test` each runs when its checkpoint
is there and is skipped, saying so, when it is not.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from steerlab.lm.site import mlp_site_difference, resolve_site
from tests.checkpoint_checks import (
    eval_fast_paths_equal_their_plain_twins,
    jvp_matches_a_central_difference,
    load_checkpoint,
    segment_and_head_match_the_forward,
)


@dataclass(frozen=True)
class Qwen:
    name: str  # in steerlab.lm.model.EMBEDDED
    required_by: str  # set to 1 by its make target: a missing checkpoint fails instead of skipping
    n_layers: int
    d_model: int
    n_heads: int
    source: int  # its preset's LAYER and TARGET (presets/<name>.mk)
    target: int


CHECKPOINTS = [
    pytest.param(Qwen("qwen2.5-0.5b", "QWEN_CHECKPOINT_REQUIRED", 24, 896, 14, 12, 20),
                 marks=pytest.mark.qwen_checkpoint, id="0.5b"),
    pytest.param(Qwen("qwen2.5-1.5b", "QWEN15_CHECKPOINT_REQUIRED", 28, 1536, 12, 14, 22),
                 marks=pytest.mark.qwen15_checkpoint, id="1.5b"),
]


@pytest.fixture(scope="module", params=CHECKPOINTS)
def qwen(request) -> Qwen:
    return request.param


@pytest.fixture(scope="module")
def real_qwen(qwen):
    """The checkpoint in fp64; pytest drops one before it loads the next (the 1.5B takes 14 GB)."""
    return load_checkpoint(qwen.name, qwen.required_by)


def test_it_is_the_real_qwen2_5_instruct_model(qwen, real_qwen):
    config = real_qwen.model.config
    assert config.model_type == "qwen2" and real_qwen.n_layers == qwen.n_layers
    assert real_qwen.d_model == qwen.d_model and config.num_attention_heads == qwen.n_heads
    assert config.num_key_value_heads == 2 and not config.tie_word_embeddings
    assert "<|im_start|>" in real_qwen.tokenizer.chat_template


def test_the_mlp_site_is_the_residual_add(qwen, real_qwen):
    """Qwen2 adds the MLP output straight into the residual stream: θ at down_proj and θ after
    block S give the same network, so `auto` takes the MLP site."""
    assert mlp_site_difference(real_qwen.model, qwen.source) < 1e-9
    assert resolve_site(real_qwen.model, qwen.source, "auto") == "mlp"


def test_segment_and_head_equal_the_models_own_logits_with_theta_hooked_at_its_site(qwen, real_qwen,
                                                                                    checkpoint_items):
    segment_and_head_match_the_forward(real_qwen, checkpoint_items, qwen.source, 8.0, "mlp")


def test_the_eval_fast_paths_equal_their_plain_twins(qwen, real_qwen, checkpoint_items):
    eval_fast_paths_equal_their_plain_twins(real_qwen, checkpoint_items, qwen.source, 8.0, "mlp")


def test_the_jvp_equals_a_central_finite_difference(qwen, real_qwen, checkpoint_items):
    assert jvp_matches_a_central_difference(real_qwen, checkpoint_items, qwen.source, qwen.target,
                                            eps=1e-2) < 1e-3
