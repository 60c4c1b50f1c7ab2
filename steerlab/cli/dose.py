"""Dose–response to breakdown (`make dose`): each vector group's setting as chosen on val (its vector
and sign: both CAA positions, both ceilings, each PI group),
and --n-random random directions in both signs, at the KL costs --costs, on the first --n-eval
test questions by id (steerlab/measure/dose.py).

Per direction and cost: the |θ| that costs it on the val neutral texts (eval's search), both
scores, KL and top-1 agreement on the test neutral texts, and one steered greedy sample of
--sample-tokens for the first test neutral prompt and the first open-ended test prompt. A
direction stops after the cost where top-1 agreement falls below one half (the model breaks
there) or that it cannot reach. Writes /<model>/<behavior>/dose/test; `make study`'s page draws
it. Work is saved after every cost (STORE.resume/): a killed run rerun resumes.
"""
import argparse
import hashlib
import time

import numpy as np

from steerlab.base.errors import UserError
from steerlab.base.progress import progress_bar, say
from steerlab.cli import defaults
from steerlab.cli.options import (
    add_neutral,
    add_select_by,
    behavior_items,
    check_kl_max,
    count_or_all,
    main_guard,
    neutral_options,
    parse,
    parser,
    positive_int,
    settings_of,
    unit_norms,
    val_neutral_texts,
)
from steerlab.jobs import resolve_sites
from steerlab.lm.generate import prompt_ids
from steerlab.lm.model import load_model
from steerlab.measure.choice import group_val_choices
from steerlab.measure.dose import check_costs, dose_response
from steerlab.measure.grid import random_directions
from steerlab.measure.neutral import neutral_texts
from steerlab.measure.scores import question_ids, usable_questions
from steerlab.questions.behaviors import open_ended_file, question_stem
from steerlab.questions.data import load_prompts
from steerlab.store import (
    Checkpoint,
    code_version,
    dose_path,
    is_current,
    now,
    read_vector_group,
    run_attrs,
    store_key,
    write_dose,
    writing,
)

RANDOM_SEED_OFFSET = 7919  # the dose ladder's random directions differ from eval's measured draws


def costs_of(text: str) -> list[float]:
    try:
        values = [float(token) for token in text.replace(",", " ").split()]
    except ValueError:
        values = []
    try:
        check_costs(values)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"DOSE_COSTS: {err}") from None
    return values


