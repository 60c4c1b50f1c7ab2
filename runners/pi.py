"""PI: top-k right singular vectors of J = ∂h_T/∂θ by block power iteration, from the train split.

θ is added at layers[S].mlp.down_proj; h_T is the residual output of layers[T] at the prompts' real
positions (all, or the last N of each). The prompts are the first N train questions formatted as in
eval, up to the answer letter. --at zero linearises at θ₀ = 0 (method `pi`); --at caa at θ₀ = the
stored raw CAA vector of the same layer (method `pi_caa`). Written to
/<model>/vectors/<method>/L<S>-T<T>: unit vectors (sign-free), σ = ‖J v‖, the residual trace.
"""
import time

import numpy as np
import torch

from engine.data import load_items
from engine.errors import UserError
from engine.jacobian import parse_tokens, prompt_jacobian
from engine.power import power_iteration
from engine.prompts import length_batches
from engine.store import VectorGroup, caa_run, read_vector_group, segment_run, store_key, vectors_path
from runners import defaults
from runners.cli import (
    Job,
    above_source,
    compute_groups,
    count_or_all,
    main_guard,
    parse,
    parser,
    positive_float,
    positive_int,
    say,
    settings_of,
    step,
)


def validate(args) -> None:
    parse_tokens(args.tokens)
    above_source(args.layer, args.target)
    if args.oversample < 0:
        raise UserError(f"OVERSAMPLE must be 0 or more, got {args.oversample}")


def run() -> None:
    p = parser(__doc__)
    p.add_argument("--layer", type=int, default=defaults.LAYER, help="source layer S")
    p.add_argument("--target", type=int, default=defaults.TARGET, help="target layer T > S")
    p.add_argument("--k", type=positive_int, default=defaults.K, help="number of singular vectors")
    p.add_argument("--iters", type=positive_int, default=defaults.ITERS,
                   help="power-iteration step budget")
    p.add_argument("--oversample", type=int, default=defaults.OVERSAMPLE,
                   help="extra columns in the random start block")
    p.add_argument("--tol", type=positive_float, default=defaults.TOL,
                   help="stop when the top-k subspace moves less than this (sine of largest angle)")
    p.add_argument("--n-prompts", type=count_or_all, default=defaults.N_PROMPTS, metavar="N|all",
                   help="train prompts J is taken over")
    p.add_argument("--tokens", default=defaults.TOKENS, help="positions: all, or last:N per prompt")
    p.add_argument("--seed", type=int, default=defaults.SEED, help="seed of the random start block")
    p.add_argument("--at", choices=["zero", "caa"], default="zero",
                   help="linearisation point θ₀: 0, or the stored CAA vector of --layer")
    # Small batches: the vmapped JVP/VJP of a big batch thrash the cache (8 prompts as one batch
    # took 55 s a step on the dev CPU, as four batches of 2 took 20 s; same σ).
    p.set_defaults(batch_size=2)
    args = parse(p, validate)

    items = load_items(args.data, "train")[: args.n_prompts]
    method = "pi" if args.at == "zero" else "pi_caa"
    theta0, theta0_source = None, "zero"
    if args.at == "caa":
        key, run = store_key(args.model), caa_run(args.layer)
        caa = read_vector_group(args.store, key, "caa", run, make=f"make caa LAYERS={args.layer}")
        theta0 = torch.from_numpy(caa.vectors[0].astype(np.float64))
        theta0_source = (f"/{vectors_path(key, 'caa', run)} ({caa.attrs.get('code_version')} "
                         f"started {caa.attrs.get('started')})")
    job = Job(segment_run(args.layer, args.target), args.layer,
              settings_of(args, method=method, theta0_source=theta0_source))

    def compute(lm, answers, job: Job) -> VectorGroup:
        prompts = [a.prefix_ids for a in answers]
        groups = length_batches([len(s) for s in prompts], args.batch_size)
        batches = [[prompts[i] for i in group] for group in groups]
        t0 = time.perf_counter()
        with step(f"J = ∂h_{args.target}/∂θ_{args.layer} over {len(prompts)} prompts "
                  f"({sum(map(len, prompts))} tokens, positions {args.tokens}) at θ₀ = {theta0_source}"):
            op = prompt_jacobian(lm.model, batches, lm.tokenizer.pad_token_id, args.layer,
                                 args.target, args.tokens, theta0)

        def progress(index: int, residuals: torch.Tensor, change: float) -> None:
            say(f"  step {index:3d}/{args.iters}: subspace change {change:.2e}, residuals "
                + " ".join(f"{r:.1e}" for r in residuals.tolist())
                + f"  ({time.perf_counter() - t0:.0f}s)")

        with step(f"power iteration: k={args.k}, oversample={args.oversample}, tol={args.tol}"):
            result = power_iteration(op, args.k, args.iters, args.oversample, args.tol, args.seed,
                                     progress=progress)
        rows, cols = [], []
        for group, part in zip(groups, op.parts):  # (prompt index, token index) of every row of J
            rows.extend(group[r] for r in part.rows.tolist())
            cols.extend(part.cols.tolist())
        say("  σ = " + " ".join(f"{s:.3f}" for s in result.sigmas.tolist())
            + f"; {result.steps} steps, {'converged' if result.converged else 'NOT converged'}"
            f" (last subspace change {float(result.subspace_change[-1]):.1e})")
        return VectorGroup(
            method, job.run, result.vectors.numpy().astype(np.float32), args.layer, sign_free=True,
            target_layer=args.target,
            arrays={"sigmas": result.sigmas.numpy().astype(np.float32),
                    "trace": result.trace.numpy().astype(np.float32),
                    "subspace_change": result.subspace_change.numpy().astype(np.float32),
                    "prompt_ids": np.array([a.item_id for a in answers]),
                    "positions": np.array([rows, cols], dtype=np.int32).T},
            attrs={"theta0_source": theta0_source,
                   "theta0_norm": 0.0 if theta0 is None else float(theta0.norm()),
                   "steps": result.steps, "converged": int(result.converged)})

    compute_groups(args, __spec__.name, method, [job], items, compute, args.target)


if __name__ == "__main__":
    main_guard(run)
