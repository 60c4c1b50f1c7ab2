"""PI: top-k right singular vectors of J = ∂h_T/∂θ by block power iteration, from the train split.

θ is added at layers[S].mlp.down_proj; h_T is the residual output of layers[T] at the prompts' real
positions (all, or the last N of each). The prompts are the first N train questions formatted as in
eval, up to the answer letter. --at zero linearises at θ₀ = 0 (method `pi`, run L<S>-T<T>);
--at caa at θ₀ = the stored raw CAA vector of the same layer (method `pi_caa`, same run name; the
CAA read on the answer texts, or with --caa-position letter the one read at the answer letter,
run names ending -letter), or, with --at-scales, at θ₀ = s · unit(CAA) for each s (runs L<S>-T<T>-at<s>): the Jacobian along the
path CAA steers on. Each such group also records how far J moved from θ₀ = 0 (the stored `pi`
group of the same settings): the principal angles between the top-k subspaces and
‖J(θ₀)v − J(0)v‖ / ‖J(0)v‖ for the top vectors v of J(0). The prompts' prefix is computed once
for all scales, and each scale's power iteration starts from the previous scale's Ritz vectors.
Written: unit vectors (sign-free), σ = ‖J v‖, the residual trace.
"""

import argparse

import numpy as np
import torch

from steerlab.base.errors import UserError
from steerlab.base.parallel import ranks
from steerlab.base.progress import progress_bar, say, step
from steerlab.cli import defaults
from steerlab.cli.options import (
    above_source,
    add_segment,
    behavior_items,
    context,
    count_or_all,
    main_guard,
    parse,
    parser,
    positive_float,
    positive_int,
    scale_list,
    settings_of,
    unit_norms,
    val_neutral_texts,
)
from steerlab.jobs import Job, compute_groups
from steerlab.lm.jacobian import jacobian_at, parse_tokens
from steerlab.lm.segment import batched_prefixes
from steerlab.measure.scales import absolute, signed_size_at_cost
from steerlab.methods.pi import drift_from_zero, top_singular
from steerlab.store import (
    VectorGroup,
    caa_run,
    linearised_run,
    read_vector_group,
    segment_run,
    store_key,
    vectors_path,
)

# Settings of the `pi` group that must equal ours for it to be the J(0) a sweep is compared with.
SAME_OPERATOR = ("model", "dtype", "data_checksum", "layer", "target", "k", "n_prompts", "tokens",
                 "batch_size")


def validate(args) -> None:
    parse_tokens(args.tokens)
    above_source(args.layer, args.target)
    if args.oversample < 0:
        raise UserError(f"OVERSAMPLE must be 0 or more, got {args.oversample}")
    if args.at_scales is not None and args.at != "caa":
        raise UserError("AT_SCALES linearises along the CAA vector: it needs --at caa (make pi_caa)")


def stored_caa(args: argparse.Namespace, key: str) -> tuple[VectorGroup, str]:
    """The CAA group θ₀ is taken from, and where it came from, in words."""
    run_name = caa_run(args.layer, position=args.caa_position, site=args.site)
    caa = read_vector_group(args.store, key, args.behavior, "caa", run_name, make=f"make caa LAYERS={args.layer}")
    return caa, (f"/{vectors_path(key, args.behavior, 'caa', run_name)} ({caa.attrs.get('code_version')} "
                 f"started {caa.attrs.get('started')})")


def stored_pi(args: argparse.Namespace, key: str) -> VectorGroup:
    """The stored J(0) group a sweep is compared with; it must have been found like ours."""
    ours = settings_of(args)
    return read_vector_group(args.store, key, args.behavior, "pi", segment_run(args.layer, args.target),
                             make="make pi", same_as={name: ours.get(name) for name in SAME_OPERATOR})


