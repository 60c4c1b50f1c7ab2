"""What first order needs (`make gradients`): the KL's Fisher at θ = 0, and each question's gradient
of both scores at θ = 0, at source layer --layer.

- /<model>/fisher/L<S>: F (steerlab/lm/fisher.py) on the val neutral texts, the texts a cost is
  measured on, approximated by its top --fisher-k eigenpairs (block power iteration) and the mean
  eigenvalue of the rest (Hutchinson's estimate from --probes probes projected off them).
- /<model>/<behavior>/gradients/<split>/L<S>: for each question of each of --splits, ∂score/∂θ of
  the letter score (order-mean logit difference) and of the cloze score (nats per token), with the
  question ids and polarity classes. train takes the first --n-train train items in file order
  (the pairs CAA averages over); val and test the first --n-eval by id (what eval scores).

The first-order null of the study (steerlab/measure/floor.py) and the ceiling direction (`make
ceiling`) are computed from these. Work is saved beside the store as it goes (STORE.resume/): a
killed run rerun with the same settings resumes.
"""
import time

import numpy as np
import torch

from steerlab.base.progress import progress_bar, say, step
from steerlab.cli import defaults
from steerlab.cli.options import (
    add_neutral,
    behavior_items,
    count_or_all,
    main_guard,
    parse,
    parse_splits,
    parser,
    positive_int,
    settings_of,
    val_neutral_texts,
)
from steerlab.jobs import resolve_sites
from steerlab.lm.fisher import KLFisher, residual_level
from steerlab.lm.model import load_model
from steerlab.measure.gradients import score_gradients
from steerlab.measure.scores import question_ids, usable_questions
from steerlab.methods.power import power_iteration
from steerlab.store import (
    Checkpoint,
    code_version,
    file_checksum,
    fisher_path,
    gradients_path,
    is_current,
    now,
    run_attrs,
    write_fisher,
    write_gradients,
    writing,
)

QUESTIONS_PER_SAVE = 16  # gradients between two saves of the partial work


def validate(args) -> None:
    args.splits = parse_splits(args.splits)


def fisher(args, lm, version: str) -> None:
    """F's top eigenpairs and residual level at the layer, unless current."""
    settings = settings_of(args, drop=("splits", "n_train", "n_eval", "behavior", "data", "batch_size"))
    path = fisher_path(lm.key, args.layer)
    if not args.force and is_current(args.store, path, settings, version):
        say(f"/{path} is up to date (FORCE=1 recomputes it)")
        return
    texts = val_neutral_texts(args, lm)
    started, t0 = now(), time.perf_counter()
    checkpoint = Checkpoint(args.store, path, {"settings": settings, "version": version})
    operator = KLFisher(lm.model, [t.token_ids for t in texts], [t.read_at for t in texts], args.layer,
                        pad_id=lm.tokenizer.pad_token_id)
    with step(f"F at θ = 0 over {len(texts)} val neutral texts ({sum(len(t.read_at) for t in texts)} "
              f"positions): top {args.fisher_k} eigenpairs, {args.fisher_iters} power steps"), \
            progress_bar(args.fisher_iters, "Fisher", "step") as bar:
        saved = checkpoint.load()
        bar.update(len(saved.get("changes", ())))
        result = power_iteration(operator, args.fisher_k, iters=args.fisher_iters,
                                 oversample=args.fisher_oversample, tol=0.0, seed=args.seed,
                                 progress=lambda *_: bar.update(1), saved=saved, save=checkpoint.save)
        residual = residual_level(operator, result.vectors, n_probes=args.probes, seed=args.seed + 1)
    values = (result.sigmas ** 2).numpy()
    say(f"  eigenvalues {values[0]:.3g} … {values[-1]:.3g}; the rest {residual:.3g} on average "
        f"(last subspace change {float(result.subspace_change[-1]):.2g})")
    with writing(args.store) as h5:
        write_fisher(h5, lm, args.layer, {"values": values, "vectors": result.vectors.numpy(),
                                          "residual": np.array(residual),
                                          "subspace_change": result.subspace_change.numpy()},
                     run_attrs(settings, version, started, time.perf_counter() - t0, n_texts=len(texts)))
    checkpoint.discard()


