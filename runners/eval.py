"""Evaluate every stored vector, the unsteered baseline and random controls, in two scores.

For each split: the first N_EVAL questions (ordered by id, which is a hash, so the subset is an
unbiased sample), every vector group under /<model>/<behavior>/vectors (any method), and N_RANDOM
random directions per source layer, at every scale, scored two ways (--score both):

- letter: the A/B logit difference, each question asked as written and mirrored (--orders both:
  the two answers' texts exchange letters). The headline is the mean over the two orders (the
  behaviour); the per-order values are stored beside it.
- cloze: the log-probability of each answer's text after the question stem, no choices and no
  letters (engine/cloze.py): summed per answer, with token and character counts and each
  question's polarity class (engine/polarity.py), so the report can cancel Yes/No polarity.

Questions are those usable in every score asked for. Every setting's cost is
measured too: the mean per-token KL(unsteered ‖ steered) and top-1 agreement over the unsteered
model's own greedy continuation (GEN_TOKENS) of the split's first N_NEUTRAL neutral prompts,
computed once per model and stored under /<model>/neutral/<split>. Vectors are unit-normalised before scaling unless
--raw (then the random directions have the mean norm of the layer's stored vectors); sign-free
vectors (PI, PI@CAA, random) also get the negative scales. Writes
/<model>/<behavior>/evals/<split>/ (question ids, baselines, cloze token and character counts,
polarity) and /<model>/<behavior>/evals/<split>/<method>/<run>/ (logit_diff and answer_mass
[k, n_scales, n_q], their *_by_order [k, n_scales, n_orders, n_q], cloze_logprob
[k, n_scales, 2, n_q], cloze [k, n_scales, n_q] in nats per token, scales).
"""
import hashlib
import time

import numpy as np

from engine.cloze import cloze_preference, cloze_token_counts
from engine.data import SPLITS
from engine.errors import UserError
from engine.evaluate import QUESTIONS_PER_PASS, SETTINGS_PER_PASS
from engine.generate import Prompt, load_prompts
from engine.grid import build_grid, random_directions
from engine.model import REPO_ROOT, load_model
from engine.norms import absolute
from engine.orders import ORDERS, n_orders
from engine.parallel import ranks
from engine.scores import SCORES, rank_work, score, usable_questions
from engine.store import (
    VectorGroup,
    code_version,
    evals_path,
    is_current,
    now,
    random_run,
    read_vector_groups,
    run_attrs,
    settings_json,
    vectors_path,
    write_eval_group,
    write_eval_split,
    writing,
)
from runners import defaults
from runners.cli import (
    add_scale_unit,
    behavior_items,
    count_or_all,
    main_guard,
    neutral_texts,
    parse,
    parse_scales,
    parser,
    positive_int,
    progress_bar,
    resolve_sites,
    say,
    say_skipped,
    settings_of,
    unit_norms,
)


def unit_of(norms: dict, layer: int) -> float | None:
    """The scale unit (median ‖h_S‖) at ``layer``; None with --scale-unit abs."""
    return norms[layer].median if layer in norms else None


def parse_splits(text: str) -> list[str]:
    splits = text.replace(",", " ").split()
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise UserError(f"unknown split(s) {unknown or text!r}: expected some of {', '.join(SPLITS)}")
    return splits


