"""Gemma-2 and Gemma-3, built tiny and random from their configs: the residual site, per-layer
attention types (sliding windows), eager attention and logit soft-capping, each fast path
against the model's own forward with θ added by a hook at the block output."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from torch.func import jacfwd

from steerlab.base.errors import ModelError
from steerlab.lm.jacobian import BatchJacobian, math_attention, read_positions
from steerlab.lm.segment import opening_shareable, run_prefix, segment
from steerlab.lm.site import add_at, check_injection_site, head, reading_site, resolve_site
from steerlab.measure.cloze import cloze_logprobs
from steerlab.measure.letter import letter_scores
from steerlab.measure.reference import cloze_plain, hidden_plain, letter_plain, side_effects_plain
from steerlab.measure.side_effects import ScoredText, side_effects
from steerlab.methods.caa import activations
from steerlab.questions.cloze_form import cloze_items
from steerlab.questions.prompts import answer_tokens_for, pad_right
from steerlab.store import store_key
from tests.helpers import run_runner, save_tiny, scaled_directions, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")
KINDS = ["gemma2", "gemma3"]
# Longer than the sliding window (32 tokens), and padded by less than it: in fp64, HF's eager
# sliding-window mask turns a pad row whose whole window is padding into NaN, which then spreads
# through 0 × NaN in the attention of the real rows (fp32 and bf16 are not affected).
LONG = tuple(range(5, 205, 5))  # 40 tokens
SHORT = tuple(range(7, 107, 5))  # 20 tokens


@pytest.fixture(scope="module", params=KINDS)
def gemma(request, smol_tokenizer):
    return tiny_model(request.param, smol_tokenizer, layers=6)


def _thetas(d, seed=0):
    return scaled_directions(d, seed=seed)


def test_the_mlp_site_is_refused_and_auto_resolves_to_the_residual(gemma):
    with pytest.raises(ModelError, match="use SITE=resid"):
        check_injection_site(gemma.model, 2)
    assert resolve_site(gemma.model, 2, "auto") == "resid"
    assert resolve_site(gemma.model, 2, "resid") == "resid"


def test_these_models_mix_attention_types_and_gemma2_runs_eager(gemma):
    kinds = set(gemma.model.config.layer_types)
    assert kinds == {"sliding_attention", "full_attention"}
    assert not opening_shareable(gemma.model, 2)  # the fast path runs every sequence whole
    if gemma.source == "tiny-gemma2":
        assert gemma.attention == "eager" and gemma.model.config.final_logit_softcapping


@pytest.mark.parametrize("source", [0, 2])
def test_segment_and_head_equal_the_models_forward_with_theta_at_the_block_output(gemma, source):
    """Source 0 in Gemma-3 has only sliding layers below it: the prefix runs on until the first
    full-attention layer to read that type's arguments."""
    ids, mask = pad_right([LONG, SHORT], gemma.tokenizer.pad_token_id)
    theta = torch.randn(gemma.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    prefix = run_prefix(gemma.model, ids, mask, source)
    assert prefix.layer_kwargs.keys() == {"sliding_attention", "full_attention"}
    last = gemma.n_layers - 1
    fast = head(gemma.model, segment(gemma.model, prefix, theta, last))
    with add_at(gemma.model, source, theta, "resid"):
        plain = gemma.model(ids, attention_mask=mask, use_cache=False).logits
    real = mask.bool()
    assert (fast - plain)[real].abs().max() < 1e-10
    unsteered = gemma.model(ids, attention_mask=mask, use_cache=False).logits
    assert (plain - unsteered)[real].abs().max() > 1e-4  # θ really steers


def test_eval_fast_path_equals_plain_path_in_fp64(gemma, ab_items):
    answers, _ = answer_tokens_for(gemma.tokenizer, ab_items)
    thetas = _thetas(gemma.d_model)
    pad = gemma.tokenizer.pad_token_id
    fast = letter_scores(gemma.model, answers, 2, thetas, pad_id=pad, batch_size=3, settings_per_pass=2)
    plain = letter_plain(gemma.model, answers, 2, thetas, pad, site="resid")
    assert (fast.logit_diff - plain.logit_diff).abs().max() < 1e-9
    assert (fast.answer_mass - plain.answer_mass).abs().max() < 1e-9
    assert (fast.logit_diff[3] - fast.logit_diff[0]).abs().max() > 1e-4


def test_cloze_fast_path_equals_plain_path_in_fp64(gemma, ab_items):
    """Sliding windows: the prompt is not shared between the answers; each runs whole."""
    items, _ = cloze_items(gemma.tokenizer, ab_items)
    thetas = _thetas(gemma.d_model)
    pad = gemma.tokenizer.pad_token_id
    fast = cloze_logprobs(gemma.model, items, 2, thetas, pad_id=pad, batch_size=3, settings_per_pass=2)
    plain = cloze_plain(gemma.model, items, 2, thetas, pad, site="resid")
    assert (fast - plain).abs().max() < 1e-9 and (fast[3] - fast[0]).abs().max() > 1e-4


def test_kl_fast_path_equals_plain_path(gemma):
    texts = [ScoredText("a", LONG, 8), ScoredText("b", SHORT, 3)]
    thetas = _thetas(gemma.d_model)
    pad = gemma.tokenizer.pad_token_id
    fast = side_effects(gemma.model, texts, 2, thetas, pad_id=pad, batch_size=2, settings_per_pass=3)
    plain = side_effects_plain(gemma.model, texts, 2, thetas, pad, site="resid")
    assert (fast.kl - plain.kl).abs().max() < 1e-9 and (fast.top1 == plain.top1).all()


def test_jvp_and_vjp_equal_dense_jacobian_and_the_hook_path(gemma):
    ids, mask = pad_right([LONG, SHORT], gemma.tokenizer.pad_token_id)
    source, target = 1, 4
    theta0 = torch.randn(gemma.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    prefix = run_prefix(gemma.model, ids, mask, source)
    op = BatchJacobian(gemma.model, prefix, target, theta0=theta0)
    rows, cols = read_positions(mask)

    def f(theta):
        return segment(gemma.model, prefix, theta, target)[rows, cols].reshape(-1)

    with math_attention():  # forward mode: d = 64 columns, where reverse mode needs a row per output
        dense = jacfwd(f)(theta0)
    gen = torch.Generator().manual_seed(5)
    v = torch.randn(3, gemma.d_model, generator=gen, dtype=torch.float64)
    u = torch.randn(3, dense.shape[0], generator=gen, dtype=torch.float64)
    # HF's eager attention takes its softmax in fp32 even in an fp64 model (Gemma-2): the two
    # differentiation orders then agree to fp32's rounding of the attention weights only.
    tol = 1e-10 if gemma.attention == "sdpa" else 1e-6
    jv, jtu = op.jvp(v), op.vjp(u)
    assert (jv - v @ dense.T).abs().max() < tol * dense.abs().max() * v.abs().max() * gemma.d_model
    assert (jtu - u @ dense).abs().max() < tol * dense.abs().max() * u.abs().max() * dense.shape[0]
    plain = hidden_plain(gemma.model, ids, mask, source, target_layer=target, theta=theta0,
                         site="resid").reshape(-1)
    assert torch.allclose(f(theta0), plain, rtol=0, atol=1e-10 * plain.abs().max())


def test_caa_at_the_residual_site_reads_what_a_hook_on_the_block_output_reads(gemma, ab_items):
    answers, _ = answer_tokens_for(gemma.tokenizer, ab_items)
    seqs = [a.positive_ids for a in answers]
    at = [a.position for a in answers]
    acts = activations(gemma.model, seqs, at, 2, capture="resid", pad_id=gemma.tokenizer.pad_token_id,
                       batch_size=2)
    for row, (seq, position) in enumerate(zip(seqs, at)):
        with reading_site(gemma.model, 2, "resid") as seen:
            gemma.model(torch.tensor([seq]), use_cache=False)
        assert (acts[row] - seen[-1][0, position]).abs().max() < 1e-10


@pytest.mark.parametrize("kind", KINDS)
def test_every_method_eval_and_report_run_end_to_end_through_the_runners(kind, smol_tokenizer, tmp_path):
    """What `make caa pi pi_caa melbo eval report MODEL=<folder>` runs, at tiny sizes."""
    folder = save_tiny(kind, smol_tokenizer, tmp_path / f"tiny-{kind}", layers=6)
    store = tmp_path / "store.h5"
    common = ["--model", str(folder), "--store", str(store)]
    jacobian = ["--layer", "2", "--target", "4", "--k", "2", "--iters", "2", "--n-prompts", "1"]
    steps = [("steerlab.cli.caa", "--layers", "2", "--n-train", "4"),
             ("steerlab.cli.pi", *jacobian),
             ("steerlab.cli.pi", *jacobian, "--at", "caa"),
             ("steerlab.cli.melbo", "--layer", "2", "--target", "4", "--k", "2", "--steps", "2",
              "--n-prompts", "1"),
             ("steerlab.cli.eval", "--n-eval", "3", "--n-random", "1", "--scales", "0.002 0.005",
              "--n-neutral", "2", "--gen-tokens", "4", "--layer", "2"),
             ("steerlab.cli.report",)]
    for module, *args in steps:
        done = run_runner(module, *common, *args)
        assert done.returncode == 0, (module, done.stderr)
        if module == "steerlab.cli.caa":
            assert "site: θ goes to decoder block S's output at S = 2 (SITE=auto" in done.stderr
    assert "Summary: chosen on validation" in done.stdout
    with h5py.File(store, "r") as h5:
        root = h5[f"{store_key(str(folder))}/survival-instinct"]
        assert set(root["vectors"]) == {"caa", "pi", "pi_caa", "melbo"}
        caa = root["vectors/caa/L2"]
        assert caa.attrs["site"] == "resid" and caa.attrs["capture"] == "resid"
        assert json.loads(caa.attrs["settings"])["site"] == "auto"
        assert root["evals/test/caa/L2"].attrs["site"] == "resid"
        assert np.isfinite(root["evals/test/melbo/L2-T4/logit_diff"][()]).all()
