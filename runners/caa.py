"""CAA: one contrastive-activation-addition vector per source layer, from the train split.

Each vector is mean over train pairs of act(positive) - act(negative), read at the output of
layers[S].mlp.down_proj (where it is injected) at the answer-letter token, over every question as
written and mirrored (--orders both), so that the letters' identities cancel. Written raw (fp32)
to /<model>/vectors/caa/L<S>[-resid][-last][-original] with the two per-order means
(by_order [2, d]) and every setting needed to recompute it.
"""
import numpy as np

from engine.caa import CAPTURES, POSITIONS, caa_vector
from engine.orders import ORDERS, n_orders
from engine.parallel import ranks
from engine.store import VectorGroup, caa_run
from runners import defaults
from runners.cli import (
    Job,
    behavior_items,
    compute_groups,
    count_or_all,
    layer_list,
    main_guard,
    parse,
    parser,
    say,
    settings_of,
    step,
)


def run() -> None:
    p = parser(__doc__)
    p.add_argument("--layers", type=layer_list, default=defaults.LAYER,
                   help="source layers, e.g. '3 5 7 9': one vector each")
    p.add_argument("--capture", choices=("site", *CAPTURES), default=defaults.CAPTURE,
                   help="site: read where θ goes (see --site); mlp: output of mlp.down_proj; "
                        "resid: the block's output (the latter two as ablations)")
    p.add_argument("--position", choices=POSITIONS, default=defaults.POSITION,
                   help="letter: the answer-letter token; last: the final token of the answer")
    p.add_argument("--n-train", type=count_or_all, default=defaults.N_TRAIN, metavar="N|all",
                   help="use the first N train pairs")
    p.add_argument("--orders", choices=ORDERS, default=defaults.ORDERS,
                   help="both: every pair as written and mirrored (the letter cancels); original or "
                        "mirrored: one order only, an ablation that learns the letter too")
    args = parse(p)

    items = behavior_items(args, "train")[: args.n_train]
    jobs = [Job(caa_run(layer, args.capture, args.position, args.orders, args.site), layer,
                settings_of(args, drop=("layers",), method="caa", source_layer=layer))
            for layer in args.layers]

    def compute(lm, answers, job: Job) -> VectorGroup:
        orders = n_orders(args.orders)
        capture = job.site if args.capture == "site" else args.capture
        with step(f"CAA at layer {job.source_layer} over {len(answers) // orders} train pairs "
                  f"× {orders} order(s), read at {capture}"):
            result = caa_vector(lm.model, answers, job.source_layer, lm.tokenizer.pad_token_id,
                                capture, args.position, args.batch_size, orders, ranks())
        say(f"  ‖v‖ = {result.norm:.3f}, per-pair ‖diff‖ = {result.diff_norms.mean():.3f} ± "
            f"{result.diff_norms.std():.3f}, mean ‖h_S‖ = {result.resid_norm:.2f}")
        return VectorGroup(
            "caa", job.run, result.vector[None].numpy().astype(np.float32), job.source_layer,
            sign_free=False,
            arrays={"diff_norms": result.diff_norms.numpy(), "item_ids": np.array(result.item_ids),
                    "by_order": result.by_order.numpy()},
            attrs={"norm": result.norm, "diff_norm_mean": float(result.diff_norms.mean()),
                   "diff_norm_std": float(result.diff_norms.std()),
                   "resid_norm": result.resid_norm, "orders": args.orders, "capture": capture})

    compute_groups(args, __spec__.name, "caa", jobs, items, compute, order=args.orders)


if __name__ == "__main__":
    main_guard(run)
