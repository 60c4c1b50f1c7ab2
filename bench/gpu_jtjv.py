"""Achieved TFLOP/s of one JᵀJV step of the Jacobian engine on random-weight bf16 models of
Qwen3-0.6B's and Qwen3-14B's shapes (a few layers of each), against a bf16 peak you give.

    python bench/gpu_jtjv.py --peak-tflops 989          # H100 SXM dense bf16
    python bench/gpu_jtjv.py --device cpu --tiny        # smoke test of the script itself

Only torch and transformers (plus this repo's engine). FLOPs counted are nominal: a JᵀJV step for
k vectors is charged 2k segment forwards (one JVP and one VJP per vector), a forward being
2 × (linear-layer parameters) per token plus 4 × L × heads × head_dim per token for attention
(QKᵀ and PV, no causal discount).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from steerlab.lm.jacobian import JVP_MODES, BatchJacobian, math_attention
from steerlab.lm.segment import run_prefix, segment

SHAPES = {  # hidden, intermediate, heads, kv heads, head_dim
    "qwen3-0.6b": (1024, 3072, 16, 8, 128),
    "qwen3-14b": (5120, 17408, 40, 8, 128),
    "tiny": (64, 128, 4, 2, 16),
}


def forward_flops(shape: tuple, layers: int, batch: int, tokens: int) -> float:
    hidden, inner, heads, kv, head_dim = shape
    linear = hidden * head_dim * (heads + 2 * kv) + heads * head_dim * hidden + 3 * hidden * inner
    attention = 4 * tokens * heads * head_dim
    return layers * batch * tokens * (2 * linear + attention)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_it(fn, device: str, repeats: int) -> float:
    fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def measure(name: str, args) -> None:
    hidden, inner, heads, kv, head_dim = SHAPES[name]
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=args.vocab, hidden_size=hidden, intermediate_size=inner,
                         num_hidden_layers=args.layers + 1, num_attention_heads=heads,
                         num_key_value_heads=kv, head_dim=head_dim, attn_implementation="sdpa")
    with torch.device(args.device):
        model = Qwen3ForCausalLM(config)
    model = model.to(torch.bfloat16).eval().requires_grad_(False)
    ids = torch.randint(0, args.vocab, (args.batch, args.tokens), device=args.device)
    prefix = run_prefix(model, ids, torch.ones_like(ids), 0)
    target = args.layers
    op = BatchJacobian(model, prefix, target, jvp=args.jvp)
    vectors = torch.randn(args.k, hidden, device=args.device)

    def forward():
        with torch.no_grad(), math_attention():
            segment(model, prefix, vectors[0], target)

    t_forward = time_it(forward, args.device, args.repeats)
    t_step = time_it(lambda: op.jtj(vectors), args.device, args.repeats)
    flops = forward_flops(SHAPES[name], args.layers, args.batch, args.tokens)
    achieved = 2 * args.k * flops / t_step / 1e12
    line = (f"{name}: {args.layers}-layer segment, {args.batch}x{args.tokens} tokens, k={args.k}, "
            f"jvp={args.jvp}: forward {t_forward * 1e3:.1f} ms, JᵀJV step {t_step * 1e3:.1f} ms "
            f"(= {t_step / t_forward:.1f} forwards, floor {2 * args.k}), {achieved:.2f} TFLOP/s")
    if args.peak_tflops:
        line += f" = {100 * achieved / args.peak_tflops:.1f}% of {args.peak_tflops:g} peak"
    print(line, flush=True)
    if args.device.startswith("cuda"):
        print(f"  peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", flush=True)
        torch.cuda.reset_peak_memory_stats()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak of the device")
    p.add_argument("--models", default="qwen3-0.6b qwen3-14b", help="shapes to run, space-separated")
    p.add_argument("--layers", type=int, default=4, help="layers in the segment")
    p.add_argument("--batch", type=int, default=8, help="prompts")
    p.add_argument("--tokens", type=int, default=128, help="tokens per prompt")
    p.add_argument("--k", type=int, default=12, help="vectors per step (k + oversampling)")
    p.add_argument("--vocab", type=int, default=8192, help="vocabulary of the random model")
    p.add_argument("--jvp", choices=JVP_MODES, default="linearize")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tiny", action="store_true", help="smoke mode: tiny shape, 2 layers, 2x16 tokens")
    args = p.parse_args()
    names = args.models.split()
    if args.tiny:
        names, args.layers, args.batch, args.tokens, args.k, args.repeats = ["tiny"], 2, 2, 16, 4, 2
    for name in names:
        measure(name, args)


if __name__ == "__main__":
    main()
