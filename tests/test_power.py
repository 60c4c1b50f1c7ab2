"""Power iteration against the exact SVD of the dense Jacobian, on tiny models with a planted
spectral gap (an MLP in the segment that reads θ through 3 amplified directions only)."""
from __future__ import annotations

import copy
import math

import h5py
import numpy as np
import pytest
import torch
from torch.func import jacfwd

from steerlab.lm.jacobian import math_attention, prompt_jacobian
from steerlab.lm.segment import batched_prefixes, run_prefix, segment
from steerlab.lm.site import decoder_layers
from steerlab.methods.pi import drift_from_zero, top_singular
from steerlab.methods.power import power_iteration
from steerlab.questions.prompts import pad_right
from tests.helpers import tiny_model

S, T, K = 0, 2, 3
PROMPTS = [(5, 9, 14, 21, 30, 41, 52), (7, 11, 18, 25, 33, 40, 48, 56, 61)]


pytestmark = pytest.mark.usefixtures("one_thread")


def plant_gap(lm, strengths=(8.0, 6.0, 4.0)):
    """gate_proj and up_proj of layer S+1 := A diag(strengths) Bᵀ with one shared B [d, 3]: that
    MLP sees θ only through 3 directions, amplified, so J's top 3 singular values stand ~2.5x
    above the rest (which come from the residual stream's identity path and attention)."""
    gen = torch.Generator().manual_seed(7)
    mlp = decoder_layers(lm.model)[S + 1].mlp
    inner, d = mlp.up_proj.weight.shape
    b, _ = torch.linalg.qr(torch.randn(d, len(strengths), generator=gen, dtype=torch.float64))
    for proj in (mlp.up_proj, mlp.gate_proj):
        a, _ = torch.linalg.qr(torch.randn(inner, len(strengths), generator=gen, dtype=torch.float64))
        weight = a @ torch.diag(torch.tensor(strengths, dtype=torch.float64)) @ b.T
        proj.weight.copy_(weight.to(proj.weight.dtype))
    return lm


@pytest.fixture(scope="module")
def gap_model(smol_tokenizer):
    return plant_gap(tiny_model("llama", smol_tokenizer, layers=3))


def dense_svd(lm, theta0=None, prompts=PROMPTS):
    """Exact SVD of the dense fp64 Jacobian at θ₀ (default 0), computed without the operator
    under test."""
    model = lm.model if lm.model.dtype == torch.float64 else copy.deepcopy(lm.model).double()
    ids, mask = pad_right(list(prompts), lm.tokenizer.pad_token_id)
    prefix = run_prefix(model, ids, mask, S)

    def f(theta):
        return segment(model, prefix, theta, T)[mask.bool()].reshape(-1)

    with math_attention():
        at = torch.zeros(lm.d_model, dtype=torch.float64) if theta0 is None else theta0.double()
        dense = jacfwd(f)(at)
    _, sigmas, vh = torch.linalg.svd(dense, full_matrices=False)
    return sigmas, vh


