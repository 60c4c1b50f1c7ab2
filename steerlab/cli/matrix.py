"""Does a direction found for one behaviour move the others? The cross-behaviour matrix.

For each behaviour in --behaviors: its --method vectors (stored by `make <method> BEHAVIOR=...`)
are evaluated on its own validation questions at --scales (KL on neutral text), and the setting
the report would choose is taken (the largest --select-by score among settings that keep the
answer mass and cost at most --kl-max nats per token). Then every chosen θ, N_RANDOM random
directions at each chosen scale and the unsteered model are evaluated on every behaviour's test
questions, in one pass per source layer over all behaviours' questions, in each score of --score:

- letter: cell (row b, column c) = Δ of the order-mean logit difference on c's test questions
  (both answer orders), steered by b's θ minus unsteered;
- cloze: cell = the polarity-paired Δ of the cloze preference (each answer's text after the stem,
  nats per token; the mean over c's polarity classes of their mean Δ), with its polarity shift.

Paired 95% bootstrap intervals (cloze: resampled within each polarity class); the random rows are
the reference a cell has to beat.

Writes /<model>/matrix/<method> (every per-question number, the choices and the tables; cloze
datasets prefixed cloze_) and <out>/matrix_<method>.md with <out>/matrix_<method>.png (letter) and
<out>/matrix_<method>_cloze.png (cloze).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from steerlab.base.errors import UserError
from steerlab.base.progress import say, step
from steerlab.cli import defaults
from steerlab.cli.options import (
    add_neutral,
    add_scale_unit,
    add_select_by,
    check_kl_max,
    count_or_all,
    main_guard,
    neutral_options,
    parse,
    parse_scales,
    parser,
    positive_int,
    settings_of,
    unit_norms,
)
from steerlab.jobs import resolve_sites
from steerlab.lm.model import load_model
from steerlab.lm.steered import QUESTIONS_PER_PASS
from steerlab.measure.matrix import cross_behaviour, matrix_datasets, questions_by_split, val_layer
from steerlab.measure.neutral import neutral_texts
from steerlab.measure.scores import SCORE_SETS
from steerlab.questions.behaviors import data_file
from steerlab.questions.data import load_items, load_prompts
from steerlab.render.matrix import write_matrix_page
from steerlab.store import (
    code_version,
    file_checksum,
    matrix_path,
    now,
    read_vector_groups,
    run_attrs,
    store_key,
    write_matrix,
    writing,
)

METHODS = ("caa", "pi", "pi_caa", "melbo")


def validate(args) -> None:
    args.behaviors = args.behaviors.replace(",", " ").split()
    if len(args.behaviors) < 2 or len(set(args.behaviors)) != len(args.behaviors):
        raise UserError(f"BEHAVIORS must name two or more different behaviours, got {args.behaviors}")
    args.data_files = {name: str(data_file(name)) for name in args.behaviors}  # unknown: lists the known
    args.scales = parse_scales(args.scales)
    check_kl_max(args.kl_max)


def run() -> None:
    p = parser(__doc__, behavior=False)
    p.add_argument("--behaviors", default=defaults.BEHAVIORS,
                   help="behaviours, e.g. 'survival-instinct myopic-reward'")
    p.add_argument("--method", choices=METHODS, default=defaults.METHOD,
                   help="whose vectors each behaviour contributes")
    p.add_argument("--scales", default=defaults.SCALES,
                   help="scales the val choice is made among, in --scale-unit")
    add_scale_unit(p)
    p.add_argument("--score", choices=SCORE_SETS, default=defaults.SCORE,
                   help="the cells' score: letter (order-mean logit difference), cloze (polarity-paired "
                        "preference for the behaviour's answer text) or both (a table and figure each)")
    add_select_by(p)
    p.add_argument("--n-eval", type=count_or_all, default=defaults.MATRIX_N_EVAL, metavar="N|all",
                   help="questions per behaviour and split")
    p.add_argument("--max-vectors", type=count_or_all, default=defaults.EVAL_K, metavar="N|all",
                   help="the first N vectors of each group take part in the val choice")
    p.add_argument("--n-random", type=positive_int, default=defaults.MATRIX_N_RANDOM,
                   help="random directions per chosen scale (the reference rows)")
    p.add_argument("--seed", type=int, default=defaults.SEED, help="seed of the random directions")
    p.add_argument("--kl-max", type=float, default=defaults.KL_MAX,
                   help="choose on val only among settings with mean KL on neutral text ≤ this")
    add_neutral(p)
    p.add_argument("--out", default=defaults.RESULTS, help="folder for matrix_<method>.png and .md")
    p.set_defaults(batch_size=QUESTIONS_PER_PASS)
    args = parse(p, validate)

    items = {split: {name: sorted(load_items(args.data_files[name], split), key=lambda i: i.id)[: args.n_eval]
                     for name in args.behaviors} for split in ("val", "test")}
    neutral = {split: load_prompts(args.neutral, split, args.n_neutral) for split in ("val", "test")}
    key = store_key(args.model)
    groups = {}
    for name in args.behaviors:
        groups[name] = read_vector_groups(args.store, key, name, method=args.method)
        if not groups[name]:
            raise UserError(f"no {args.method} vectors of {name} for {key} in {args.store}: run "
                            f"`make {args.method} BEHAVIOR={name}` (make matrix does) first")
        for group in groups[name]:
            group.vectors = group.vectors[: args.max_vectors]

    with step(f"loading {args.model} ({args.dtype})"):
        lm = load_model(args.model, args.dtype, args.device)
    sites = resolve_sites(lm, [g.source_layer for gs in groups.values() for g in gs], args.site)
    questions = questions_by_split(lm.tokenizer, items, args.score)
    texts = {split: neutral_texts(args.store, lm, split, prompts, **neutral_options(args))
             for split, prompts in neutral.items()}

    started, t0 = now(), time.perf_counter()
    units = {}
    for name in args.behaviors:
        unit = unit_norms(args, lm, [val_layer(groups[name])], behavior=name, data=args.data_files[name])
        units[name] = unit[val_layer(groups[name])].median if unit else None
    sources, measured = cross_behaviour(
        lm, groups, questions, texts, method=args.method, scales=args.scales, scale_unit=args.scale_unit,
        units=units, select_by=args.select_by, kl_max=args.kl_max, scores=args.score, n_random=args.n_random,
        seed=args.seed, batch_size=args.batch_size, store=args.store)
    tables = measured.tables
    seconds = time.perf_counter() - t0
    settings = settings_of(args, drop=("out", "data_files"), data_checksums={
        name: file_checksum(path) for name, path in args.data_files.items()})
    with writing(args.store) as h5:
        write_matrix(h5, lm, args.method, matrix_datasets(sources, measured),
                     run_attrs(settings, code_version(__spec__.name), started, seconds,
                               behaviors=args.behaviors, kl_max=args.kl_max, scores=list(tables),
                               sites=json.dumps({str(k): v for k, v in sites.items()})))
    say(f"wrote {matrix_path(lm.key, args.method)} in {seconds:.0f}s")
    page, figures = write_matrix_page(Path(args.out), measured, sources, lm.key, method=args.method,
                                      select_by=args.select_by, kl_max=args.kl_max, n_eval=args.n_eval,
                                      n_random=args.n_random, scale_unit=args.scale_unit)
    print(page.read_text(encoding="utf-8"))
    say(f"wrote {page} and {', '.join(map(str, figures))}")


if __name__ == "__main__":
    main_guard(run)
