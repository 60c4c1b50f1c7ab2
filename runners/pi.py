"""PI: top-k right singular vectors of J = ∂h_T/∂θ by block power iteration, from the train split.

θ is added at layers[S].mlp.down_proj; h_T is the residual output of layers[T] at the prompts' real
positions (all, or the last N of each). The prompts are the first N train questions formatted as in
eval, up to the answer letter. --at zero linearises at θ₀ = 0 (method `pi`); --at caa at θ₀ = the
stored raw CAA vector of the same layer (method `pi_caa`). Written to
/<model>/vectors/<method>/L<S>-T<T>: unit vectors (sign-free), σ = ‖J v‖, the residual trace.
"""
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from engine.data import load_items
from engine.jacobian import parse_tokens, prompt_jacobian
from engine.model import resolve_dtype, store_key
from engine.power import power_iteration
from engine.prompts import length_batches
from engine.store import (file_checksum, is_current, model_group, now, replace_group, run_attrs,
                          writing)
from runners.cli import count_or_all, load_checked, main_guard, parser, say, step

DEFAULT_LAYER = 7
DEFAULT_TARGET = 20
DEFAULT_K = 4
DEFAULT_ITERS = 6
DEFAULT_OVERSAMPLE = 8
DEFAULT_TOL = 1e-2
DEFAULT_N_PROMPTS = 2
DEFAULT_TOKENS = "all"
DEFAULT_SEED = 0


def caa_theta0(store: str, key: str, layer: int) -> tuple[np.ndarray, str, str]:
    """The raw CAA vector of ``layer`` (row 0), its group path and that group's code version."""
    group = f"/{key}/vectors/caa/L{layer}"
    missing = ValueError(f"no CAA vector at {group} in {store}: run `make caa LAYERS={layer}` "
                         "(same MODEL and STORE) first")
    if not Path(store).exists():
        raise missing
    with h5py.File(store, "r") as h5:
        if f"{group}/vectors" not in h5:
            raise missing
        vector = h5[f"{group}/vectors"][0].astype(np.float64)
        version = str(h5[group].attrs.get("code_version", "unknown"))
        started = str(h5[group].attrs.get("started", "unknown"))
    if not np.isfinite(vector).all():
        raise ValueError(f"the CAA vector at {group} is not finite")
    return vector, group, f"{version} started {started}"


