"""Peak memory of one JᵀJV step, in a fresh process: python -m bench.memory_step K TOKENS [CHUNK].

The segment is bench/test_jacobian_speed.py's (a random model of Qwen3-0.6B's width, layers
S+1..T = 1..4, fp32) over one prompt of TOKENS tokens. Printed as JSON:

- ``linearisation_bytes``: what building the operator at θ₀ keeps (the forward's saved tensors);
- ``step_bytes``: the step's peak above what was held before it: the vmapped tangents and their
  intermediates, the part that grows with k (or with CHUNK, when the vectors go through in chunks).

On a CPU the peak is the process's peak resident set (VmHWM, reset through /proc/self/clear_refs
after glibc has returned freed memory with malloc_trim); on a GPU, ``max_memory_allocated``.
"""
from __future__ import annotations

import ctypes
import json
import sys

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from bench.conftest import smoke
from steerlab.lm.jacobian import BatchJacobian
from steerlab.lm.segment import run_prefix

S, T = 0, 4
# hidden, intermediate, heads, kv heads, head_dim; BENCH_SMOKE=1 (inherited from the benchmark): a toy model
WIDTH, INNER, HEADS, KV_HEADS, HEAD_DIM = smoke((1024, 3072, 16, 8, 128), (64, 192, 4, 2, 16))


def rss_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def settle() -> int:
    """Resident bytes now, after handing freed heap back, with the peak reset to it."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return rss_bytes("VmRSS")


def measure(k: int, tokens: int, chunk: int | None, device: str = "cpu") -> dict:
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=smoke(8192, 512), hidden_size=WIDTH, intermediate_size=INNER,
                         num_hidden_layers=T + 1, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                         head_dim=HEAD_DIM, attn_implementation="sdpa")
    model = Qwen3ForCausalLM(config).eval().requires_grad_(False).to(device)
    ids = torch.randint(0, config.vocab_size, (1, tokens), device=device)
    prefix = run_prefix(model, ids, torch.ones_like(ids), S)
    vectors = torch.randn(k, WIDTH, dtype=torch.float64)
    gpu = device.startswith("cuda")
    before = torch.cuda.memory_allocated() if gpu else settle()
    op = BatchJacobian(model, prefix, T, chunk=chunk)
    if gpu:
        torch.cuda.synchronize()
        held = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        held = settle()
    op.jtj(vectors)
    peak = torch.cuda.max_memory_allocated() if gpu else rss_bytes("VmHWM")
    return {"k": k, "tokens": tokens, "chunk": chunk, "layers": T - S, "width": WIDTH,
            "inner": INNER, "linearisation_bytes": held - before, "step_bytes": peak - held}


if __name__ == "__main__":
    torch.set_num_threads(1)
    k, tokens = int(sys.argv[1]), int(sys.argv[2])
    chunk = int(sys.argv[3]) if len(sys.argv) > 3 else None
    print(json.dumps(measure(k, tokens, chunk, sys.argv[4] if len(sys.argv) > 4 else "cpu")))