def gradients(args, lm, split: str, version: str) -> None:
    """Both scores' gradients for the split's questions, unless current."""
    items = behavior_items(args, split)
    items = items[: args.n_train] if split == "train" else sorted(items, key=lambda i: i.id)[: args.n_eval]
    answers, cloze, skipped = usable_questions(lm.tokenizer, items, "both", "both")
    ids = question_ids(answers, cloze, 2)
    settings = settings_of(args, drop=("splits", "n_train", "n_eval", "fisher_k", "fisher_oversample",
                                       "fisher_iters", "probes", "seed", "neutral", "n_neutral", "gen_tokens",
                                       "batch_size"),
                           split=split, question_ids=ids, data_checksum=file_checksum(args.data))
    path = gradients_path(lm.key, args.behavior, split, args.layer)
    if not args.force and is_current(args.store, path, settings, version):
        say(f"/{path} is up to date (FORCE=1 recomputes it)")
        return
    started, t0 = now(), time.perf_counter()
    checkpoint = Checkpoint(args.store, path, {"settings": settings, "version": version})
    saved = checkpoint.load()
    n_q = len(ids)
    letter, cloze_grads = np.zeros((n_q, lm.d_model)), np.zeros((n_q, lm.d_model))
    with progress_bar(n_q, f"gradients {split}", "question") as bar:
        for start in range(0, n_q, QUESTIONS_PER_SAVE):
            part = slice(start, start + QUESTIONS_PER_SAVE)
            key = f"q{start}"
            if f"{key}/letter" not in saved:
                questions = range(n_q)[part]
                found = score_gradients(lm.model, [answers[o * n_q + q] for o in range(2) for q in questions],
                                        [cloze[q] for q in questions], 2, args.layer,
                                        pad_id=lm.tokenizer.pad_token_id, batch_size=args.batch_size)
                saved[f"{key}/letter"], saved[f"{key}/cloze"] = found.letter, found.cloze
                checkpoint.save(saved)
            letter[part], cloze_grads[part] = saved[f"{key}/letter"], saved[f"{key}/cloze"]
            bar.update(len(range(n_q)[part]))
    with writing(args.store) as h5:
        write_gradients(h5, lm, args.behavior, split, args.layer,
                        {"question_ids": np.array(ids), "letter": letter.astype(np.float32),
                         "cloze": cloze_grads.astype(np.float32),
                         "polarity": np.array([c.polarity for c in cloze])},
                        run_attrs(settings, version, started, time.perf_counter() - t0, skipped=skipped))
    checkpoint.discard()
    say(f"wrote /{path}: {n_q} questions ({time.perf_counter() - t0:.0f}s)")


def run() -> None:
    p = parser(__doc__)
    p.add_argument("--layer", type=int, default=defaults.LAYER, help="source layer S")
    p.add_argument("--splits", default=defaults.GRADIENT_SPLITS,
                   help="whose questions' gradients: train (the ceiling is fitted there), test (the null)")
    p.add_argument("--n-train", type=count_or_all, default=defaults.N_TRAIN, metavar="N|all",
                   help="first train items by file order (CAA's pairs)")
    p.add_argument("--n-eval", type=count_or_all, default=defaults.N_EVAL, metavar="N|all",
                   help="first val/test questions by id (eval's)")
    p.add_argument("--fisher-k", type=positive_int, default=defaults.FISHER_K,
                   help="eigenpairs of F kept exactly (the rest is one level)")
    p.add_argument("--fisher-oversample", type=int, default=defaults.FISHER_OVERSAMPLE,
                   help="extra columns of F's power iteration")
    p.add_argument("--fisher-iters", type=positive_int, default=defaults.FISHER_ITERS,
                   help="power steps on F (each costs k + oversample products)")
    p.add_argument("--probes", type=positive_int, default=defaults.FISHER_PROBES,
                   help="Hutchinson probes for the level of F outside its top eigenpairs")
    p.add_argument("--seed", type=int, default=defaults.SEED, help="seed of F's start block and probes")
    add_neutral(p)
    p.set_defaults(batch_size=4)
    args = parse(p, validate)
    version = code_version(__spec__.name)
    lm = load_model(args.model, args.dtype, args.device)
    resolve_sites(lm, [args.layer], args.site)
    torch.manual_seed(args.seed)
    fisher(args, lm, version)
    for split in args.splits:
        gradients(args, lm, split, version)


if __name__ == "__main__":
    main_guard(run)