def run() -> None:
    p = parser(__doc__)
    p.add_argument("--costs", type=costs_of, default=defaults.DOSE_COSTS,
                   help="KL costs in nats per token, increasing: the ladder")
    p.add_argument("--n-eval", type=count_or_all, default=defaults.N_DOSE, metavar="N|all",
                   help="first test questions by id")
    p.add_argument("--n-random", type=int, default=defaults.DOSE_N_RANDOM,
                   help="random directions (each in both signs) on the ladder beside the methods")
    p.add_argument("--sample-tokens", type=positive_int, default=defaults.DOSE_SAMPLE_TOKENS,
                   help="tokens of each steered greedy sample")
    p.add_argument("--kl-max", type=float, default=defaults.KL_MAX, help="the val choice's KL limit")
    add_select_by(p)
    p.add_argument("--seed", type=int, default=defaults.SEED, help="seed of the random directions")
    add_neutral(p)
    p.add_argument("--settings-per-pass", type=positive_int, default=2,
                   help="θ settings stacked in one batch")
    p.set_defaults(batch_size=4)
    p.set_defaults(scale_unit="kl")  # the ladder is in KL; its search's bounds are in units of ‖h_S‖
    args = parse(p, lambda a: check_kl_max(a.kl_max))
    found = group_val_choices(args.store, store_key(args.model), args.behavior, args.kl_max,
                              by=args.select_by)
    if not found:
        raise UserError(f"no val choice in {args.store}: run `make eval SPLITS=val` first")
    groups = {(c.method, c.run): read_vector_group(args.store, store_key(args.model), args.behavior,
                                                   c.method, c.run)
              for c in found}
    layer = groups[(found[0].method, found[0].run)].source_layer
    choices = [c for c in found if groups[(c.method, c.run)].source_layer == layer]
    lm = load_model(args.model, args.dtype, args.device)
    resolve_sites(lm, [layer], args.site)
    labels, directions = [], []
    for c in choices:
        vector = groups[(c.method, c.run)].vectors[c.index].astype(np.float64)
        sign = 1.0 if (c.scale or 1.0) > 0 else -1.0
        labels.append(f"{c.method}/{c.run}/{c.index}")
        directions.append(sign * vector / np.linalg.norm(vector))
    for i, r in enumerate(random_directions(args.n_random, lm.d_model, args.seed + RANDOM_SEED_OFFSET,
                                            layer).numpy()):
        labels += [f"random/{i}/+", f"random/{i}/-"]
        directions += [r, -r]
    items = sorted(behavior_items(args, "test"), key=lambda i: i.id)[: args.n_eval]
    answers, cloze, skipped = usable_questions(lm.tokenizer, items, "both", "both")
    ids = question_ids(answers, cloze, 2)
    open_file = open_ended_file(args.behavior)
    opening = (load_prompts(open_file, "test", 1)[0].text if open_file else question_stem(items[0].question))
    sample_texts = [load_prompts(args.neutral, "test", 1)[0].text, opening]
    settings = settings_of(args, drop=("settings_per_pass", "batch_size"), directions=labels,
                           question_ids=ids,
                           direction_sha=hashlib.sha256(
                               np.stack(directions).astype(np.float32).tobytes()).hexdigest()[:16],
                           layer=layer)
    version = code_version(__spec__.name)
    path = dose_path(lm.key, args.behavior, "test")
    if not args.force and is_current(args.store, path, settings, version):
        say(f"/{path} is up to date (FORCE=1 recomputes it)")
        return
    started, t0 = now(), time.perf_counter()
    unit = unit_norms(args, lm, [layer])[layer].median
    texts = neutral_texts(args.store, lm, "test", load_prompts(args.neutral, "test", args.n_neutral),
                          **neutral_options(args))
    checkpoint = Checkpoint(args.store, path, {"settings": settings, "version": version})
    say(f"… dose ladder {' '.join(f'{c:g}' for c in args.costs)} KL for {len(labels)} directions at layer "
        f"{layer} on {len(ids)} test questions")
    with progress_bar(len(labels) * len(args.costs) * (len(answers) + len(cloze) + len(texts)), "dose",
                      "question×setting") as bar:
        result = dose_response(lm.model, lm.tokenizer, np.stack(directions), args.costs, layer=layer,
                               unit=unit, answers=answers, cloze=cloze,
                               calibration_texts=val_neutral_texts(args, lm), texts=texts,
                               sample_prompts=prompt_ids(lm.tokenizer, sample_texts),
                               sample_tokens=args.sample_tokens, batch_size=args.batch_size,
                               settings_per_pass=args.settings_per_pass, saved=checkpoint.load(),
                               save=checkpoint.save, progress=bar.update)
    samples = np.array([[(cost_samples + ["", ""])[:2] for cost_samples in rows] for rows in result.samples])
    with writing(args.store) as h5:
        write_dose(h5, lm, args.behavior, "test", {
            "labels": np.array(labels), "directions": np.stack(directions).astype(np.float32),
            "costs": np.array(args.costs), "norms": result.norms, "reached": result.reached.astype(np.int8),
            "logit_diff_by_order": result.letter.astype(np.float32),
            "cloze_logprob": result.cloze.astype(np.float32),
            "kl": result.kl.astype(np.float32), "top1": result.top1.astype(np.float32), "samples": samples,
            "sample_prompts": np.array(sample_texts), "baseline_samples": np.array(result.baseline_samples),
            "baseline_logit_diff_by_order": result.baseline_letter.astype(np.float32),
            "baseline_cloze_logprob": result.baseline_cloze.astype(np.float32),
            "question_ids": np.array(ids), "polarity": np.array([c.polarity for c in cloze]),
            "cloze_n_tokens": np.array([[len(c.positive_ids) for c in cloze],
                                        [len(c.negative_ids) for c in cloze]])},
            run_attrs(settings, version, started, time.perf_counter() - t0, skipped=skipped,
                      source_layer=layer, unit_norm=unit))
    checkpoint.discard()
    say(f"wrote /{path} ({time.perf_counter() - t0:.0f}s)")


if __name__ == "__main__":
    main_guard(run)
