"""Evaluate every stored vector, the unsteered baseline and random controls, in two scores.

For each split: the first N_EVAL questions (ordered by id, which is a hash, so the subset is an
unbiased sample), every vector group under /<model>/<behavior>/vectors (any method), and N_RANDOM
random directions per source layer, at every scale, scored two ways (--score both):

- letter: the A/B logit difference, each question asked as written and mirrored (--orders both:
  the two answers' texts exchange letters). The headline is the mean over the two orders (the
  behaviour); the per-order values are stored beside it.
- cloze: the log-probability of each answer's text after the question stem, no choices and no
  letters (steerlab/measure/cloze.py): summed per answer, with token and character counts and each
  question's polarity class (steerlab/questions/polarity.py), so the report can cancel Yes/No polarity.

Questions are those usable in every score asked for. Every setting's cost is
measured too: the mean per-token KL(unsteered ‖ steered) and top-1 agreement over the unsteered
model's own greedy continuation (GEN_TOKENS) of the split's first N_NEUTRAL neutral prompts,
computed once per model and stored under /<model>/neutral/<split>. Vectors are unit-normalised
before scaling unless --raw (then the random directions have the mean norm of the layer's stored
vectors); sign-free vectors (PI, PI@CAA, random) also get the negative scales. With --scale-unit kl
(the default) the scales are KL targets: each vector and sign is added at the |θ| that costs the
target on the val neutral texts (steerlab/measure/calibration.py), the same |θ| on every split. Writes
/<model>/<behavior>/evals/<split>/ (question ids, baselines, cloze token and character counts,
polarity) and /<model>/<behavior>/evals/<split>/<method>/<run>/ (logit_diff and answer_mass
[k, n_scales, n_q], their *_by_order [k, n_scales, n_orders, n_q], cloze_logprob
[k, n_scales, 2, n_q], cloze [k, n_scales, n_q] in nats per token, scales; with kl, norms
[k, n_scales], calibration_kl and calibration_reached).
"""
from steerlab.base.errors import UserError
from steerlab.base.progress import say
from steerlab.cli import defaults
from steerlab.cli.options import (
    add_neutral,
    add_scale_unit,
    behavior_items,
    count_or_all,
    main_guard,
    neutral_options,
    parse,
    parse_scales,
    parse_splits,
    parser,
    positive_int,
    settings_of,
    unit_norms,
    val_neutral_texts,
)
from steerlab.jobs import resolve_sites
from steerlab.lm.model import load_model
from steerlab.lm.steered import QUESTIONS_PER_PASS, SETTINGS_PER_PASS
from steerlab.measure.calibration import Calibrator
from steerlab.measure.eval_split import (
    Batching,
    EvalSettings,
    ScaleGrid,
    evaluate_split,
    mean_norms,
    plan_split,
    random_groups,
    val_calibrations,
)
from steerlab.measure.neutral import neutral_texts
from steerlab.measure.scores import SCORE_SETS
from steerlab.questions.data import load_prompts
from steerlab.questions.orders import ORDERS
from steerlab.store import code_version, read_vector_groups

# The splits neutral prompts come in.
NEUTRAL_SPLITS = ("val", "test")


def validate(args) -> None:
    args.scales = parse_scales(args.scales)
    if args.raw and args.scale_unit != "abs":
        raise UserError("RAW=1 multiplies the raw vectors by the scales: it needs SCALE_UNIT=abs")
    args.splits = parse_splits(args.splits)


