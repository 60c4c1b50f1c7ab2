"""MELBO: k orthogonal steering vectors of norm R that most move the target layer (gradient ascent).

Prompts are the first N train questions, formatted as eval feeds them (chat template up to the
answer letter). Layers 0..S run once; every step runs layers S+1..T for all k vectors together.
Written to /<model>/vectors/melbo/L<S>-T<T>: vectors [k, d] (rows of norm R), the objective
trace [steps, k] and the prompt ids, with every setting needed to recompute them.
"""
import time

import numpy as np
import torch

from engine.data import load_items
from engine.melbo import AMSGRAD, BETAS, MODES, WEIGHT_DECAY, melbo
from engine.model import resolve_dtype, store_key
from engine.segment import batched_prefixes
from engine.store import (file_checksum, is_current, model_group, now, replace_group, run_attrs,
                          writing)
from runners.cli import load_checked, main_guard, parser, say, step

DEFAULT_LAYER = 7
DEFAULT_TARGET = 20
DEFAULT_K = 4
DEFAULT_RADIUS = 16.0
DEFAULT_P = 2.0
DEFAULT_Q = 1.0
DEFAULT_STEPS = 12
DEFAULT_LR = 0.05
DEFAULT_N_PROMPTS = 2
# Every forward carries k copies of a prompt batch, so prompt batches are smaller than elsewhere;
# batching by length also keeps padding (computed, then masked out) low.
DEFAULT_BATCH_SIZE = 4
PROGRESS_EVERY = 5


def run() -> None:
    p = parser(__doc__)
    p.set_defaults(batch_size=DEFAULT_BATCH_SIZE)
    p.add_argument("--layer", type=int, default=DEFAULT_LAYER,
                   help="source layer S: θ is added to layers[S].mlp.down_proj")
    p.add_argument("--target", type=int, default=DEFAULT_TARGET,
                   help="target layer T: displacement of the residual output of layers[T]")
    p.add_argument("--k", type=int, default=DEFAULT_K, help="number of orthogonal vectors")
    p.add_argument("--radius", type=float, default=DEFAULT_RADIUS, help="norm R of every vector")
    p.add_argument("--p", type=float, default=DEFAULT_P,
                   help="exponent of each token's displacement norm (over the hidden dimension)")
    p.add_argument("--q", type=float, default=DEFAULT_Q, help="outer root of the objective")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="AdamW steps per vector")
    p.add_argument("--lr", type=float, default=DEFAULT_LR, help="AdamW learning rate")
    p.add_argument("--n-prompts", type=int, default=DEFAULT_N_PROMPTS,
                   help="first N train prompts the objective sums over")
    p.add_argument("--seed", type=int, default=0, help="seed of the random starting directions")
    p.add_argument("--mode", choices=MODES, default="batched",
                   help="batched: all k vectors step together; sequential: one after another "
                        "(the reference procedure)")
    args = p.parse_args()
    if args.target <= args.layer:
        raise ValueError(f"target layer {args.target} must be above source layer {args.layer}")
    if args.n_prompts <= 0:
        raise ValueError(f"--n-prompts must be positive, got {args.n_prompts}")

    items = load_items(args.data, "train")[: args.n_prompts]
    key = store_key(args.model)
    dtype = resolve_dtype(args.dtype, args.device)
    name = f"L{args.layer}-T{args.target}"
    group = f"{key}/vectors/melbo/{name}"
    settings = {"method": "melbo", "model": args.model, "dtype": dtype, "data": args.data,
                "data_checksum": file_checksum(args.data), "source_layer": args.layer,
                "target_layer": args.target, "k": args.k, "radius": args.radius, "p": args.p,
                "q": args.q, "steps": args.steps, "lr": args.lr, "betas": list(BETAS),
                "weight_decay": WEIGHT_DECAY, "amsgrad": AMSGRAD, "n_prompts": len(items),
                "mode": args.mode, "seed": args.seed}
    if not args.force and is_current(args.store, group, settings):
        say(f"{group} is up to date (FORCE=1 recomputes it)")
        return

    lm, answers, skipped = load_checked(args, dtype, items, [args.layer], args.target)

    started, t0 = now(), time.perf_counter()
    prefixes = [prefix for _, prefix in batched_prefixes(
        lm.model, [a.prefix_ids for a in answers], args.layer, lm.tokenizer.pad_token_id,
        args.batch_size)]
    resid_norm = float(torch.cat([prefix.residual_norms() for prefix in prefixes]).mean())

    def progress(first: int, t: int, values: torch.Tensor) -> None:
        if t % PROGRESS_EVERY == 0 or t == args.steps - 1:
            shown = " ".join(f"{v:.4g}" for v in values.tolist())
            which = f"vector {first}" if len(values) == 1 else f"vectors {first}..{first + len(values) - 1}"
            say(f"  step {t + 1}/{args.steps} ({time.perf_counter() - t0:.0f}s) {which}: {shown}")

    with step(f"MELBO ({args.mode}) k={args.k} R={args.radius:g} L{args.layer}→T{args.target} "
              f"over {len(answers)} prompts, {args.steps} steps"):
        result = melbo(lm.model, prefixes, args.target, args.k, args.radius, args.p, args.q,
                       args.steps, args.lr, args.seed, args.mode, progress)
    seconds = time.perf_counter() - t0
    if not torch.isfinite(result.vectors).all():
        raise ValueError("MELBO vectors are not finite; nothing written")
    with writing(args.store) as h5:
        parent = model_group(h5, lm).require_group("vectors/melbo")
        replace_group(parent, name, {
            "vectors": result.vectors.numpy().astype(np.float32),
            "trace": result.trace.numpy().astype(np.float32),
            "prompt_ids": np.array([a.item_id for a in answers]),
        }, run_attrs(settings, started, seconds, source_layer=args.layer,
                     target_layer=args.target, sign_free=0, radius=args.radius,
                     objective=result.objective.tolist(), resid_norm=resid_norm, skipped=skipped))
    say(f"  {group}: final objective " + " ".join(f"{v:.4g}" for v in result.objective.tolist())
        + " (first step " + " ".join(f"{v:.4g}" for v in result.trace[0].tolist())
        + f"), mean ‖h_S‖ = {resid_norm:.2f}")


if __name__ == "__main__":
    main_guard(run)