def random_groups(layers: list[int], n_random: int, d_model: int, seed: int,
                  norms: dict[int, float]) -> list[VectorGroup]:
    """N random directions per source layer, of norm ``norms[layer]`` (1 unless --raw)."""
    return [VectorGroup("random", random_run(layer),
                        (random_directions(n_random, d_model, seed, layer) * norms.get(layer, 1.0)).float().numpy(),
                        layer, sign_free=True, settings={"seed": seed, "n_random": n_random})
            for layer in layers]


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
                   help="sizes of what is added, in --scale-unit: fractions of ‖h_S‖ (resid) or L2 norms (abs)")
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
    p.add_argument("--score", choices=SCORES, default=defaults.SCORE,
                   help="letter: A/B logit difference in both orders; cloze: log-probability of "
                        "each answer's text after the stem, no letters; both")
    p.add_argument("--layer", type=int, default=defaults.LAYER,
                   help="source layer for the random control when the store holds no vectors")
    p.add_argument("--seed", type=int, default=defaults.SEED, help="seed of the random directions")
    p.add_argument("--neutral", default=str(REPO_ROOT / defaults.NEUTRAL),
                   help="neutral prompts (JSONL: id, text, split) for the KL side effect")
    p.add_argument("--n-neutral", type=count_or_all, default=defaults.N_NEUTRAL, metavar="N|all",
                   help="neutral prompts per split")
    p.add_argument("--gen-tokens", type=positive_int, default=defaults.GEN_TOKENS,
                   help="tokens of the unsteered greedy continuation the KL is scored on")
    p.add_argument("--settings-per-pass", type=positive_int, default=SETTINGS_PER_PASS,
                   help="θ settings stacked in one batch (memory vs speed)")
    p.set_defaults(batch_size=QUESTIONS_PER_PASS)
    args = parse(p, validate)
    items_by_split = {split: sorted(behavior_items(args, split), key=lambda i: i.id)[: args.n_eval]
                      for split in args.splits}
    neutral_by_split = {split: load_prompts(args.neutral, split, args.n_neutral)
                        for split in args.splits if split in NEUTRAL_SPLITS}

    lm = load_model(args.model, args.dtype, args.device)
    groups = read_vector_groups(args.store, lm.key, args.behavior, lm.d_model)
    if not groups:
        say(f"no {args.behavior} vectors for {lm.key} in {args.store}: evaluating the baseline and random controls only")
    for group in groups:  # --max-vectors trims the methods' groups; the random control keeps all
        group.vectors = group.vectors[: args.max_vectors]
    layers = sorted({g.source_layer for g in groups}) or [args.layer]
    sites = resolve_sites(lm, layers, args.site)
    norms = unit_norms(args, lm, layers)
    raw_norms = {}  # --raw: the random directions get the mean norm of the layer's stored vectors
    if args.raw:
        for layer in layers:
            rows = [np.linalg.norm(g.vectors, axis=1) for g in groups if g.source_layer == layer]
            raw_norms[layer] = float(np.concatenate(rows).mean()) if rows else 1.0
    groups += random_groups(layers, args.n_random, lm.d_model, args.seed, raw_norms)

    for split in args.splits:
        if split not in neutral_by_split:
            say(f"[{split}] no neutral prompts in this split: no KL side effect measured")
        evaluate_split(args, lm, split, items_by_split[split], neutral_by_split.get(split), groups, sites,
                       norms)


