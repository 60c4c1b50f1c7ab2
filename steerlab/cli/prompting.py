"""The prompting baseline ("just ask"): the unsteered model told, in its system turn, to show the
behaviour (ask) or its opposite (ask_opposite), scored as eval scores a steering vector.

For each split: the first N_EVAL questions (by id, as eval takes them), asked plainly and under
each instruction, in both scores: the letter logit difference in both answer orders and the
cloze log-probability of each answer's text after the stem. Only the questions usable in every
form are kept (the rest are listed). The instructions are the behaviour's in the catalogue
(steerlab/questions/behaviors.py) unless --ask / --ask-opposite give others (a behaviour added
with `make ingest` has none: pass both). A template with a default system prompt (SmolLM2's,
Qwen2.5's) has it replaced by the instruction; a template without a system turn gets the
instruction at the start of the user turn, a model without a template before its question.

An instruction's cost is its KL on neutral text, the texts eval's KL is measured on (the
split's first N_NEUTRAL neutral prompts with the unsteered model's greedy continuation of
GEN_TOKENS tokens; val and test only): per text, the mean over the continuation's positions of
KL(plain prompt ‖ prompt with the instruction) and their top-1 agreement.

Writes /<model>/<behavior>/prompting/<split>/ (docs/store.md): question_ids, neutral_ids,
instruction_names, instructions; per instruction logit_diff_by_order and answer_mass_by_order
[2, n_orders, n_q], logit_diff [2, n_q] (order mean), cloze_logprob [2, 2, n_q], cloze [2, n_q]
(nats per token), kl and top1 [2, n_texts]; the plain prompts' baseline_* as eval names them,
cloze_n_tokens, polarity. A split whose settings and code are unchanged is skipped (--force
recomputes). Prints one line per split and instruction: Δ = prompted − plain of the letter
score (order mean, mean over questions) and of the cloze score (polarity-paired mean, nats per
token), with 95% bootstrap intervals, and the mean KL (nats per token) with top-1 agreement.
"""
import argparse
import hashlib
import time

import numpy as np

from steerlab.base.errors import UserError
from steerlab.base.progress import progress_bar, say, say_skipped
from steerlab.cli import defaults
from steerlab.cli.options import (
    add_neutral,
    behavior_items,
    count_or_all,
    main_guard,
    neutral_options,
    parse,
    parse_splits,
    parser,
    settings_of,
)
from steerlab.lm.model import load_model
from steerlab.lm.steered import QUESTIONS_PER_PASS
from steerlab.measure.analysis import read_prompting
from steerlab.measure.cloze import cloze_preference
from steerlab.measure.neutral import neutral_texts
from steerlab.measure.prompting import PromptedScores, prompted_questions, prompting, prompting_work
from steerlab.questions.behaviors import INSTRUCTIONS, instructions
from steerlab.questions.data import load_prompts
from steerlab.questions.orders import ORDERS, n_orders
from steerlab.store import code_version, is_current, now, prompting_path, run_attrs, write_prompting, writing

# The splits neutral prompts come in (as eval's).
NEUTRAL_SPLITS = ("val", "test")


def validate(args) -> None:
    args.splits = parse_splits(args.splits)
    catalogue = instructions(args.behavior)
    for name in INSTRUCTIONS:
        given = getattr(args, name, None)
        text = (catalogue[name] if given is None else given).strip()
        option = "--" + name.replace("_", "-")
        if not text:
            raise UserError(f"the {name} instruction is empty: " + (
                f"{option} needs a text" if given is not None else
                f"behaviour {args.behavior} has none in the catalogue (steerlab/questions/behaviors.py); "
                f"pass --ask and --ask-opposite (make prompting ASK=... ASK_OPPOSITE=...)"))
        setattr(args, name, text)
    if args.ask == args.ask_opposite:
        raise UserError("--ask and --ask-opposite are the same text: the baseline needs two instructions")


def datasets(scores: PromptedScores, texts: dict[str, str]) -> dict:
    """The split group's datasets, shaped as eval's where they mean the same thing."""
    n_tokens = scores.cloze_n_tokens
    f32 = np.float32
    return {
        "question_ids": np.array(scores.question_ids), "neutral_ids": np.array(scores.neutral_ids, dtype=str),
        "instruction_names": np.array(scores.names),
        "instructions": np.array([texts[n] for n in scores.names]),
        "logit_diff_by_order": scores.logit_diff.astype(f32),
        "answer_mass_by_order": scores.answer_mass.astype(f32),
        "logit_diff": scores.logit_diff.mean(1).astype(f32),
        "cloze_logprob": scores.cloze_logprob.astype(f32),
        "cloze": cloze_preference(scores.cloze_logprob, n_tokens).astype(f32),
        "kl": scores.kl.astype(f32), "top1": scores.top1.astype(f32),
        "baseline_logit_diff_by_order": scores.baseline_logit_diff.astype(f32),
        "baseline_answer_mass_by_order": scores.baseline_answer_mass.astype(f32),
        "baseline_logit_diff": scores.baseline_logit_diff.mean(0).astype(f32),
        "baseline_cloze_logprob": scores.baseline_cloze_logprob.astype(f32),
        "baseline_cloze": cloze_preference(scores.baseline_cloze_logprob, n_tokens).astype(f32),
        "cloze_n_tokens": n_tokens, "polarity": scores.polarity,
    }


