"""CAA: one contrastive-activation-addition vector per source layer, from the train split.

Each vector is mean over train pairs of act(positive) - act(negative), at one of:

- the answer-letter token (--position letter), read where θ is injected (the output of
  layers[S].mlp.down_proj, or the block output where that is the site), over every question as
  written and mirrored (--orders both), so that the letters' identities cancel; the two
  per-order means are stored (by_order [2, d]);
- the answer texts (--position answer): each answer's residual stream after layer S (the block
  output, what θ is added to) averaged over its tokens after the question stem, with no choice
  block (the cloze form; no letters, so --orders does not apply), balanced over the polarity
  classes (--balance classes: the mean of the per-class mean differences, so a Yes/No direction
  cancels); the per-class means are stored (by_class [n_classes, d], with classes and
  class_counts).

Written raw (fp32) to /<model>/<behavior>/vectors/caa/L<S>[-resid][-last|-answer][-original|-pooled]
with every setting needed to recompute it.
"""
import argparse

import numpy as np

from steerlab.base.parallel import ranks
from steerlab.base.progress import say, step
from steerlab.cli import defaults
from steerlab.cli.options import (
    behavior_items,
    context,
    count_or_all,
    layer_list,
    main_guard,
    parse,
    parser,
    settings_of,
)
from steerlab.jobs import Job, compute_groups
from steerlab.methods.caa import BALANCES, CAPTURES, POSITIONS, caa_answer_vector, caa_vector
from steerlab.questions.orders import ORDERS, n_orders
from steerlab.store import VectorGroup, caa_run


def run() -> None:
    p = parser(__doc__)
    p.add_argument("--layers", type=layer_list, default=defaults.LAYER,
                   help="source layers, e.g. '3 5 7 9': one vector each")
    p.add_argument("--capture", choices=("site", *CAPTURES), default=defaults.CAPTURE,
                   help="site: read where θ goes (see --site) at the letter, and the residual stream "
                        "after layer S at the answer texts; mlp: output of mlp.down_proj; resid: the "
                        "block's output (the latter two as ablations)")
    p.add_argument("--position", type=position_list, default=defaults.POSITION, metavar="'P1 P2 ...'",
                   help="one vector per position and layer; letter: the answer-letter token; last: "
                        "the final token of the answer (ablation); answer: the mean over the answer "
                        "text's tokens after the stem, no choices, no letters")
    p.add_argument("--balance", choices=BALANCES, default=defaults.BALANCE,
                   help="--position answer: classes: the mean over Yes/No/other polarity classes of "
                        "the per-class mean differences (a Yes/No direction cancels); none: the plain "
                        "mean over pairs (ablation)")
    p.add_argument("--n-train", type=count_or_all, default=defaults.N_TRAIN, metavar="N|all",
                   help="use the first N train pairs")
    p.add_argument("--orders", choices=ORDERS, default=defaults.ORDERS,
                   help="--position letter/last: both: every pair as written and mirrored (the letter "
                        "cancels); original or mirrored: one order only, an ablation that learns the "
                        "letter too")
    args = parse(p)

    items = behavior_items(args, "train")[: args.n_train]
    for position in args.position:
        on_texts = position == "answer"
        # what does not apply to the position is left out of the settings (and the run name)
        drop = ("layers", "position", "orders") if on_texts else ("layers", "position", "balance")
        jobs = [Job(caa_run(layer, args.capture, position, args.orders, args.site, args.balance), layer,
                    settings_of(args, drop=drop, method="caa", source_layer=layer, position=position))
                for layer in args.layers]
        compute_groups(context(args), __spec__.name, "caa", jobs, items,
                       answer_group if on_texts else letter_group, order=args.orders, cloze=on_texts)


def position_list(text: str) -> list[str]:
    positions = text.replace(",", " ").split()
    unknown = [p for p in positions if p not in POSITIONS]
    if unknown or not positions or len(set(positions)) != len(positions):
        raise argparse.ArgumentTypeError(f"positions must be some of {', '.join(POSITIONS)}, each "
                                         f"once, got {text!r}")
    return positions


def captured_at(job: Job) -> str:
    """Where the activations are read. ``site`` at the letter: the injection site (the output
    of layers[S].mlp.down_proj where that is the residual add, as the seed experiment found);
    ``site`` at the answer texts: the residual stream after layer S that θ is added to (the block
    output), since what one MLP writes at an answer's tokens misses the tokens' identity
    (docs/cloze_layers.py measured both). Otherwise the --capture ablation."""
    capture = job.settings["capture"]
    if capture != "site":
        return capture
    return "resid" if job.settings["position"] == "answer" else job.site


def letter_group(lm, answers, job: Job) -> VectorGroup:
    """CAA at the answer letter (or the last token), over ``answers`` in every order asked."""
    settings, capture = job.settings, captured_at(job)
    orders = n_orders(settings["orders"])
    with step(f"CAA at layer {job.source_layer} over {len(answers) // orders} train pairs "
              f"× {orders} order(s), read at {capture}"):
        result = caa_vector(lm.model, answers, job.source_layer, lm.tokenizer.pad_token_id,
                            capture=capture, position=settings["position"], batch_size=settings["batch_size"],
                            n_orders=orders, ranks=ranks())
    say(f"  ‖v‖ = {result.norm:.3f}, per-pair ‖diff‖ = {result.diff_norms.mean():.3f} ± "
        f"{result.diff_norms.std():.3f}")
    return caa_group(job, result, {"by_order": result.by_order.numpy()},
                     {"position": settings["position"], "orders": settings["orders"], "capture": capture})


def answer_group(lm, items, job: Job) -> VectorGroup:
    """CAA on the answer texts of the cloze ``items``, balanced over polarity classes or not."""
    settings, capture = job.settings, captured_at(job)
    balanced = settings["balance"] == "classes"
    with step(f"CAA at layer {job.source_layer} over {len(items)} train pairs' answer texts, "
              f"read at {capture}" + (", balanced over polarity classes" if balanced else "")):
        result = caa_answer_vector(lm.model, items, job.source_layer, lm.tokenizer.pad_token_id,
                                   capture=capture, balance=balanced, batch_size=settings["batch_size"],
                                   ranks=ranks())
    counts = ", ".join(f"{name} {n}" for name, n in result.class_counts.items())
    say(f"  ‖v‖ = {result.norm:.3f} (classes: {counts}), per-pair ‖diff‖ = "
        f"{result.diff_norms.mean():.3f} ± {result.diff_norms.std():.3f}")
    return caa_group(job, result,
                     {"by_class": np.stack([v.numpy() for v in result.by_class.values()]),
                      "classes": np.array(list(result.by_class)),
                      "class_counts": np.array(list(result.class_counts.values()), dtype=np.int32)},
                     {"position": "answer", "balance": settings["balance"], "capture": capture})


def caa_group(job: Job, result, arrays: dict, attrs: dict) -> VectorGroup:
    """The stored form of one CAA result: its vector, per-pair difference norms and item ids,
    with what the position adds (``arrays``, ``attrs``)."""
    return VectorGroup(
        "caa", job.run, result.vector[None].numpy().astype(np.float32), job.source_layer,
        sign_free=False,
        arrays={"diff_norms": result.diff_norms.numpy(), "pair_cosines": result.pair_cosines.numpy(),
                "item_ids": np.array(result.item_ids), **arrays},
        attrs={"norm": result.norm, "pair_cosine_mean": float(result.pair_cosines.mean()),
               "diff_norm_mean": float(result.diff_norms.mean()),
               "diff_norm_std": float(result.diff_norms.std()), **attrs})


if __name__ == "__main__":
    main_guard(run)