def run() -> None:
    p = parser(__doc__)
    p.add_argument("--scales", default=defaults.SCALES,
                   help="sizes of what is added, in --scale-unit: KL targets in nats per token (kl), "
                        "fractions of ‖h_S‖ (resid) or L2 norms (abs)")
    add_scale_unit(p)
    p.add_argument("--raw", action="store_true", help="scale raw vectors instead of unit ones")
    p.add_argument("--n-eval", type=count_or_all, default=defaults.N_EVAL, metavar="N|all",
                   help="questions per split")
    p.add_argument("--n-random", type=positive_int, default=defaults.N_RANDOM,
                   help="random directions per source layer (the control every table needs)")
    p.add_argument("--max-vectors", type=count_or_all, default=defaults.EVAL_K, metavar="N|all",
                   help="evaluate only the first N vectors of each group (PI: the largest σ)")
    p.add_argument("--splits", default=defaults.SPLITS, help="splits to evaluate")
    p.add_argument("--orders", choices=ORDERS, default=defaults.ORDERS,
                   help="both: every question as written and mirrored; original or mirrored: one "
                        "order only (an ablation: its numbers mix behaviour and letter preference)")
    p.add_argument("--score", choices=SCORE_SETS, default=defaults.SCORE,
                   help="letter: A/B logit difference in both orders; cloze: log-probability of "
                        "each answer's text after the stem, no letters; both")
    p.add_argument("--layer", type=int, default=defaults.LAYER,
                   help="source layer for the random control when the store holds no vectors")
    p.add_argument("--seed", type=int, default=defaults.SEED, help="seed of the random directions")
    add_neutral(p)
    p.add_argument("--settings-per-pass", type=positive_int, default=SETTINGS_PER_PASS,
                   help="θ settings stacked in one batch (memory vs speed)")
    p.add_argument("--checkpoint-every", type=positive_int, default=defaults.CHECKPOINT_EVERY, metavar="N",
                   help="question×settings between two saves of the eval's partial work (STORE.resume/): a "
                        "killed eval rerun with the same settings resumes there, so a kill loses at most "
                        "this much")
    p.set_defaults(batch_size=QUESTIONS_PER_PASS)
    args = parse(p, validate)
    items_by_split = {split: sorted(behavior_items(args, split), key=lambda i: i.id)[: args.n_eval]
                      for split in args.splits}
    neutral_by_split = {split: load_prompts(args.neutral, split, args.n_neutral)
                        for split in args.splits if split in NEUTRAL_SPLITS}

    lm = load_model(args.model, args.dtype, args.device)
    groups = read_vector_groups(args.store, lm.key, args.behavior, lm.d_model)
    if not groups:  # the random control's layer: the only use of LAYER
        lm.check_layer(args.layer, "LAYER")
    if not groups:
        say(f"no {args.behavior} vectors for {lm.key} in {args.store}: evaluating the baseline and random "
            "controls only")
    for group in groups:  # --max-vectors trims the methods' groups (not the ceiling's λ candidates)
        if not group.attrs.get("vectors_are_candidates"):
            group.vectors = group.vectors[: args.max_vectors]
    layers = sorted({g.source_layer for g in groups}) or [args.layer]
    if groups and args.layer not in layers:
        say(f"LAYER={args.layer} is not used: eval scores the stored vectors at their own layers "
            f"({', '.join(map(str, layers))}), with random controls there")
    sites = resolve_sites(lm, layers, args.site)
    units = {layer: norm.median for layer, norm in unit_norms(args, lm, layers).items()}
    calibrator = None
    if args.scale_unit == "kl":  # every split's |θ| found on the val neutral texts
        calibrator = Calibrator(lm.model, val_neutral_texts(args, lm), lm.tokenizer.pad_token_id, units,
                                args.scales, args.batch_size, args.settings_per_pass)
    # --raw: the random directions get the mean norm of the layer's stored vectors
    groups += random_groups(layers, args.n_random, lm.d_model, args.seed,
                            mean_norms(groups, layers) if args.raw else {})
    # what a split records: every argument but those that only say which groups or how fast
    recorded = settings_of(args, drop=("scales", "raw", "n_random", "max_vectors", "splits", "layer", "seed",
                                       "settings_per_pass", "batch_size", "checkpoint_every"))
    settings = EvalSettings(args.orders, args.score, ScaleGrid(args.scales, args.scale_unit, args.raw, units),
                            args.max_vectors, recorded, code_version(__spec__.name))
    batching = Batching(args.batch_size, args.settings_per_pass, args.checkpoint_every)
    for split in sorted(args.splits, key=lambda name: name != "val"):  # val first: the others take its |θ|
        # val scored in an earlier run: its |θ|, not a new search's
        if calibrator is not None and split != "val":
            calibrator.adopt(val_calibrations(args.store, lm.key, args.behavior, groups, args.scales))
        prompts = neutral_by_split.get(split)
        if prompts is None:
            say(f"[{split}] no neutral prompts in this split: no KL side effect measured")
        plan = plan_split(args.store, lm, args.behavior, split, items_by_split[split], groups, settings,
                          force=args.force)
        if plan.current:
            say(f"{plan.split.path}: every group is up to date (FORCE=1 recomputes)")
            continue
        texts = [] if prompts is None else neutral_texts(args.store, lm, split, prompts,
                                                         **neutral_options(args))
        evaluate_split(args.store, lm, plan, groups, texts, sites, batching, calibrator=calibrator)


if __name__ == "__main__":
    main_guard(run)