def evaluate_split(args, lm, split: str, items, prompts: list[Prompt] | None,
                   groups: list[VectorGroup], sites: dict[int, str], norms: dict) -> None:
    answers, cloze, skipped = usable_questions(lm.tokenizer, items, args.orders, args.score)
    say_skipped(skipped, bool(answers or cloze), f"no usable {split} question: every item was skipped")
    orders = n_orders(args.orders)
    version = code_version(__spec__.name)
    question_ids = ([a.item_id for a in answers[: len(answers) // orders]] if answers
                    else [c.item_id for c in cloze])
    split_settings = settings_of(args, drop=("scales", "raw", "n_random", "max_vectors", "splits",
                                             "layer", "seed", "settings_per_pass", "batch_size"),
                                 split=split, question_ids_sha=hashlib.sha256(
                                     " ".join(question_ids).encode()).hexdigest()[:16])
    split_path = evals_path(lm.key, args.behavior, split)
    fresh_split = args.force or not is_current(args.store, split_path, split_settings, version)
    wanted = []
    for g in groups:
        settings = {"scales": args.scales, "raw": args.raw, "scale_unit": args.scale_unit,
                    "unit_norm": unit_of(norms, g.source_layer),
                    "max_vectors": None if g.method == "random" else args.max_vectors,
                    "vectors": settings_json(g.settings) if g.method == "random" else g.fingerprint,
                    "split": split_settings}
        stale = fresh_split or not is_current(
            args.store, evals_path(lm.key, args.behavior, split, g.method, g.run), settings, version)
        wanted.append((g, settings, stale))
    # rank 0's reading of the store decides for every rank, so that all run the same passes
    fresh_split, stale = ranks().same((fresh_split, [stale for _, _, stale in wanted]))
    todo = [(g, settings) for (g, settings, _), redo in zip(wanted, stale) if redo]
    if not todo and not fresh_split:
        say(f"{split_path}: every group is up to date (FORCE=1 recomputes)")
        return

    texts = [] if prompts is None else neutral_texts(args, lm, split, prompts)
    started, t0 = now(), time.perf_counter()
    results, baseline = {}, None
    layers = sorted({g.source_layer for g, _ in todo}) or [groups[0].source_layer]
    # One θ matrix per source layer: every group's (vector, scale) settings, stacked.
    grids = {layer: build_grid([g for g, _ in todo if g.source_layer == layer],
                               absolute(args.scales, args.scale_unit, unit_of(norms, layer)),
                               lm.d_model, args.raw, baseline=n == 0)
             for n, layer in enumerate(layers)}
    say(f"… [{split}] {sum(len(g.thetas) for g in grids.values())} settings × {len(question_ids)} "
        f"questions ({args.score}: {orders} letter order(s)" + (", cloze" if cloze else "")
        + f"), and KL on {len(texts)} neutral texts")
    total = sum(rank_work(len(g.thetas), answers, orders, len(texts), ranks(), len(cloze or []))
                for g in grids.values())
    with progress_bar(total, f"eval {split}", "question×setting") as bar:
        for layer, grid in grids.items():
            scored = score(lm.model, answers, orders, texts, layer, grid.thetas,
                           lm.tokenizer.pad_token_id, args.batch_size, args.settings_per_pass,
                           progress=bar.update, ranks=ranks(), cloze=cloze)
            per_setting = {"diff": scored.logit_diff, "mass": scored.answer_mass,  # [n_settings, n_orders, n_q]
                           "cloze": scored.cloze, "kl": scored.kl, "top1": scored.top1}
            per_setting = {name: values for name, values in per_setting.items() if values is not None}
            if grid.baseline_row is not None:
                baseline = {name: values[grid.baseline_row] for name, values in per_setting.items()}
            per_group = {name: grid.unpack(values) for name, values in per_setting.items()}
            for span in grid.spans:
                results[span.group.label] = (span, {name: values[span.group.label]
                                                    for name, values in per_group.items()})
    seconds = ranks().largest(time.perf_counter() - t0)
    settings_by_label = {g.label: settings for g, settings in todo}
    if ranks().writer:  # rank 0 alone writes: baseline and every group in one atomic update
        with writing(args.store) as h5:
            if fresh_split or split_path not in h5:
                split_data = {"question_ids": np.array(question_ids),
                              "neutral_ids": np.array([text.prompt_id for text in texts], dtype=str)}
                if "diff" in baseline:
                    split_data |= {
                        "baseline_logit_diff": baseline["diff"].mean(0).astype(np.float32),
                        "baseline_answer_mass": baseline["mass"].mean(0).astype(np.float32),
                        "baseline_logit_diff_by_order": baseline["diff"].astype(np.float32),
                        "baseline_answer_mass_by_order": baseline["mass"].astype(np.float32)}
                if cloze:
                    n_tokens = cloze_token_counts(cloze)
                    split_data |= {
                        "baseline_cloze_logprob": baseline["cloze"].astype(np.float32),
                        "baseline_cloze": cloze_preference(baseline["cloze"], n_tokens).astype(np.float32),
                        "cloze_n_tokens": n_tokens,
                        "cloze_n_chars": np.array([[c.positive_chars for c in cloze],
                                                   [c.negative_chars for c in cloze]], dtype=np.int32),
                        "polarity": np.array([c.polarity for c in cloze])}
                write_eval_split(h5, lm, args.behavior, split, split_data, run_attrs(
                    split_settings, version, started, seconds, skipped=skipped, orders=args.orders,
                    score=args.score, behavior=args.behavior, nproc=ranks().size))
            for label, (span, values) in results.items():
                g = span.group
                unit = unit_of(norms, g.source_layer)
                datasets = {"scales": np.array(span.scales, dtype=np.float32)}
                if unit is not None:
                    datasets["scale_fractions"] = np.array(span.scales, dtype=np.float64) / unit
                if "diff" in values:
                    diff, mass = values["diff"], values["mass"]
                    datasets |= {"logit_diff": diff.mean(2).astype(np.float32),
                                 "answer_mass": mass.mean(2).astype(np.float32),
                                 "logit_diff_by_order": diff.astype(np.float32),
                                 "answer_mass_by_order": mass.astype(np.float32)}
                if "cloze" in values:  # [k, n_scales, 2, n_q]
                    datasets |= {"cloze_logprob": values["cloze"].astype(np.float32),
                                 "cloze": cloze_preference(values["cloze"], cloze_token_counts(cloze)
                                                           ).astype(np.float32)}
                if "kl" in values:  # [k, n_scales, n_neutral]
                    datasets |= {"kl": values["kl"].astype(np.float32), "top1": values["top1"].astype(np.float32)}
                if g.method == "random":
                    datasets["vectors"] = g.vectors
                write_eval_group(h5, lm, args.behavior, split, g.method, g.run, datasets, run_attrs(
                    settings_by_label[label], version, started, seconds, source_layer=g.source_layer,
                    site=sites[g.source_layer],
                    sign_free=int(g.sign_free), raw=int(args.raw), orders=args.orders, score=args.score,
                    scale_unit=args.scale_unit, unit_norm=np.nan if unit is None else unit,
                    vector_group="" if g.method == "random" else vectors_path(lm.key, args.behavior, g.method, g.run),
                    nproc=ranks().size))
    say(f"{split_path}: wrote baseline and {len(results)} groups in {seconds:.0f}s")


if __name__ == "__main__":
    main_guard(run)
