"""The Jacobian operator J = ∂h_T/∂θ against dense Jacobians, finite differences of the plain hook
path, its own adjoint, one-by-one evaluation and padding."""
from __future__ import annotations

import pytest
import torch
from torch.func import jacfwd, jacrev

from steerlab.lm.jacobian import BatchJacobian, jacobian_at, math_attention, prompt_jacobian, read_positions
from steerlab.lm.segment import run_prefix, segment
from steerlab.measure.reference import hidden_plain
from steerlab.questions.prompts import pad_right

S, T = 0, 3  # tiny models have 4 layers: T is the last one, where HF's hidden_states differ
SHORT = (5, 9, 14, 21, 30, 41, 52)
LONG = (7, 11, 18, 25, 33, 40, 48, 56, 61, 70, 77)


def hook_path(lm, sequences, theta, target=T):
    """The plain path: full HF forward, θ added by a hook on down_proj, h_T read by a hook on
    layers[T] (not hidden_states, which carry the final norm at the last layer). [n_real, d]."""
    ids, mask = pad_right(sequences, lm.tokenizer.pad_token_id)
    return hidden_plain(lm.model, ids, mask, S, target_layer=target, theta=theta).reshape(-1)


def dense_jacobian(lm, sequences, theta0, mode):
    ids, mask = pad_right(sequences, lm.tokenizer.pad_token_id)
    prefix = run_prefix(lm.model, ids, mask, S)
    rows, cols = read_positions(mask)

    def f(theta):
        return segment(lm.model, prefix, theta, T)[rows, cols].reshape(-1)

    with math_attention():
        return (jacfwd if mode == "fwd" else jacrev)(f)(theta0)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def theta0(tiny_llama):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(tiny_llama.d_model, generator=gen, dtype=torch.float64)


@pytest.fixture(scope="module")
def jac(tiny_llama, theta0):
    return prompt_jacobian(tiny_llama.model, [[SHORT, LONG]], tiny_llama.tokenizer.pad_token_id,
                           S, T, theta0=theta0)


def test_segment_equals_full_forward_with_down_proj_hook_at_last_layer(tiny_llama, theta0):
    ids, mask = pad_right([SHORT, LONG], tiny_llama.tokenizer.pad_token_id)
    prefix = run_prefix(tiny_llama.model, ids, mask, S)
    fast = segment(tiny_llama.model, prefix, theta0, T)[mask.bool()].reshape(-1)
    plain = hook_path(tiny_llama, [SHORT, LONG], theta0)
    assert torch.allclose(fast, plain, rtol=0, atol=1e-12 * plain.abs().max())


@pytest.mark.parametrize("mode", ["fwd", "rev"])
def test_jvp_and_vjp_equal_dense_jacobian(tiny_llama, jac, theta0, mode):
    dense = dense_jacobian(tiny_llama, [SHORT, LONG], theta0, mode)
    gen = torch.Generator().manual_seed(2)
    v = torch.randn(3, tiny_llama.d_model, generator=gen, dtype=torch.float64)
    u = torch.randn(3, dense.shape[0], generator=gen, dtype=torch.float64)
    assert dense.shape == (jac.out_dim, tiny_llama.d_model)
    assert torch.allclose(jac.jvp(v), v @ dense.T, rtol=1e-10, atol=1e-10)
    assert torch.allclose(jac.vjp(u), u @ dense, rtol=1e-10, atol=1e-10)
    assert torch.allclose(jac.jtj(v), v @ dense.T @ dense, rtol=1e-10, atol=1e-10)


def test_jvp_equals_finite_differences_of_hook_path(tiny_llama, jac, theta0):
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(tiny_llama.d_model, generator=gen, dtype=torch.float64)
    eps = 1e-5
    diff = (hook_path(tiny_llama, [SHORT, LONG], theta0 + eps * v)
            - hook_path(tiny_llama, [SHORT, LONG], theta0 - eps * v)) / (2 * eps)
    jv = jac.jvp(v[None])[0]
    assert (jv - diff).norm() / diff.norm() < 1e-8


def test_linearize_jvp_equals_transpose_jvp(tiny_llama, jac, theta0):
    traced = prompt_jacobian(tiny_llama.model, [[SHORT, LONG]], tiny_llama.tokenizer.pad_token_id,
                             S, T, theta0=theta0, jvp="linearize")
    v = torch.randn(3, tiny_llama.d_model, dtype=torch.float64)
    assert torch.allclose(traced.jvp(v), jac.jvp(v), rtol=1e-12, atol=1e-12)
    assert torch.allclose(traced.jtj(v), jac.jtj(v), rtol=1e-12, atol=1e-12)


def test_adjoint_identity_u_jv_equals_jtu_v(tiny_llama, jac):
    gen = torch.Generator().manual_seed(4)
    v = torch.randn(5, tiny_llama.d_model, generator=gen, dtype=torch.float64)
    u = torch.randn(5, jac.out_dim, generator=gen, dtype=torch.float64)
    left = (u * jac.jvp(v)).sum(1)
    right = (jac.vjp(u) * v).sum(1)
    assert torch.allclose(left, right, rtol=1e-12, atol=0)


