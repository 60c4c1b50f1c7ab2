"""Completions of the unsteered model and of steered ones, side by side.

Without --vector: every method's vector and scale chosen on validation (as `make report` and
`make export` choose them, KL on neutral text at most --kl-max; the random control is left out). With --vector
METHOD/RUN/INDEX: that stored vector at each of --scales (signed L2 norms of what is added). The unsteered
model always comes first. θ = scale × unit vector is added at the vector's source layer, at every position,
generated tokens included. Prompts: the first --n-open open-ended questions of the behaviour
(data/<behavior>-open-ended.jsonl; for a behaviour without such a file, the stems of its A/B
questions, choices removed) and the first --n-neutral neutral prompts of --split. Greedy unless --sample (then
seeded by --seed). Texts and settings go to the store (/<model>/<behavior>/generations/<name>), and
<out>/<behavior>/generations.md gets a markdown page with every setting's completion of each prompt.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import numpy as np

from steerlab.base.errors import UserError
from steerlab.base.files import REPO_ROOT
from steerlab.base.parallel import ranks
from steerlab.base.progress import progress_bar, say, step
from steerlab.cli import defaults
from steerlab.cli.options import (
    add_scale_unit,
    add_select_by,
    check_kl_max,
    main_guard,
    parse,
    parser,
    scale_list,
    settings_of,
)
from steerlab.jobs import resolve_sites
from steerlab.lm.generate import Setting, check_max_new_tokens, generate_settings
from steerlab.lm.model import load_model
from steerlab.measure.choice import generation_settings, parse_vector
from steerlab.questions.behaviors import behavior_prompts, open_ended_file
from steerlab.questions.data import SPLITS
from steerlab.render.generations import write_generations_page
from steerlab.store import (
    code_version,
    file_checksum,
    generations_datasets,
    generations_name,
    generations_path,
    is_current,
    now,
    run_attrs,
    store_key,
    write_generations,
    writing,
)


def validate(args: argparse.Namespace) -> None:
    check_max_new_tokens(args.max_new_tokens)
    if args.n_open < 0 or args.n_neutral < 0:
        raise UserError(f"prompt counts must be 0 or more, got {args.n_open} and {args.n_neutral}")
    args.open_ended = args.open_ended or open_ended_file(args.behavior)
    check_kl_max(args.kl_max)
    if args.scales is not None and args.vector is None:
        raise UserError("SCALES needs VECTOR=method/run/index (the val choice brings its own scale)")
    if args.vector is not None:
        parse_vector(args.vector)


def run() -> None:
    p = parser(__doc__)
    p.add_argument("--out", default=defaults.RESULTS,
                   help="folder of the markdown page: <out>/<behavior>/generations.md")
    p.add_argument("--open-ended", default=defaults.OPEN_ENDED or None,
                   help="open-ended prompts (JSONL: id, text, split, ...); default "
                        "data/<behavior>-open-ended.jsonl, or the behaviour's question stems")
    p.add_argument("--neutral", default=str(REPO_ROOT / defaults.NEUTRAL),
                   help="neutral prompts (same format)")
    p.add_argument("--n-open", type=int, default=defaults.OPEN_PROMPTS,
                   help="first N open-ended prompts of the split")
    p.add_argument("--n-neutral", type=int, default=defaults.NEUTRAL_PROMPTS,
                   help="first N neutral prompts of the split")
    p.add_argument("--split", default="test", choices=SPLITS, help="split the prompts are taken from")
    p.add_argument("--vector", default=None, metavar="METHOD/RUN/INDEX",
                   help="this stored vector instead of each method's choice on val")
    p.add_argument("--kl-max", type=float, default=defaults.KL_MAX,
                   help="without --vector: choose as the report does, among settings with mean KL ≤ this")
    add_select_by(p)
    p.add_argument("--scales", type=scale_list, default=None,
                   help=f"with --vector: signed scales in --scale-unit (fractions of ‖h_S‖, or L2 norms of "
                        f"θ); default {defaults.SCALES!r}")
    add_scale_unit(p)
    p.add_argument("--max-new-tokens", type=int, default=defaults.MAX_NEW_TOKENS,
                   help="length of each completion")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--seed", type=int, default=defaults.SEED, help="with --sample: the RNG seed")
    p.set_defaults(batch_size=8)  # prompts per generate call
    args = parse(p, validate)

    # Everything that can be wrong with the input is found before the model loads.
    prompts = behavior_prompts(args.behavior, args.data, args.split, args.n_open, args.open_ended,
                               args.neutral, args.n_neutral)
    if not prompts:
        raise UserError("no prompts: N_OPEN and N_NEUTRAL are both 0")
    key = store_key(args.model)
    steered, notes = generation_settings(args.store, key, args.behavior, vector=args.vector,
                                         scales=args.scales or scale_list(defaults.SCALES),
                                         scale_unit=args.scale_unit, kl_max=args.kl_max,
                                         select_by=args.select_by, site=args.site)
    for note in notes:
        say(note)
    rows = [Setting("unsteered"), *steered]
    name = generations_name(args.vector and parse_vector(args.vector), args.sample, args.seed)
    version = code_version(__spec__.name)
    checksums = {str(path): file_checksum(path) for path, n in
                 ((args.open_ended or args.data, args.n_open), (args.neutral, args.n_neutral)) if n}
    settings = settings_of(args, drop=("out",), prompt_checksums=checksums,
                           rows=[row.record() for row in rows])

    where = generations_path(key, args.behavior, name)
    if ranks().same(not args.force and is_current(args.store, where, settings, version)):
        say(f"{where} is up to date (FORCE=1 generates again)")
    else:
        with step(f"loading {args.model} ({args.dtype})"):
            lm = load_model(args.model, args.dtype, args.device)
        sites = resolve_sites(lm, [row.source_layer for row in rows[1:]], args.site)
        rows = [row if row.vector is None
                else replace(row, vector=replace(row.vector, site=sites[row.source_layer]))
                for row in rows]
        started, t0 = now(), time.perf_counter()
        n_batches = -(-len(ranks().span(len(prompts))) // args.batch_size)  # this rank's
        with progress_bar(len(rows) * n_batches, "generating", "batch") as bar:
            def finished(row: Setting, out) -> None:
                if ranks().writer:
                    bar.write(f"{row.label}: {out.n_tokens} tokens in {out.seconds:.1f}s "
                              f"({out.n_tokens / out.seconds:.1f} tokens/s)", file=sys.stderr)

            outs = generate_settings(lm.model, lm.tokenizer, [prompt.text for _, prompt in prompts], rows,
                                     max_new_tokens=args.max_new_tokens, sample=args.sample, seed=args.seed,
                                     batch_size=args.batch_size, progress=bar.update, finished=finished,
                                     ranks=ranks())
        if ranks().writer:
            datasets = generations_datasets([(kind, p.id, p.text) for kind, p in prompts],
                                            [row.record() for row in rows],
                                            np.stack([np.zeros(lm.d_model, np.float32) if row.theta is None
                                                      else row.theta for row in rows]),
                                            [out.texts for out in outs],
                                            [[len(tokens) for tokens in out.tokens] for out in outs],
                                            [out.seconds for out in outs])
            with writing(args.store) as h5:
                write_generations(h5, lm, args.behavior, name, datasets,
                                  run_attrs(settings, version, started, time.perf_counter() - t0))
        say(f"wrote {where}")
    if not ranks().writer:
        return

    say(f"wrote {write_generations_page(args.store, where, key, args.behavior, args.out)}")


if __name__ == "__main__":
    main_guard(run)