def run() -> None:
    p = parser(__doc__)
    p.add_argument("--layer", type=int, default=DEFAULT_LAYER, help="source layer S")
    p.add_argument("--target", type=int, default=DEFAULT_TARGET, help="target layer T > S")
    p.add_argument("--k", type=int, default=DEFAULT_K, help="number of singular vectors")
    p.add_argument("--iters", type=int, default=DEFAULT_ITERS, help="power-iteration step budget")
    p.add_argument("--oversample", type=int, default=DEFAULT_OVERSAMPLE,
                   help="extra columns in the random start block")
    p.add_argument("--tol", type=float, default=DEFAULT_TOL,
                   help="stop when the top-k subspace moves less than this (sine of largest angle)")
    p.add_argument("--n-prompts", type=count_or_all, default=DEFAULT_N_PROMPTS, metavar="N|all",
                   help="train prompts J is taken over")
    p.add_argument("--tokens", default=DEFAULT_TOKENS, help="positions: all, or last:N per prompt")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the random start block")
    p.add_argument("--at", choices=["zero", "caa"], default="zero",
                   help="linearisation point θ₀: 0, or the stored CAA vector of --layer")
    # Small batches: the vmapped JVP/VJP of a big batch thrash the cache (8 prompts as one batch
    # took 55 s a step on the dev CPU, as four batches of 2 took 20 s; same σ).
    p.set_defaults(batch_size=2)
    args = p.parse_args()

    parse_tokens(args.tokens)
    if args.target <= args.layer:
        raise ValueError(f"target layer {args.target} must be above source layer {args.layer}")
    items = load_items(args.data, "train")[: args.n_prompts]
    key = store_key(args.model)
    dtype = resolve_dtype(args.dtype, args.device)
    method = "pi" if args.at == "zero" else "pi_caa"
    theta0, theta0_source = None, "zero"
    if args.at == "caa":
        theta0, group, version = caa_theta0(args.store, key, args.layer)
        theta0_source = f"{group} ({version})"
    name = f"L{args.layer}-T{args.target}"
    settings = {"method": method, "model": args.model, "dtype": dtype, "data": args.data,
                "data_checksum": file_checksum(args.data), "source_layer": args.layer,
                "target_layer": args.target, "k": args.k, "iters": args.iters,
                "oversample": args.oversample, "tol": args.tol, "n_prompts": len(items),
                "tokens": args.tokens, "seed": args.seed, "at": args.at,
                "theta0_source": theta0_source, "batch_size": args.batch_size}
    group_path = f"{key}/vectors/{method}/{name}"
    if not args.force and is_current(args.store, group_path, settings):
        say(f"{group_path} is up to date (FORCE=1 recomputes it)")
        return

    lm, answers, skipped = load_checked(args, dtype, items, [args.layer], args.target)
    prompts = [a.prefix_ids for a in answers]
    groups = length_batches([len(s) for s in prompts], args.batch_size)
    batches = [[prompts[i] for i in group] for group in groups]

    started, t0 = now(), time.perf_counter()
    theta = None if theta0 is None else torch.from_numpy(theta0)
    with step(f"J = ∂h_{args.target}/∂θ_{args.layer} over {len(prompts)} prompts "
              f"({sum(map(len, prompts))} tokens, positions {args.tokens}) at θ₀ = {theta0_source}"):
        op = prompt_jacobian(lm.model, batches, lm.tokenizer.pad_token_id, args.layer,
                             args.target, args.tokens, theta)

    def progress(index: int, residuals: torch.Tensor, change: float) -> None:
        say(f"  step {index:3d}/{args.iters}: subspace change {change:.2e}, residuals "
            + " ".join(f"{r:.1e}" for r in residuals.tolist())
            + f"  ({time.perf_counter() - t0:.0f}s)")

    with step(f"power iteration: k={args.k}, oversample={args.oversample}, tol={args.tol}"):
        result = power_iteration(op, args.k, args.iters, args.oversample, args.tol, args.seed,
                                 progress=progress)
    seconds = time.perf_counter() - t0
    if not torch.isfinite(result.sigmas).all():
        raise ValueError("power iteration produced non-finite singular values; nothing written")
    rows, cols = [], []
    for group, part in zip(groups, op.parts):  # (prompt index, token index) of every row of J
        rows.extend(group[r] for r in part.rows.tolist())
        cols.extend(part.cols.tolist())
    with writing(args.store) as h5:
        parent = model_group(h5, lm).require_group(f"vectors/{method}")
        replace_group(parent, name, {
            "vectors": result.vectors.numpy().astype(np.float32),
            "sigmas": result.sigmas.numpy().astype(np.float32),
            "trace": result.trace.numpy().astype(np.float32),
            "subspace_change": result.subspace_change.numpy().astype(np.float32),
            "prompt_ids": np.array([a.item_id for a in answers]),
            "positions": np.array([rows, cols], dtype=np.int32).T,
        }, run_attrs(settings, started, seconds, source_layer=args.layer,
                     target_layer=args.target, sign_free=1, theta0_source=theta0_source,
                     theta0_norm=0.0 if theta0 is None else float(np.linalg.norm(theta0)),
                     steps=result.steps, converged=int(result.converged), skipped=skipped))
    say(f"  {lm.key}/vectors/{method}/{name}: σ = "
        + " ".join(f"{s:.3f}" for s in result.sigmas.tolist())
        + f"; {result.steps} steps, {'converged' if result.converged else 'NOT converged'}"
        f" (last subspace change {float(result.subspace_change[-1]):.1e}), {seconds:.1f}s")


if __name__ == "__main__":
    main_guard(run)
