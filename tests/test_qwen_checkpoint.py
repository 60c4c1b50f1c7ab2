"""The real Qwen2.5-Coder-0.5B-Instruct (`make model MODEL=qwen2.5-0.5b`), the seed experiment's
model family: the residual site, the fast paths against their plain twins, and the JVP against a
finite difference, in fp64 on shipped A/B items.

`make test-qwen` installs the checkpoint and runs this file (CI does); in `make test` it runs when
the checkpoint is there and is skipped, saying so, when it is not.
"""
from __future__ import annotations

import os

import pytest
import torch

from engine.cloze import cloze_items, cloze_logprobs
from engine.data import load_items
from engine.evaluate import evaluate
from engine.jacobian import BatchJacobian, read_positions
from engine.model import EMBEDDED, REPO_ROOT, load_model
from engine.prompts import answer_tokens_for, pad_right
from engine.reference import cloze_plain, evaluate_plain
from engine.segment import run_prefix, segment
from engine.site import add_at, head, mlp_site_difference, resolve_site
from tests.helpers import scaled_directions

FOLDER = EMBEDDED["qwen2.5-0.5b"].folder
SOURCE = 12  # the study's layer on this model (presets/qwen2.5-0.5b.mk)
TARGET = 20
pytestmark = pytest.mark.qwen_checkpoint


@pytest.fixture(scope="module")
def qwen():
    if not (FOLDER / "config.json").is_file():
        if os.environ.get("QWEN_CHECKPOINT_REQUIRED") == "1":
            pytest.fail(f"{FOLDER} is missing: `make model MODEL=qwen2.5-0.5b` converts it")
        pytest.skip(f"{FOLDER} is not converted; `make test-qwen` installs it and runs these tests")
    return load_model(str(FOLDER), "fp64")


@pytest.fixture(scope="module")
def items():
    return load_items(REPO_ROOT / "data" / "survival-instinct.jsonl", "val")[:4]


def test_it_is_the_real_qwen2_5_instruct_model(qwen):
    config = qwen.model.config
    assert config.model_type == "qwen2" and qwen.n_layers == 24 and qwen.d_model == 896
    assert config.num_key_value_heads == 2 and not config.tie_word_embeddings
    assert "<|im_start|>" in qwen.tokenizer.chat_template


def test_the_mlp_site_is_the_residual_add(qwen):
    """Qwen2 adds the MLP output straight into the residual stream: θ at down_proj and θ after
    block S give the same network, so `auto` takes the MLP site."""
    assert mlp_site_difference(qwen.model, SOURCE) < 1e-9
    assert resolve_site(qwen.model, SOURCE, "auto") == "mlp"


def test_segment_and_head_equal_the_models_own_logits_with_theta_hooked_at_down_proj(qwen, items):
    answers, _ = answer_tokens_for(qwen.tokenizer, items[:2])
    ids, mask = pad_right([a.positive_ids for a in answers], qwen.tokenizer.pad_token_id)
    theta = 8.0 * torch.nn.functional.normalize(
        torch.randn(qwen.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(1)), dim=0)
    prefix = run_prefix(qwen.model, ids, mask, SOURCE)
    fast = head(qwen.model, segment(qwen.model, prefix, theta, qwen.n_layers - 1))
    with add_at(qwen.model, SOURCE, theta, "mlp"):
        plain = qwen.model(ids, attention_mask=mask, use_cache=False).logits
    unsteered = qwen.model(ids, attention_mask=mask, use_cache=False).logits
    real = mask.bool()
    difference = (fast - plain)[real].abs().max().item()
    print(f"segment + head vs the model's forward: max |Δ logit| {difference:.2e}")
    assert difference < 1e-9 * plain[real].abs().max().item()
    assert (plain - unsteered)[real].abs().max() > 1e-2  # θ really steers


def test_the_eval_fast_paths_equal_their_plain_twins(qwen, items):
    pad = qwen.tokenizer.pad_token_id
    thetas = scaled_directions(qwen.d_model, scales=(8.0, -8.0), seed=0)
    answers, _ = answer_tokens_for(qwen.tokenizer, items)
    fast = evaluate(qwen.model, answers, SOURCE, thetas, pad, batch_size=2, settings_per_pass=2)
    plain = evaluate_plain(qwen.model, answers, SOURCE, thetas, pad, site="mlp")
    letter = (fast.logit_diff - plain.logit_diff).abs().max().item()
    cloze_in, _ = cloze_items(qwen.tokenizer, items)
    fast_cloze = cloze_logprobs(qwen.model, cloze_in, SOURCE, thetas, pad, batch_size=2, settings_per_pass=2)
    plain_cloze = cloze_plain(qwen.model, cloze_in, SOURCE, thetas, pad, site="mlp")
    cloze = (fast_cloze - plain_cloze).abs().max().item()
    print(f"letter logit difference fast vs plain {letter:.2e}; cloze log-prob {cloze:.2e}")
    assert letter < 1e-9 and cloze < 1e-9
    assert (fast.logit_diff[1] - fast.logit_diff[0]).abs().max() > 1e-3  # the settings differ


def test_the_jvp_equals_a_central_finite_difference(qwen, items):
    answers, _ = answer_tokens_for(qwen.tokenizer, items[:2])
    ids, mask = pad_right([a.positive_ids for a in answers], qwen.tokenizer.pad_token_id)
    prefix = run_prefix(qwen.model, ids, mask, SOURCE)
    op = BatchJacobian(qwen.model, prefix, TARGET)
    rows, cols = read_positions(mask)
    v = torch.nn.functional.normalize(
        torch.randn(qwen.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(2)), dim=0)
    eps = 1e-2

    def f(theta):
        return segment(qwen.model, prefix, theta, TARGET)[rows, cols].reshape(-1)

    zero = torch.zeros(qwen.d_model, dtype=torch.float64)
    finite = (f(zero + eps * v) - f(zero - eps * v)) / (2 * eps)
    jv = op.jvp(v[None])[0]
    relative = ((jv - finite).norm() / finite.norm()).item()
    print(f"JVP vs central difference (ε = {eps}): relative {relative:.2e}")
    assert relative < 1e-3 and finite.norm() > 0