def run() -> None:
    p = parser(__doc__)
    add_segment(p, vectors="singular vectors", prompts="J is taken over", seed="the random start block")
    p.add_argument("--iters", type=positive_int, default=defaults.ITERS,
                   help="power-iteration step budget")
    p.add_argument("--oversample", type=int, default=defaults.OVERSAMPLE,
                   help="extra columns in the random start block")
    p.add_argument("--tol", type=positive_float, default=defaults.TOL,
                   help="stop when the top-k subspace moves less than this (sine of largest angle)")
    p.add_argument("--tokens", default=defaults.TOKENS, help="positions: all, or last:N per prompt")
    p.add_argument("--jvp-chunk", type=count_or_all, default=defaults.JVP_CHUNK, metavar="N|all",
                   help="vectors pushed through the vmapped JVP/VJP together: the step's memory grows "
                        "with this, not with K + OVERSAMPLE (docs/usage.md: memory); all: every vector at once")
    p.add_argument("--at", choices=["zero", "caa"], default="zero",
                   help="linearisation point θ₀: 0, or the stored CAA vector of --layer")
    p.add_argument("--caa-position", choices=("answer", "letter"), default=defaults.AT_POSITION,
                   help="with --at caa: which CAA vector θ₀ is: read on the answer texts (answer) or "
                        "at the answer letter (letter; run names gain -letter)")
    p.add_argument("--at-scales", type=scale_list, default=None, metavar="'S1 S2 ...'",
                   help="with --at caa: linearise at θ₀ = s · unit(CAA) for each s (signed, in "
                        "--scale-unit: a KL cost, a fraction of ‖h_S‖ or an L2 norm) instead of at the raw CAA "
                        "vector; one group per scale")
    # Small batches: the vmapped JVP/VJP of a big batch thrash the cache (docs/development.md,
    # "Performance": small batches, same σ, a fraction of the time).
    p.set_defaults(batch_size=2)
    args = parse(p, validate)

    items = behavior_items(args, "train")[: args.n_prompts]
    key = store_key(args.model)
    method = "pi" if args.at == "zero" else "pi_caa"
    caa, caa_source = stored_caa(args, key) if args.at == "caa" else (None, "zero")
    reference = stored_pi(args, key) if args.at_scales is not None else None
    unit_name = {"resid": "‖h_S‖", "kl": " KL"}.get(args.scale_unit, "")

    def described(scale: float | None) -> str:
        """θ₀ in words."""
        return caa_source if scale is None else f"{scale:+g}{unit_name} · unit({caa_source})"

    def theta0_at(lm, scale: float | None) -> torch.Tensor | None:
        """θ₀: 0, the raw CAA vector, or the CAA direction at ``scale`` in --scale-unit (a fraction of
        the median ‖h_S‖, an L2 norm, or the size at which the direction costs that KL)."""
        direction = None if caa is None else torch.from_numpy(caa.vectors[0].astype(np.float64))
        if direction is None or scale is None:
            return direction
        size = (signed_size_at_cost(lm.model, val_neutral_texts(args, lm), args.layer, direction, scale=scale,
                                    pad_id=lm.tokenizer.pad_token_id, unit=shared["unit"])
                if args.scale_unit == "kl" else absolute([scale], args.scale_unit, shared["unit"])[0])
        return size * direction / direction.norm()

    scales = args.at_scales if args.at_scales is not None else [None]
    at_letter = args.at == "caa" and args.caa_position == "letter"
    drop = ("at_scales",) if args.at == "caa" else ("at_scales", "caa_position")
    if args.at_scales is None:  # no scale to measure in a unit
        drop += ("scale_unit",)
    jobs = [Job(linearised_run(args.layer, args.target, scale, args.scale_unit) + ("-letter" if at_letter else ""),
                args.layer, settings_of(args, drop=drop, method=method, at_scale=scale,
                                        theta0_source=described(scale)))
            for scale in scales]
    shared: dict = {}  # what the scales of one run share: prompts' prefixes, the unit, J(0), the last Ritz block

    def compute(lm, answers, job: Job) -> VectorGroup:
        prompts = [a.prefix_ids for a in answers]
        if "prefixes" not in shared:  # this rank's share of the batches
            pairs = list(batched_prefixes(lm.model, prompts, args.layer, lm.tokenizer.pad_token_id, args.batch_size,
                                          ranks=ranks()))
            shared["batches"], shared["prefixes"] = [b for b, _ in pairs], [prefix for _, prefix in pairs]
            found = unit_norms(args, lm, [args.layer]).get(args.layer)
            shared["unit"] = None if found is None else found.median
        scale = job.settings["at_scale"]
        theta0, source = theta0_at(lm, scale), described(scale)
        with step(f"J = ∂h_{args.target}/∂θ_{args.layer} over {len(prompts)} prompts ({sum(map(len, prompts))} "
                  f"tokens, positions {args.tokens}) at θ₀ = {source}; power iteration: k={args.k}, "
                  f"oversample={args.oversample}, tol={args.tol}"), \
                progress_bar(args.iters, "power iteration", "step") as bar:
            def progress(index: int, residuals: torch.Tensor, change: float) -> None:
                bar.update(1)
                bar.set_postfix(change=f"{change:.1e}", residual=f"{float(residuals.max()):.1e}")

            found = top_singular(lm.model, shared["prefixes"], shared["batches"], args.target, args.k,
                                 tokens=args.tokens, theta0=theta0, iters=args.iters, oversample=args.oversample,
                                 tol=args.tol, seed=args.seed, start=shared.get("ritz"), chunk=args.jvp_chunk,
                                 ranks=ranks(), progress=progress)
        shared["ritz"] = found.result.vectors
        say(f"  {found.summary()}")
        arrays = found.arrays() | {"prompt_ids": np.array([a.item_id for a in answers])}
        attrs = found.attrs() | {"theta0_source": source}
        if reference is not None:
            if "at_zero" not in shared:
                shared["at_zero"] = jacobian_at(lm.model, shared["prefixes"], args.target, args.tokens,
                                                ranks=ranks(), chunk=args.jvp_chunk)
            drift = drift_from_zero(found, shared["at_zero"], torch.from_numpy(reference.vectors.astype(np.float64)))
            say(f"  against J(0): {drift.summary()}")
            arrays |= drift.arrays()
            attrs |= {"at_scale": attrs["theta0_norm"] * (1.0 if scale >= 0 else -1.0),
                      "at_scale_in_unit": scale, "scale_unit": args.scale_unit,
                      "unit_norm": np.nan if shared["unit"] is None else shared["unit"]}
        return VectorGroup(method, job.run, found.result.vectors.numpy().astype(np.float32), args.layer,
                           sign_free=True, target_layer=args.target, arrays=arrays, attrs=attrs)

    compute_groups(context(args), __spec__.name, method, jobs, items, compute, args.target)


if __name__ == "__main__":
    main_guard(run)
