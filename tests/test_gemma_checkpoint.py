"""The real Gemma-3-270M (base; `make model MODEL=gemma-3-270m`), where the tiny random Gemmas of
tests/test_gemma.py stand in for it elsewhere: the residual site, the fast paths against their
plain twins, and the JVP against a finite difference, in fp64 on shipped A/B checkpoint_items.

`make test-gemma` installs the checkpoint and runs this file (CI does); in `make test` it runs
when the checkpoint is there and is skipped, saying so, when it is not.
"""
from __future__ import annotations

import pytest

from steerlab.base.errors import ModelError
from steerlab.lm.site import check_injection_site, mlp_site_difference, resolve_site
from tests.checkpoint_checks import (
    eval_fast_paths_equal_their_plain_twins,
    jvp_matches_a_central_difference,
    segment_and_head_match_the_forward,
)

SOURCE = 12  # the main job's layer on this model (Makefile); its median ‖h_S‖ is about 11,000
pytestmark = pytest.mark.gemma_checkpoint



def test_it_is_the_real_gemma3_base_model(real_gemma):
    config = real_gemma.model.config
    assert config.model_type == "gemma3_text" and real_gemma.n_layers == 18 and real_gemma.d_model == 640
    assert {"sliding_attention", "full_attention"} == set(config.layer_types)
    assert not getattr(real_gemma.tokenizer, "chat_template", None)  # base model: the plain prompt format


def test_the_mlp_site_is_refused_and_the_residual_site_holds(real_gemma):
    """Gemma normalises the MLP output before the residual add, so θ at down_proj is not θ in
    the residual stream: numerically far apart on the real weights, and refused."""
    assert mlp_site_difference(real_gemma.model, SOURCE) > 1e-2
    with pytest.raises(ModelError, match="use SITE=resid"):
        check_injection_site(real_gemma.model, SOURCE)
    assert resolve_site(real_gemma.model, SOURCE, "auto") == "resid"


def test_segment_and_head_equal_the_models_own_logits_with_theta_hooked_at_its_site(
        real_gemma, checkpoint_items):
    segment_and_head_match_the_forward(real_gemma, checkpoint_items, SOURCE, 2000.0, "resid")


def test_the_eval_fast_paths_equal_their_plain_twins(real_gemma, checkpoint_items):
    eval_fast_paths_equal_their_plain_twins(real_gemma, checkpoint_items, SOURCE, 2000.0, "resid")


def test_the_jvp_equals_a_central_finite_difference(real_gemma, checkpoint_items):
    """Gemma's RMSNorm computes in fp32 even in an fp64 model, so h_T (norm ~3e5 here) carries
    fp32 rounding: a step of ε = 2 (of ‖h_S‖ ~ 1e4) balances that against the ε² truncation
    (measured: relative error 1e-4 at ε = 1, 3.5e-4 at 10, 3e-3 at 30, 1e-3 at 0.1)."""
    assert jvp_matches_a_central_difference(real_gemma, checkpoint_items, SOURCE, 16, eps=2.0) < 1e-3
