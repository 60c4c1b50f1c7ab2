"""Speed of the Jacobian engine on a random-weight model of Qwen3-0.6B's width.

A 4-layer segment (layers 1..4, S=0, T=4) over 2 prompts of 64 tokens, in fp32 by default: what
DTYPE=auto runs on a CPU. BENCH_DTYPE=bf16 runs it in bf16 (on the 2-core dev CPU bf16 matmuls
are ~7x slower than fp32, and the backward's bf16 matmuls slower still, so expect far worse
ratios there). The JVP mode is the runner's default. The floor is the segment's forward pass: one
JᵀJV step for k vectors needs about 2k of them. The plain way is what a first script does: per
vector, a full model forward with a hook on down_proj and fresh autograd (double-backward trick
for J v, then Jᵀ(J v)). The vocabulary is cut to 8192 so the plain path's unembedding does not
dominate it.
"""
from __future__ import annotations

import os

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from bench.conftest import smoke
from bench.flops import jtjv_flops
from steerlab.lm.jacobian import BatchJacobian, math_attention
from steerlab.lm.segment import run_prefix, segment
from steerlab.measure.reference import jtj_plain

RATIOS = {
    "jtjv_step_over_floor": ("test_jtjv_step_k8", "test_segment_forward", 1 / 16),
    "jtjv_speedup_vs_plain": ("test_jtjv_plain_k8", "test_jtjv_step_k8", 1.0),
}
S, T, PROMPTS, TOKENS = 0, 4, 2, smoke(64, 8)
# hidden, intermediate, heads, kv heads, head_dim, vocabulary; BENCH_SMOKE=1: a toy model
WIDTH, INNER, HEADS, KV_HEADS, HEAD_DIM, VOCAB = smoke((1024, 3072, 16, 8, 128, 8192),
                                                      (64, 192, 4, 2, 16, 512))
DTYPE_NAME = os.environ.get("BENCH_DTYPE", "fp32")
DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16}[DTYPE_NAME]
PEAK = f"test_matmul_peak[{DTYPE_NAME}]"  # bench/test_matmul_peak.py, in the same dtype
FLOP_RATIOS = {"jtjv_fraction_of_peak": ("test_jtjv_step_k8", PEAK),
               "segment_forward_fraction_of_peak": ("test_segment_forward", PEAK)}


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=INNER,
                         num_hidden_layers=T + 1, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                         head_dim=HEAD_DIM, attn_implementation="sdpa")
    model = Qwen3ForCausalLM(config).to(DTYPE).eval().requires_grad_(False)
    ids = torch.randint(0, config.vocab_size, (PROMPTS, TOKENS))
    mask = torch.ones_like(ids)
    prefix = run_prefix(model, ids, mask, S)
    op = BatchJacobian(model, prefix, T)  # the runner's JVP mode
    gen = torch.Generator().manual_seed(1)
    vectors = torch.randn(8, config.hidden_size, generator=gen)
    cotangents = torch.randn(8, op.out_dim, generator=gen)
    return model, ids, mask, prefix, op, vectors, cotangents


def test_segment_forward(benchmark, setup):
    model, _, _, prefix, _, vectors, _ = setup

    def forward():
        with torch.no_grad(), math_attention():
            return segment(model, prefix, vectors[0], T)

    benchmark.extra_info.update(dtype=str(DTYPE),
                                flop=jtjv_flops(model.config, [TOKENS] * PROMPTS, T - S, 1) // 2)
    benchmark.pedantic(forward, rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("k", [1, 8])
def test_jvp(benchmark, setup, k):
    op, vectors = setup[4], setup[5]
    benchmark.pedantic(op.jvp, args=(vectors[:k],), rounds=2, warmup_rounds=1)


@pytest.mark.parametrize("k", [1, 8])
def test_vjp(benchmark, setup, k):
    op, cotangents = setup[4], setup[6]
    benchmark.pedantic(op.vjp, args=(cotangents[:k],), rounds=2, warmup_rounds=1)


def test_jtjv_step_k8(benchmark, setup):
    model, op, vectors = setup[0], setup[4], setup[5]
    benchmark.extra_info["flop"] = jtjv_flops(model.config, [TOKENS] * PROMPTS, T - S, len(vectors))
    benchmark.pedantic(op.jtj, args=(vectors,), rounds=2, warmup_rounds=1)


def test_jtjv_plain_k8(benchmark, setup):
    model, ids, mask, _, op, vectors, _ = setup
    fast = op.jtj(vectors[:2]).double()
    plain = jtj_plain(model, ids, mask, S, T, vectors[:2]).double()
    assert (fast - plain).norm() / plain.norm() < 5e-2  # the same quantity (bf16 noise allowed)
    benchmark.pedantic(jtj_plain, args=(model, ids, mask, S, T, vectors), rounds=1, warmup_rounds=0)