def largest_angle_degrees(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest principal angle between the row spans of a and b (orthonormal rows)."""
    cosines = torch.linalg.svdvals(a.double() @ b.double().T)
    return math.degrees(math.acos(min(1.0, float(cosines.min()))))


def test_planted_gap_is_there(gap_model):
    sigmas, _ = dense_svd(gap_model)
    assert sigmas[K - 1] > 2 * sigmas[K]


def test_power_iteration_matches_dense_svd_in_fp64(gap_model):
    sigmas, vh = dense_svd(gap_model)
    op = prompt_jacobian(gap_model.model, [PROMPTS], gap_model.tokenizer.pad_token_id, S, T)
    result = power_iteration(op, K, iters=40, oversample=8, tol=1e-11, seed=0)
    assert result.converged and result.steps < 40
    assert torch.allclose(result.sigmas, sigmas[:K], rtol=1e-6, atol=0)
    assert largest_angle_degrees(result.vectors, vh[:K]) < 0.01
    for i in range(K):  # each vector, not only the span, up to sign
        assert abs(float(result.vectors[i] @ vh[i])) > 1 - 1e-8
    assert torch.allclose(result.vectors.norm(dim=1), torch.ones(K, dtype=torch.float64))
    assert result.trace.shape == (result.steps, K)
    assert result.trace[-1].max() < 1e-6 < result.trace[0].max()


def test_top_singular_is_power_iteration_on_the_prompts_jacobian_with_its_rows_named(gap_model):
    """methods.pi.top_singular over prefixes made one prompt per batch (shortest first, as
    length_batches sorts them): the same σ and vectors as power_iteration on the Jacobian of the
    prompts in one batch, and positions that name each prompt's real tokens in batch order; its
    drift from its own J(0) is none."""
    pad = gap_model.tokenizer.pad_token_id
    pairs = list(batched_prefixes(gap_model.model, PROMPTS, S, pad, 1))
    batches, prefixes = [b for b, _ in pairs], [prefix for _, prefix in pairs]
    found = top_singular(gap_model.model, prefixes, batches, T, K, iters=40, oversample=8, tol=1e-11)
    plain = power_iteration(prompt_jacobian(gap_model.model, [PROMPTS], pad, S, T), K, iters=40, oversample=8,
                            tol=1e-11, seed=0)
    assert torch.allclose(found.result.sigmas, plain.sigmas, rtol=1e-6, atol=0)
    assert largest_angle_degrees(found.result.vectors, plain.vectors) < 0.01
    expected = [(i, t) for batch in batches for i in batch for t in range(len(PROMPTS[i]))]
    assert found.positions.tolist() == [list(pair) for pair in expected] and found.theta0_norm == 0.0
    assert found.arrays()["sigmas"].dtype == np.float32 and found.attrs()["steps"] == found.result.steps
    drift = drift_from_zero(found, found.jacobian, found.result.vectors)
    assert drift.principal_angles.max() < 1e-3 and drift.jv_change.max() < 1e-12


def test_power_iteration_stops_at_step_budget_when_not_converged(gap_model):
    op = prompt_jacobian(gap_model.model, [PROMPTS], gap_model.tokenizer.pad_token_id, S, T)
    result = power_iteration(op, K, iters=2, oversample=0, tol=1e-12, seed=1)
    assert result.steps == 2 and not result.converged
    assert result.trace.shape == (2, K)


def test_power_iteration_in_bf16_within_one_percent_and_one_degree(smol_tokenizer):
    lm = plant_gap(tiny_model("llama", smol_tokenizer, dtype=torch.bfloat16, layers=3))
    sigmas, vh = dense_svd(lm)  # of the same bf16 weights, in fp64 arithmetic
    op = prompt_jacobian(lm.model, [PROMPTS], lm.tokenizer.pad_token_id, S, T)
    result = power_iteration(op, K, iters=20, oversample=8, tol=1e-3, seed=0)
    assert torch.allclose(result.sigmas, sigmas[:K], rtol=1e-2, atol=0)
    assert largest_angle_degrees(result.vectors, vh[:K]) < 1.0


def test_pi_at_zero_caa_vector_equals_pi_at_zero(tmp_path, smol_tokenizer, monkeypatch):
    """End to end through steerlab.cli.pi: --at caa with a stored CAA vector of zeros writes the same
    vectors and sigmas as --at zero, under method names pi_caa and pi."""
    from steerlab.cli import pi as runner

    folder = tmp_path / "tiny"
    lm = plant_gap(tiny_model("llama", smol_tokenizer, dtype=torch.float32, layers=3))
    lm.model.save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    store = tmp_path / "store.h5"
    common = ["--model", str(folder), "--store", str(store), "--dtype", "fp32", "--layer", "0",
              "--target", "2", "--k", "2", "--iters", "6", "--n-prompts", "2", "--tol", "1e-6"]

    def run(*extra):
        monkeypatch.setattr("sys.argv", ["pi", *common, *extra])
        runner.run()

    with pytest.raises(ValueError, match="no caa vectors at .* run `make caa LAYERS=0`"):
        run("--at", "caa")
    with h5py.File(store, "a") as h5:
        h5.create_dataset("tiny/survival-instinct/vectors/caa/L0-answer/vectors",
                          data=np.zeros((1, lm.d_model), np.float32))
        h5["tiny/survival-instinct/vectors/caa/L0-answer"].attrs.update(source_layer=0, sign_free=0)
    run("--at", "zero")
    run("--at", "caa")
    with h5py.File(store, "r") as h5:
        zero, caa = (h5["tiny/survival-instinct/vectors/pi/L0-T2"],
                     h5["tiny/survival-instinct/vectors/pi_caa/L0-T2"])
        assert caa.attrs["theta0_source"].startswith("/tiny/survival-instinct/vectors/caa/L0-answer")
        assert zero.attrs["sign_free"] == 1 and zero.attrs["target_layer"] == 2
        assert np.allclose(zero["sigmas"][:], caa["sigmas"][:], rtol=1e-6)
        assert np.allclose(zero["vectors"][:], caa["vectors"][:], atol=1e-6)
        assert zero["vectors"].shape == (2, lm.d_model) and zero["prompt_ids"].shape == (2,)



def test_power_iteration_along_the_caa_path_matches_the_dense_svd_at_each_point(
        tmp_path, smol_tokenizer, monkeypatch):
    """pi_caa --at-scales: at s = 0 the group is pi's; at s = 12 (far enough along a direction
    that the planted MLP reads for J to change) it is the top of the dense SVD at θ₀ = 12 · unit(v),
    which differs from J(0)'s; the stored comparison with J(0) says by how much."""
    from steerlab.cli import pi as runner
    from steerlab.store import read_vector_group

    folder = tmp_path / "tiny"
    lm = plant_gap(tiny_model("llama", smol_tokenizer, dtype=torch.float64, layers=3))
    lm.model.save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    store = tmp_path / "store.h5"
    common = ["--model", str(folder), "--store", str(store), "--dtype", "fp64", "--layer", "0",
              "--target", "2", "--k", "2", "--iters", "40", "--n-prompts", "2", "--tol", "1e-9",
              "--batch-size", "2", "--scale-unit", "abs"]
    mlp = decoder_layers(lm.model)[S + 1].mlp  # the planted directions: a CAA vector among them
    direction = torch.linalg.svd(mlp.up_proj.weight, full_matrices=False)[2][0]
    with h5py.File(store, "a") as h5:
        h5.create_dataset("tiny/survival-instinct/vectors/caa/L0-answer/vectors",
                          data=direction[None].numpy().astype(np.float32))
        h5["tiny/survival-instinct/vectors/caa/L0-answer"].attrs.update(source_layer=0, sign_free=0)

    def run(*extra):
        monkeypatch.setattr("sys.argv", ["pi", *common, *extra])
        runner.run()

    with pytest.raises(ValueError, match="no pi vectors at .* run `make pi`"):
        run("--at", "caa", "--at-scales", "0 12")
    run("--at", "zero")
    with pytest.raises(ValueError,
                       match="pi/L0-T2 in .* was computed with another k, n_prompts: run `make pi`"):
        run("--at", "caa", "--at-scales", "0 12", "--k", "3", "--n-prompts", "1")  # not the J(0) stored
    run("--at", "caa", "--at-scales", "0 12")
    zero = read_vector_group(store, "tiny", "survival-instinct", "pi", "L0-T2")
    at0 = read_vector_group(store, "tiny", "survival-instinct", "pi_caa", "L0-T2-at+0")
    at12 = read_vector_group(store, "tiny", "survival-instinct", "pi_caa", "L0-T2-at+12")
    assert np.allclose(at0.arrays["sigmas"], zero.arrays["sigmas"], rtol=1e-6)
    assert largest_angle_degrees(torch.from_numpy(at0.vectors), torch.from_numpy(zero.vectors)) < 0.01
    assert at0.arrays["principal_angles"].max() < 0.01 and at0.arrays["jv_change"].max() < 1e-6

    from steerlab.questions.data import load_items
    from steerlab.questions.prompts import answer_tokens
    prompts = [answer_tokens(smol_tokenizer, item).prefix_ids
               for item in load_items("data/survival-instinct.jsonl", "train")[:2]]
    theta0 = 12 * direction.double() / direction.double().norm()
    sigmas, vh = dense_svd(lm, theta0.float().double(), prompts)  # θ₀ as the store holds it (fp32)
    assert np.allclose(at12.arrays["sigmas"], sigmas[:2].numpy(), rtol=1e-5)
    assert largest_angle_degrees(torch.from_numpy(at12.vectors).double(), vh[:2]) < 0.1
    assert at12.attrs["at_scale"] == 12.0 and at12.attrs["theta0_norm"] == pytest.approx(12.0)
    # J moved along the path: its spectrum and its action on J(0)'s top vectors changed
    assert not np.allclose(at12.arrays["sigmas"], zero.arrays["sigmas"], rtol=1e-2)
    assert at12.arrays["jv_change"].max() > 1e-2