def test_batched_vectors_equal_one_by_one(tiny_llama, jac):
    gen = torch.Generator().manual_seed(5)
    v = torch.randn(4, tiny_llama.d_model, generator=gen, dtype=torch.float64)
    u = torch.randn(4, jac.out_dim, generator=gen, dtype=torch.float64)
    assert torch.allclose(jac.jvp(v), torch.cat([jac.jvp(v[i:i + 1]) for i in range(4)]),
                          rtol=1e-12, atol=1e-12)
    assert torch.allclose(jac.vjp(u), torch.cat([jac.vjp(u[i:i + 1]) for i in range(4)]),
                          rtol=1e-12, atol=1e-12)


def test_padding_does_not_change_jacobian_of_short_prompt(tiny_llama, theta0):
    pad = tiny_llama.tokenizer.pad_token_id
    alone = prompt_jacobian(tiny_llama.model, [[SHORT]], pad, S, T, theta0=theta0)
    batched = prompt_jacobian(tiny_llama.model, [[LONG, SHORT]], pad, S, T, theta0=theta0)
    assert batched.out_dim == alone.out_dim + len(LONG) * tiny_llama.d_model  # pads not read
    v = torch.randn(2, tiny_llama.d_model, dtype=torch.float64)
    rows = batched.jvp(v)[:, len(LONG) * tiny_llama.d_model:]
    assert torch.allclose(rows, alone.jvp(v), rtol=1e-12, atol=1e-12)


def test_batches_stack_rows_and_sum_jtj(tiny_llama, jac, theta0):
    pad = tiny_llama.tokenizer.pad_token_id
    split = prompt_jacobian(tiny_llama.model, [[SHORT], [LONG]], pad, S, T, theta0=theta0)
    v = torch.randn(2, tiny_llama.d_model, dtype=torch.float64)
    assert torch.allclose(split.jvp(v), jac.jvp(v), rtol=1e-12, atol=1e-12)
    assert torch.allclose(split.jtj(v), jac.jtj(v), rtol=1e-12, atol=1e-12)


def test_last_n_tokens_reads_the_last_real_positions_only(tiny_llama, theta0):
    ids, mask = pad_right([SHORT, LONG], tiny_llama.tokenizer.pad_token_id)
    rows, cols = read_positions(mask, "last:3")
    assert rows.tolist() == [0, 0, 0, 1, 1, 1]
    assert cols.tolist() == [4, 5, 6, 8, 9, 10]
    prefix = run_prefix(tiny_llama.model, ids, mask, S)
    last = BatchJacobian(tiny_llama.model, prefix, T, "last:3", theta0)
    full = BatchJacobian(tiny_llama.model, prefix, T, "all", theta0)
    v = torch.randn(1, tiny_llama.d_model, dtype=torch.float64)
    d = tiny_llama.d_model
    whole = full.jvp(v).reshape(-1, d)
    picked = torch.cat([whole[4:7], whole[len(SHORT) + 8:len(SHORT) + 11]])
    assert torch.allclose(last.jvp(v).reshape(-1, d), picked, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="last:N"):
        read_positions(mask, "last:0")


def test_qwen3_jvp_equals_dense_jacobian(tiny_qwen3):
    seqs = [SHORT, LONG[:9]]
    theta0 = torch.zeros(tiny_qwen3.d_model, dtype=torch.float64)
    ids, mask = pad_right(seqs, tiny_qwen3.tokenizer.pad_token_id)
    prefix = run_prefix(tiny_qwen3.model, ids, mask, 1)
    op = BatchJacobian(tiny_qwen3.model, prefix, 2, theta0=theta0)

    def f(theta):
        return segment(tiny_qwen3.model, prefix, theta, 2)[mask.bool()].reshape(-1)

    with math_attention():
        dense = jacrev(f)(theta0)
    v = torch.randn(2, tiny_qwen3.d_model, dtype=torch.float64)
    assert torch.allclose(op.jvp(v), v @ dense.T, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_chunks_of_vectors_give_what_all_vectors_at_once_give(tiny_llama, jac, theta0, chunk):
    ids, mask = pad_right([SHORT, LONG], tiny_llama.tokenizer.pad_token_id)
    prefix = run_prefix(tiny_llama.model, ids, mask, S)
    chunked = jacobian_at(tiny_llama.model, [prefix], T, theta0=theta0, chunk=chunk)
    v = torch.randn(5, tiny_llama.d_model, dtype=torch.float64)
    u = torch.randn(5, jac.out_dim, dtype=torch.float64)
    assert torch.allclose(chunked.jvp(v), jac.jvp(v), rtol=1e-12, atol=1e-12)
    assert torch.allclose(chunked.vjp(u), jac.vjp(u), rtol=1e-12, atol=1e-12)
    assert torch.allclose(chunked.jtj(v), jac.jtj(v), rtol=1e-12, atol=1e-12)
