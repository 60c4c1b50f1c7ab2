"""PI: the top-k right singular vectors of J = ∂h_T/∂θ by block power iteration (θ added after
layer S, h_T the residual output of layer T at the prompts' positions), over the first N train
questions formatted as in eval up to the answer letter. --at zero: at θ₀ = 0 (method `pi`, run
L<S>-T<T>); --at caa: at θ₀ = the stored raw CAA vector of the layer (method `pi_caa`; with
--caa-position letter the one read at the letter, runs ending -letter), or with --at-scales at
θ₀ = s · unit(CAA) for each s (runs L<S>-T<T>-at<s>, the path CAA steers on; each also records how
far J moved from the stored `pi` group's J(0): principal angles and ‖J(θ₀)v − J(0)v‖/‖J(0)v‖).
Written: unit vectors (sign-free), σ = ‖J v‖, the residual trace.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from steerlab.base.errors import UserError
from steerlab.base.memory import check_fits
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
from steerlab.lm.jacobian import parse_tokens, power_step_memory
from steerlab.lm.model import LoadedModel
from steerlab.measure.cost import theta_at_scale
from steerlab.measure.side_effects import ScoredText
from steerlab.methods.pi import Linearised, Sweep
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
    caa = read_vector_group(args.store, key, args.behavior, "caa", run_name,
                            make=f"make caa LAYERS={args.layer}")
    return caa, (f"/{vectors_path(key, args.behavior, 'caa', run_name)} ({caa.attrs.get('code_version')} "
                 f"started {caa.attrs.get('started')})")


def theta0_words(source: str, scale: float | None, scale_unit: str) -> str:
    """θ₀ in words: ``source`` (zero, or the stored CAA vector), or ``scale`` (in ``scale_unit``)
    times its direction."""
    unit_name = {"resid": "‖h_S‖", "kl": " KL"}.get(scale_unit, "")
    return source if scale is None else f"{scale:+g}{unit_name} · unit({source})"


def pi_jobs(args: argparse.Namespace, method: str, caa_source: str) -> list[Job]:
    """One job per θ₀: at the point --at names, or at each of --at-scales along the CAA vector."""
    scales = args.at_scales if args.at_scales is not None else [None]
    at_letter = args.at == "caa" and args.caa_position == "letter"
    drop = ("at_scales",) if args.at == "caa" else ("at_scales", "caa_position")
    if args.at_scales is None:  # no scale to measure in a unit
        drop += ("scale_unit",)
    return [Job(linearised_run(args.layer, args.target, scale, args.scale_unit, letter=at_letter),
                args.layer, settings_of(args, drop=drop, method=method, at_scale=scale,
                                        theta0_source=theta0_words(caa_source, scale, args.scale_unit)))
            for scale in scales]


@dataclass
class SweepState:
    """What the points of one run share, made once, at its first point (the model loaded): the
    sweep (the prompts' forward up to layer S, J(0), the last point's vectors), the median ‖h_S‖
    at S (None where none is stored) and the val neutral texts a θ₀ in KL is sized on (none
    unless AT_SCALES is in kl)."""
    sweep: Sweep
    unit: float | None
    texts: list[ScoredText]

    @classmethod
    def start(cls, args: argparse.Namespace, lm: LoadedModel, answers: list) -> SweepState:
        vectors = min(args.k + args.oversample, args.jvp_chunk or args.k + args.oversample)
        need = power_step_memory(lm.model, [len(a.prefix_ids) for a in answers], args.batch_size,
                                 args.target - args.layer, vectors)
        check_fits(need, f"J over {len(answers)} prompts from layer {args.layer} to {args.target} with "
                   f"{vectors} vectors at a time",
                   "lower N_PROMPTS or JVP_CHUNK, or read fewer positions (TOKENS=last:N)")
        sweep = Sweep(lm.model, [a.prefix_ids for a in answers], args.layer, args.target,
                      pad_id=lm.tokenizer.pad_token_id, batch_size=args.batch_size, tokens=args.tokens,
                      chunk=args.jvp_chunk, ranks=ranks())
        found = unit_norms(args, lm, [args.layer]).get(args.layer)
        unit = None if found is None else found.median
        texts = val_neutral_texts(args, lm) if args.scale_unit == "kl" and args.at_scales else []
        return cls(sweep, unit, texts)

    def theta0(self, args: argparse.Namespace, lm: LoadedModel, caa: VectorGroup | None,
               scale: float | None) -> torch.Tensor | None:
        """θ₀ of one point: 0 (no ``caa``), the stored CAA vector, or its direction at ``scale``."""
        theta0 = None if caa is None else torch.from_numpy(caa.vectors[0].astype(np.float64))
        if theta0 is not None and scale is not None:  # the CAA direction at that scale
            theta0 = theta_at_scale(lm.model, theta0, scale, args.scale_unit, layer=args.layer,
                                    pad_id=lm.tokenizer.pad_token_id, texts=self.texts, unit_norm=self.unit)
        return theta0


def show_step(bar, index: int, residuals: torch.Tensor, change: float) -> None:
    """One power-iteration step on the progress bar."""
    bar.update(1)
    bar.set_postfix(change=f"{change:.1e}", residual=f"{float(residuals.max()):.1e}")


def iterate(args: argparse.Namespace, state: SweepState, answers: list, job: Job, theta0: torch.Tensor | None,
            words: str) -> Linearised:
    """PI at ``theta0`` (``words``) on the sweep, from where a killed run of ``job`` stopped."""
    with step(f"J = ∂h_{args.target}/∂θ_{args.layer} over {len(answers)} prompts "
              f"({sum(len(a.prefix_ids) for a in answers)} tokens, positions {args.tokens}) at θ₀ = "
              f"{words}; power iteration: k={args.k}, oversample={args.oversample}, tol={args.tol}"), \
            progress_bar(args.iters, "power iteration", "step") as bar:
        saved = job.saved()
        bar.update(len(saved.get("changes", ())))
        return state.sweep.at(theta0, args.k, iters=args.iters, oversample=args.oversample, tol=args.tol,
                              seed=args.seed, progress=partial(show_step, bar), saved=saved, save=job.save)


def linearised_group(args: argparse.Namespace, lm: LoadedModel, answers: list, job: Job, state: SweepState, *,
                     method: str, previous: str | None, caa: VectorGroup | None, caa_source: str,
                     reference: VectorGroup | None) -> VectorGroup:
    """One job's group: PI at its θ₀, starting from the ``previous`` point's vectors (read from
    the store when an earlier run computed it), and with a ``reference`` (the stored J(0)'s
    group) how far J moved from J(0)."""
    scale, sweep = job.settings["at_scale"], state.sweep
    # the point before was stored by an earlier run: start from it
    if sweep.last is None and previous is not None:
        stored = read_vector_group(args.store, lm.key, args.behavior, method, previous)
        sweep.last = torch.from_numpy(stored.vectors.astype(np.float64))
    words = theta0_words(caa_source, scale, args.scale_unit)
    found = iterate(args, state, answers, job, state.theta0(args, lm, caa, scale), words)
    say(f"  {found.summary()}")
    arrays = found.arrays() | {"prompt_ids": np.array([a.item_id for a in answers])}
    attrs = found.attrs() | {"theta0_source": words}
    if reference is not None:
        drift = sweep.drift(found, torch.from_numpy(reference.vectors.astype(np.float64)))
        say(f"  against J(0): {drift.summary()}")
        arrays |= drift.arrays()
        attrs |= {"at_scale": attrs["theta0_norm"] * (1.0 if scale >= 0 else -1.0),
                  "at_scale_in_unit": scale, "scale_unit": args.scale_unit,
                  "unit_norm": np.nan if state.unit is None else state.unit}
    return VectorGroup(method, job.run, found.result.vectors.numpy().astype(np.float32), args.layer,
                       sign_free=True, target_layer=args.target, arrays=arrays, attrs=attrs)


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
                        "with this, not with K + OVERSAMPLE (docs/usage.md: memory); "
                        "all: every vector at once")
    p.add_argument("--at", choices=["zero", "caa"], default="zero",
                   help="linearisation point θ₀: 0, or the stored CAA vector of --layer")
    p.add_argument("--caa-position", choices=("answer", "letter"), default=defaults.AT_POSITION,
                   help="with --at caa: which CAA vector θ₀ is: read on the answer texts (answer) or "
                        "at the answer letter (letter; run names gain -letter)")
    p.add_argument("--at-scales", type=scale_list, default=None, metavar="'S1 S2 ...'",
                   help="with --at caa: linearise at θ₀ = s · unit(CAA) for each s (signed, in "
                        "--scale-unit: a KL cost, a fraction of ‖h_S‖ or an L2 norm) instead of at the raw "
                        "CAA vector; one group per scale")
    # Small batches: the vmapped JVP/VJP of a big batch thrash the cache (docs/development.md,
    # "Performance": small batches, same σ, a fraction of the time).
    p.set_defaults(batch_size=2)
    args = parse(p, validate)

    items = behavior_items(args, "train")[: args.n_prompts]
    key = store_key(args.model)
    method = "pi" if args.at == "zero" else "pi_caa"
    caa, caa_source = stored_caa(args, key) if args.at == "caa" else (None, "zero")
    reference = None if args.at_scales is None else read_vector_group(  # the J(0) found as ours
        args.store, key, args.behavior, "pi", segment_run(args.layer, args.target), make="make pi",
        same_as={name: settings_of(args).get(name) for name in SAME_OPERATOR})
    jobs = pi_jobs(args, method, caa_source)
    state: SweepState | None = None  # made at the first point computed: every later one shares it

    def compute(lm: LoadedModel, answers: list, job: Job) -> VectorGroup:
        nonlocal state
        if state is None:
            state = SweepState.start(args, lm, answers)
        at = jobs.index(job)
        return linearised_group(args, lm, answers, job, state, method=method,
                                previous=jobs[at - 1].run if at else None, caa=caa, caa_source=caa_source,
                                reference=reference)

    compute_groups(context(args), __spec__.name, method, jobs, items, compute, args.target)


if __name__ == "__main__":
    main_guard(run)
