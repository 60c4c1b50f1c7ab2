"""Check the cloze score and the .lm-eval.pt export in lm-evaluation-harness itself.

Exports the stored vector --vector (default: CAA read on the answer texts at --layer) at --scale
as lm-eval's `steered` file, as `make export` writes it, and twice more with its hook point
shifted to layers.S-1 and layers.S+1 (deliberately wrong files). Writes the first --questions
test questions of --behavior (by id) as a local lm-eval multiple-choice task (the stem as the
user turn, chat template applied; the two answer texts as choices, no delimiter), runs lm-eval's
`hf` model and its `steered` model with each file, and sets each question's log-likelihood
difference (positive − negative answer text) beside this project's cloze numbers, unsteered and
steered (steerlab/interop/harness.py).

Passes when the unsteered and steered differences agree within --tolerance nats, and the
steering change of the right file correlates with ours at --min-correlation or more and better
than either shifted file by --margin; exits 1 otherwise. Writes RESULTS/check-lm-eval/agreement.md.
Needs lm_eval: `make check-lm-eval` runs it in .venv-lmeval (requirements-lmeval.txt).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from steerlab.base.errors import UserError
from steerlab.base.progress import say, step
from steerlab.cli import defaults
from steerlab.cli.checks import add_check_vector, check_vector
from steerlab.cli.options import (
    behavior_items,
    main_guard,
    parse,
    parser,
    positive_int,
)
from steerlab.interop.export import lm_eval_hook_point, write_lm_eval
from steerlab.interop.harness import (
    compare,
    harness_loglikelihoods,
    pair_difference,
    whitespace_term,
    write_task,
)
from steerlab.lm.model import load_model
from steerlab.measure.cloze import cloze_logprobs
from steerlab.questions.cloze_form import cloze_items, stem_and_answers

# this project's name -> lm-eval's
HARNESS_DTYPES = {"fp32": "float32", "fp64": "float64", "bf16": "bfloat16"}


def run() -> None:
    p = parser(__doc__)
    add_check_vector(p, "lm-eval and this project")
    p.add_argument("--questions", type=positive_int, default=int(defaults.CHECK_QUESTIONS),
                   help="test questions compared (the first by id that have a cloze form)")
    p.add_argument("--tolerance", type=float, default=1e-3,
                   help="largest |lm-eval − ours| allowed in a question's pair difference, nats")
    p.add_argument("--min-correlation", type=float, default=0.999)
    p.add_argument("--margin", type=float, default=0.05,
                   help="how much better than a shifted file the right one must correlate")
    p.add_argument("--out", default=str(Path(defaults.RESULTS) / "check-lm-eval"))

    def validate(args) -> None:
        try:
            import lm_eval  # noqa: F401
        except ImportError:
            raise UserError("lm_eval is not installed here: `make check-lm-eval` runs this in .venv-lmeval "
                            "(requirements-lmeval.txt)") from None
        if not np.isfinite(args.scale) or args.scale == 0:
            raise UserError(f"--scale must be finite and not 0, got {args.scale}")
        if args.layer < 1:
            raise UserError("--layer must be 1 or more: the check also writes the file for layers.S-1")

    args = parse(p, validate)
    lm = load_model(args.model, args.dtype, args.device)
    lm.check_layer(args.layer + 1, "layer + 1 (the shifted file)")
    vector_name, choice, right = check_vector(args, lm)
    items = sorted(behavior_items(args, "test"), key=lambda item: item.id)
    cloze, _ = cloze_items(lm.tokenizer, items)
    cloze = cloze[:args.questions]
    if len(cloze) < 2:
        raise UserError(f"{args.behavior} has {len(cloze)} test questions with a cloze form; "
                        "the check needs 2")
    by_id = {item.id: item for item in items}
    questions = [stem_and_answers(by_id[c.item_id]) for c in cloze]

    theta = torch.from_numpy(np.array(right.vector, dtype=np.float32))
    thetas = torch.stack([torch.zeros_like(theta), theta])
    with step(f"this project's cloze scores: {len(cloze)} questions, unsteered and steered"):
        ours = cloze_logprobs(lm.model, cloze, args.layer, thetas, pad_id=lm.tokenizer.pad_token_id).numpy()
    ours = ours.transpose(0, 2, 1)  # [setting, question, (positive, negative)]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task = write_task(out / "task", args.behavior, questions)
    files = {shift: out / f"{lm.key}-{choice.method}-{choice.run}-{choice.index}-shift{shift:+d}.lm-eval.pt"
             for shift in (0, -1, +1)}
    for shift, path in files.items():
        write_lm_eval(path, dataclasses.replace(right, source_layer=args.layer + shift))
    dtype = HARNESS_DTYPES[lm.dtype]
    theirs = {}
    for shift in (None, 0, -1, +1):
        label = "hf (unsteered)" if shift is None else f"steered, {lm_eval_hook_point(args.layer + shift)}"
        with step(f"lm-eval {label}: {len(questions)} questions"):
            theirs[shift] = harness_loglikelihoods(args.model, out / "task", task, dtype=dtype,
                                                   steer_path=None if shift is None else files[shift])

    base, moved = pair_difference(ours[0]), pair_difference(ours[1])
    unsteered = compare("unsteered: positive − negative", pair_difference(theirs[None]), base)
    steered = compare(f"steered ({lm_eval_hook_point(args.layer)}): positive − negative",
                      pair_difference(theirs[0]), moved)
    change = {shift: compare(f"steering change, {lm_eval_hook_point(args.layer + shift)}"
                             + (" (right)" if shift == 0 else " (shifted)"),
                             pair_difference(theirs[shift]) - pair_difference(theirs[None]), moved - base)
              for shift in (0, -1, +1)}
    surplus, spread = whitespace_term(theirs[None], ours[0])
    lines = [
        f"# lm-evaluation-harness round trip: {vector_name} at {args.scale:+g} ({args.scale_unit}; "
        f"|θ| = {abs(choice.scale):.1f}), {lm.key}", "",
        f"{len(questions)} test questions of {args.behavior} as lm-eval task `{task}` (chat template, "
        f"choices without delimiter), lm-eval's `hf` and `steered` models in {dtype}. Per answer, lm-eval's "
        f"log-likelihood also holds the template's trailing newline, which it moves into the continuation: "
        f"up to {surplus:.3f} nats, the same for a question's two answers within {spread:.1e}; the pair "
        "difference cancels it.", "",
        "| numbers compared (per question, nats) | correlation | max abs difference | max abs (ours) |",
        "|---|---|---|---|",
        unsteered.row(), steered.row(), change[0].row(), change[-1].row(), change[+1].row(),
    ]
    (out / "agreement.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    best_wrong = max(change[-1].correlation, change[+1].correlation)
    failures = [f"{a.label} differs by {a.max_abs_difference:.2e} > {args.tolerance}"
                for a in (unsteered, steered, change[0]) if not a.max_abs_difference <= args.tolerance]
    if not (change[0].correlation >= args.min_correlation
            and change[0].correlation >= best_wrong + args.margin):
        failures.append(f"the right file's change correlates at {change[0].correlation:.6f} (needs ≥ "
                        f"{args.min_correlation} and ≥ {best_wrong:.3f} + {args.margin})")
    if failures:
        say("FAILED: " + "; ".join(failures))
        raise SystemExit(1)
    say(f"passed: lm-eval's steered model adds {lm_eval_hook_point(args.layer)} where this project adds θ; "
        f"the shifted files' changes correlate at {change[-1].correlation:.3f} and "
        f"{change[+1].correlation:.3f}")


if __name__ == "__main__":
    main_guard(run)
