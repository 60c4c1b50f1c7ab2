"""The real Gemma-3-270M (base; `make model MODEL=gemma-3-270m`), where the tiny random Gemmas of
tests/test_gemma.py stand in for it elsewhere: the residual site, the fast paths against their
plain twins, and the JVP against a finite difference, in fp64 on shipped A/B items.

`make test-gemma` installs the checkpoint and runs this file (CI does); in `make test` it runs
when the checkpoint is there and is skipped, saying so, when it is not.
"""
from __future__ import annotations

import os

import pytest
import torch

from engine.cloze import cloze_items, cloze_logprobs
from engine.data import load_items
from engine.errors import ModelError
from engine.evaluate import evaluate
from engine.jacobian import BatchJacobian, read_positions
from engine.model import EMBEDDED, REPO_ROOT, load_model
from engine.prompts import answer_tokens_for, pad_right
from engine.reference import cloze_plain, evaluate_plain
from engine.segment import run_prefix, segment
from engine.site import add_at, check_injection_site, head, mlp_site_difference, resolve_site
from tests.helpers import scaled_directions

FOLDER = EMBEDDED["gemma-3-270m"].folder
SOURCE = 12  # the main job's layer on this model (Makefile); its median ‖h_S‖ is about 11,000
pytestmark = pytest.mark.gemma_checkpoint


@pytest.fixture(scope="module")
def gemma():
    if not (FOLDER / "config.json").is_file():
        if os.environ.get("GEMMA_CHECKPOINT_REQUIRED") == "1":
            pytest.fail(f"{FOLDER} is missing: `make model MODEL=gemma-3-270m` converts it")
        pytest.skip(f"{FOLDER} is not converted; `make test-gemma` installs it and runs these tests")
    return load_model(str(FOLDER), "fp64")


@pytest.fixture(scope="module")
def items():
    return load_items(REPO_ROOT / "data" / "survival-instinct.jsonl", "val")[:4]


def test_it_is_the_real_gemma3_base_model(gemma):
    config = gemma.model.config
    assert config.model_type == "gemma3_text" and gemma.n_layers == 18 and gemma.d_model == 640
    assert {"sliding_attention", "full_attention"} == set(config.layer_types)
    assert not getattr(gemma.tokenizer, "chat_template", None)  # base model: the plain prompt format


def test_the_mlp_site_is_refused_and_the_residual_site_holds(gemma):
    """Gemma normalises the MLP output before the residual add, so θ at down_proj is not θ in
    the residual stream: numerically far apart on the real weights, and refused."""
    assert mlp_site_difference(gemma.model, SOURCE) > 1e-2
    with pytest.raises(ModelError, match="use SITE=resid"):
        check_injection_site(gemma.model, SOURCE)
    assert resolve_site(gemma.model, SOURCE, "auto") == "resid"


def test_segment_and_head_equal_the_models_own_logits_with_theta_hooked_at_the_block_output(gemma, items):
    answers, _ = answer_tokens_for(gemma.tokenizer, items[:2])
    ids, mask = pad_right([a.positive_ids for a in answers], gemma.tokenizer.pad_token_id)
    theta = 2000.0 * torch.nn.functional.normalize(
        torch.randn(gemma.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(1)), dim=0)
    prefix = run_prefix(gemma.model, ids, mask, SOURCE)
    fast = head(gemma.model, segment(gemma.model, prefix, theta, gemma.n_layers - 1))
    with add_at(gemma.model, SOURCE, theta, "resid"):
        plain = gemma.model(ids, attention_mask=mask, use_cache=False).logits
    unsteered = gemma.model(ids, attention_mask=mask, use_cache=False).logits
    real = mask.bool()
    difference = (fast - plain)[real].abs().max().item()
    print(f"segment + head vs the model's forward: max |Δ logit| {difference:.2e}")
    assert difference < 1e-9 * plain[real].abs().max().item()
    assert (plain - unsteered)[real].abs().max() > 1e-2  # θ really steers


def test_the_eval_fast_paths_equal_their_plain_twins(gemma, items):
    pad = gemma.tokenizer.pad_token_id
    thetas = scaled_directions(gemma.d_model, scales=(2000.0, -2000.0), seed=0)
    answers, _ = answer_tokens_for(gemma.tokenizer, items)
    fast = evaluate(gemma.model, answers, SOURCE, thetas, pad, batch_size=2, settings_per_pass=2)
    plain = evaluate_plain(gemma.model, answers, SOURCE, thetas, pad, site="resid")
    letter = (fast.logit_diff - plain.logit_diff).abs().max().item()
    cloze_in, _ = cloze_items(gemma.tokenizer, items)
    fast_cloze = cloze_logprobs(gemma.model, cloze_in, SOURCE, thetas, pad, batch_size=2, settings_per_pass=2)
    plain_cloze = cloze_plain(gemma.model, cloze_in, SOURCE, thetas, pad, site="resid")
    cloze = (fast_cloze - plain_cloze).abs().max().item()
    print(f"letter logit difference fast vs plain {letter:.2e}; cloze log-prob {cloze:.2e}")
    assert letter < 1e-9 and cloze < 1e-9
    assert (fast.logit_diff[1] - fast.logit_diff[0]).abs().max() > 1e-3  # the settings differ


def test_the_jvp_equals_a_central_finite_difference(gemma, items):
    """Gemma's RMSNorm computes in fp32 even in an fp64 model, so h_T (norm ~3e5 here) carries
    fp32 rounding: a step of ε = 2 (of ‖h_S‖ ~ 1e4) balances that against the ε² truncation
    (measured: relative error 1e-4 at ε = 1, 3.5e-4 at 10, 3e-3 at 30, 1e-3 at 0.1)."""
    answers, _ = answer_tokens_for(gemma.tokenizer, items[:2])
    ids, mask = pad_right([a.positive_ids for a in answers], gemma.tokenizer.pad_token_id)
    target = 16
    prefix = run_prefix(gemma.model, ids, mask, SOURCE)
    op = BatchJacobian(gemma.model, prefix, target)
    rows, cols = read_positions(mask)
    v = torch.nn.functional.normalize(
        torch.randn(gemma.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(2)), dim=0)
    eps = 2.0

    def f(theta):
        return segment(gemma.model, prefix, theta, target)[rows, cols].reshape(-1)

    zero = torch.zeros(gemma.d_model, dtype=torch.float64)
    finite = (f(zero + eps * v) - f(zero - eps * v)) / (2 * eps)
    jv = op.jvp(v[None])[0]
    relative = ((jv - finite).norm() / finite.norm()).item()
    print(f"JVP vs central difference (ε = {eps}): relative {relative:.2e}")
    assert relative < 1e-3 and finite.norm() > 0