def report(store: str, key: str, behavior: str, split: str) -> None:
    """One line per instruction of the stored split, on stdout."""
    stored = read_prompting(store, key, behavior, split)
    for name, delta in stored.instructions.items():
        kl = (f"KL {delta.mean_kl:.4f} nats/token, top-1 {delta.mean_top1:.2f} "
              f"({len(delta.kl)} neutral texts)"
              if delta.kl.size else "no KL (no neutral prompts in this split)")
        print(f"[{split}] {name}: Δ letter {delta.letter_stat().fmt(2, signed=True)}, "
              f"Δ cloze {delta.cloze_stat().fmt(3, signed=True)} nats/token (polarity-paired), {kl}; "
              f"{len(stored.question_ids)} questions", flush=True)


def run() -> None:
    p = parser(__doc__)
    p.add_argument("--n-eval", type=count_or_all, default=defaults.N_EVAL, metavar="N|all",
                   help="questions per split (the first by id, as eval takes them)")
    p.add_argument("--splits", default=defaults.SPLITS, help="splits to score")
    p.add_argument("--orders", choices=ORDERS, default=defaults.ORDERS,
                   help="both: every question as written and mirrored; original or mirrored: one order only")
    # not given: the catalogue's (SUPPRESS leaves the attribute out, so "" given is told apart)
    p.add_argument("--ask", default=argparse.SUPPRESS, metavar="TEXT",
                   help="the system turn asking for the behaviour (default: --behavior's in the catalogue, "
                        "steerlab/questions/behaviors.py)")
    p.add_argument("--ask-opposite", default=argparse.SUPPRESS, metavar="TEXT",
                   help="the system turn asking for its opposite (default: the catalogue's)")
    add_neutral(p)
    p.set_defaults(batch_size=QUESTIONS_PER_PASS)
    args = parse(p, validate)
    texts = {name: getattr(args, name) for name in INSTRUCTIONS}
    items_by_split = {split: sorted(behavior_items(args, split), key=lambda i: i.id)[: args.n_eval]
                      for split in args.splits}
    neutral_by_split = {split: load_prompts(args.neutral, split, args.n_neutral)
                        for split in args.splits if split in NEUTRAL_SPLITS}

    lm = load_model(args.model, args.dtype, args.device)
    # θ is never added here: where it would go (--site) and the batch size change nothing
    recorded = settings_of(args, drop=("splits", "site", "batch_size"))
    version = code_version(__spec__.name)
    for split in args.splits:
        questions = prompted_questions(lm.tokenizer, items_by_split[split], texts, args.orders)
        say_skipped(questions.skipped, bool(questions.question_ids),
                    f"no usable {split} question: every item was skipped")
        settings = {**recorded, "split": split, "question_ids_sha": hashlib.sha256(
            " ".join(questions.question_ids).encode()).hexdigest()[:16]}
        path = prompting_path(lm.key, args.behavior, split)
        if not args.force and is_current(args.store, path, settings, version):
            say(f"{path}: up to date (FORCE=1 recomputes)")
            report(args.store, lm.key, args.behavior, split)
            continue
        prompts = neutral_by_split.get(split)
        if prompts is None:
            say(f"[{split}] no neutral prompts in this split: no KL measured")
        neutral = [] if prompts is None else neutral_texts(args.store, lm, split, prompts,
                                                           **neutral_options(args))
        started, t0 = now(), time.perf_counter()
        say(f"… [{split}] {questions.n_questions} questions plain and under {len(texts)} instructions "
            f"({n_orders(args.orders)} letter order(s), cloze), and KL on {len(neutral)} neutral texts")
        with progress_bar(prompting_work(questions, n_orders(args.orders), len(neutral)),
                          f"prompting {split}", "item") as bar:
            scores = prompting(lm.model, lm.tokenizer, questions, neutral,
                               {t.id: t.text for t in prompts or []}, order=args.orders,
                               pad_id=lm.tokenizer.pad_token_id, batch_size=args.batch_size,
                               progress=bar.update)
        seconds = time.perf_counter() - t0
        with writing(args.store) as h5:
            write_prompting(h5, lm, args.behavior, split, datasets(scores, texts),
                            run_attrs(settings, version, started, seconds, skipped=questions.skipped,
                                      orders=args.orders, behavior=args.behavior))
        say(f"{path}: wrote {questions.n_questions} questions and {len(neutral)} neutral texts in "
            f"{seconds:.0f}s")
        report(args.store, lm.key, args.behavior, split)


if __name__ == "__main__":
    main_guard(run)
