"""Does a vector move the behaviour, or the score's form? (`make transfer`): the val choice of every
group of --behavior's --methods (default the ceiling's and CAA's), each at the θ val chose, on the
first --n-eval test questions of every behaviour in --behaviors, in both scores beside the
unsteered model.

A direction fitted to a score can learn that score's form (answer length, punctuation, a polarity
the paired mean only partly cancels) rather than the behaviour. Such a direction moves every
behaviour's positive answers alike; one that carries the behaviour moves the related ones
(power-seeking, corrigibility the other way) and leaves the unrelated ones (myopic reward) alone.
Writes /<model>/<behavior>/transfer/<other behaviour> (the settings' letter and cloze scores per
question); `make study`'s page reads it.
"""
import time

import numpy as np
import torch

from steerlab.base.errors import UserError
from steerlab.base.progress import progress_bar, say
from steerlab.cli import defaults
from steerlab.cli.options import (
    add_select_by,
    check_kl_max,
    count_or_all,
    main_guard,
    parse,
    parser,
    settings_of,
)
from steerlab.jobs import resolve_sites
from steerlab.lm.model import load_model
from steerlab.measure.choice import group_val_choices, theta_of
from steerlab.measure.scores import question_ids, score, usable_questions
from steerlab.questions.behaviors import check_name, data_file, items_of
from steerlab.store import (
    code_version,
    is_current,
    now,
    run_attrs,
    store_key,
    transfer_path,
    write_transfer,
    writing,
)


def run() -> None:
    p = parser(__doc__)
    p.add_argument("--behaviors", default=defaults.BEHAVIORS,
                   help="the behaviours whose test questions are asked")
    p.add_argument("--methods", default=defaults.TRANSFER_METHODS, help="whose val choices are carried over")
    p.add_argument("--n-eval", type=count_or_all, default=defaults.TRANSFER_N_EVAL, metavar="N|all",
                   help="first test questions by id of each behaviour")
    p.add_argument("--kl-max", type=float, default=defaults.KL_MAX, help="the val choice's KL limit")
    add_select_by(p)
    p.set_defaults(batch_size=4)
    args = parse(p, lambda a: check_kl_max(a.kl_max))
    behaviors = args.behaviors.split()
    for name in behaviors:
        check_name(name)
    key = store_key(args.model)
    methods = args.methods.split()
    choices = group_val_choices(args.store, key, args.behavior, args.kl_max, by=args.select_by,
                                methods=methods)
    if not choices:
        raise UserError(f"no val choice of {', '.join(methods)} for {args.behavior} in {args.store}: "
                        "run `make eval SPLITS=val` (and `make ceiling`) first")
    thetas, layers = [], set()
    for c in choices:
        theta, group = theta_of(args.store, key, args.behavior, c)
        thetas.append(torch.from_numpy(theta.astype(np.float64)))
        layers.add(group.source_layer)
    if len(layers) != 1:
        raise UserError(f"the choices sit at layers {sorted(layers)}: carry one layer's over at a time")
    layer = layers.pop()
    labels = [f"{c.method}/{c.run}/{c.index}" for c in choices]
    lm = load_model(args.model, args.dtype, args.device)
    resolve_sites(lm, [layer], args.site)
    version = code_version(__spec__.name)
    stack = torch.cat([torch.zeros(1, lm.d_model, dtype=torch.float64), torch.stack(thetas)])
    for other in behaviors:
        items = sorted(items_of(data_file(other), other, "test"), key=lambda i: i.id)[: args.n_eval]
        answers, cloze, skipped = usable_questions(lm.tokenizer, items, "both", "both")
        ids = question_ids(answers, cloze, 2)
        settings = settings_of(args, drop=("behaviors", "batch_size"), other=other, labels=labels,
                               question_ids=ids, theta_norms=[round(float(t.norm()), 6) for t in thetas],
                               layer=layer)
        path = transfer_path(lm.key, args.behavior, other)
        if not args.force and is_current(args.store, path, settings, version):
            say(f"/{path} is up to date (FORCE=1 recomputes it)")
            continue
        started, t0 = now(), time.perf_counter()
        with progress_bar(len(stack) * (len(answers) + len(cloze)), f"transfer to {other}",
                          "question×setting") as bar:
            scored = score(lm.model, answers, 2, [], source_layer=layer, thetas=stack,
                           pad_id=lm.tokenizer.pad_token_id, batch_size=args.batch_size, settings_per_pass=2,
                           progress=bar.update, cloze=cloze)
        with writing(args.store) as h5:
            write_transfer(h5, lm, args.behavior, other, {
                "labels": np.array(["unsteered", *labels]), "question_ids": np.array(ids),
                "logit_diff_by_order": scored.logit_diff.astype(np.float32),
                "cloze_logprob": scored.cloze.astype(np.float32),
                "polarity": np.array([c.polarity for c in cloze]),
                "cloze_n_tokens": np.array([[len(c.positive_ids) for c in cloze],
                                            [len(c.negative_ids) for c in cloze]])},
                run_attrs(settings, version, started, time.perf_counter() - t0, skipped=skipped,
                          source_layer=layer))
        say(f"wrote /{path}: {len(labels)} settings on {len(ids)} {other} test questions")


if __name__ == "__main__":
    main_guard(run)
