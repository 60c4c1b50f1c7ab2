"""MELBO: k orthogonal steering vectors of norm R that most move the target layer (gradient ascent).

Prompts are the first N train questions, formatted as eval feeds them (chat template up to the
answer letter). Layers 0..S run once; every step runs layers S+1..T for all k vectors together.
Written to /<model>/vectors/melbo/L<S>-T<T>: vectors [k, d] (rows of norm R), the objective
trace [steps, k] and the prompt ids, with every setting needed to recompute them.
"""
import numpy as np
import torch

from steerlab.base.parallel import ranks
from steerlab.base.progress import progress_bar, say, step
from steerlab.cli import defaults
from steerlab.cli.options import (
    above_source,
    add_segment,
    behavior_items,
    context,
    main_guard,
    parse,
    parser,
    positive_float,
    positive_int,
    settings_of,
    unit_norms,
    val_neutral_texts,
)
from steerlab.jobs import Job, compute_groups
from steerlab.lm.segment import batched_prefixes
from steerlab.measure.cost import random_radius
from steerlab.measure.scales import absolute
from steerlab.methods.melbo import AMSGRAD, BETAS, MODES, WEIGHT_DECAY, melbo
from steerlab.store import VectorGroup, segment_run

# Every forward carries k copies of a prompt batch, so prompt batches are smaller than elsewhere;
# batching by length also keeps padding (computed, then masked out) low.
BATCH_SIZE = 4


def run() -> None:
    p = parser(__doc__)
    p.set_defaults(batch_size=BATCH_SIZE)
    add_segment(p, vectors="orthogonal vectors", prompts="the objective sums over",
                seed="the random starting directions")
    p.add_argument("--radius", type=positive_float, default=defaults.R,
                   help="norm R of every vector, in --scale-unit: with kl, the |θ| at which random "
                        "directions cost R nats per token (their median), a fraction of ‖h_S‖, or absolute")
    p.add_argument("--p", type=positive_float, default=defaults.P,
                   help="exponent of each token's displacement norm (over the hidden dimension)")
    p.add_argument("--q", type=positive_float, default=defaults.Q, help="outer root of the objective")
    p.add_argument("--steps", type=positive_int, default=defaults.STEPS, help="AdamW steps per vector")
    p.add_argument("--lr", type=positive_float, default=defaults.LR, help="AdamW learning rate")
    p.add_argument("--mode", choices=MODES, default="batched",
                   help="batched: all k vectors step together; sequential: one after another "
                        "(the reference procedure)")
    args = parse(p, lambda a: above_source(a.layer, a.target))

    items = behavior_items(args, "train")[: args.n_prompts]
    job = Job(segment_run(args.layer, args.target), args.layer,
              settings_of(args, method="melbo", betas=list(BETAS), weight_decay=WEIGHT_DECAY,
                          amsgrad=AMSGRAD))

    def compute(lm, answers, job: Job) -> VectorGroup:
        prefixes = [prefix for _, prefix in batched_prefixes(  # this rank's batches
            lm.model, [a.prefix_ids for a in answers], args.layer, lm.tokenizer.pad_token_id, args.batch_size,
            ranks=ranks())]
        unit = unit_norms(args, lm, [args.layer]).get(args.layer)
        if args.scale_unit == "kl":  # the size at which random directions cost R nats per token
            radius, _ = random_radius(lm.model, val_neutral_texts(args, lm), args.layer, args.radius,
                                      pad_id=lm.tokenizer.pad_token_id, unit=unit.median, seed=args.seed)
        else:
            radius = absolute([args.radius], args.scale_unit, unit and unit.median)[0]

        # batched: all k vectors take each step together; sequential: k runs of STEPS steps
        total = args.steps * (1 if args.mode == "batched" else args.k)
        with step(f"MELBO ({args.mode}) k={args.k} R={radius:.4g} L{args.layer}→T{args.target} "
                  f"over {len(answers)} prompts, {args.steps} steps"), \
                progress_bar(total, "MELBO", "step") as bar:
            def progress(first: int, t: int, values: torch.Tensor) -> None:
                bar.update(1)
                bar.set_postfix(objective=" ".join(f"{v:.4g}" for v in values.tolist()))

            saved = job.saved()
            bar.update(sum(int(value) for name, value in saved.items() if name.endswith("/steps")))
            result = melbo(lm.model, prefixes, args.target, args.k, radius=radius, p=args.p, q=args.q,
                           steps=args.steps, lr=args.lr, seed=args.seed, mode=args.mode, progress=progress,
                           ranks=ranks(), saved=saved, save=job.save)
        say("  final objective " + " ".join(f"{v:.4g}" for v in result.objective.tolist())
            + " (first step " + " ".join(f"{v:.4g}" for v in result.trace[0].tolist()) + ")")
        return VectorGroup(
            "melbo", job.run, result.vectors.numpy().astype(np.float32), args.layer,
            sign_free=False, target_layer=args.target,
            arrays={"trace": result.trace.numpy().astype(np.float32),
                    "prompt_ids": np.array([a.item_id for a in answers])},
            attrs={"radius": radius, "radius_in_unit": args.radius, "scale_unit": args.scale_unit,
                   "unit_norm": np.nan if unit is None else unit.median,
                   "objective": result.objective.tolist()})

    compute_groups(context(args), __spec__.name, "melbo", [job], items, compute, args.target)


if __name__ == "__main__":
    main_guard(run)
