"""Every behaviour's questions as an lm-evaluation-harness task, for any model:

    lm_eval --model hf --model_args pretrained=<model> --include_path <out> --tasks steering_cloze \
        --apply_chat_template

(or `--model steered --model_args pretrained=<model>,steer_path=<file>.lm-eval.pt` for a vector
from `make export`). One task per behaviour, `steering_cloze_<behaviour>`, and the group
`steering_cloze` of them all: each question of --split with a cloze form (stem as the user turn,
the two answer texts as the choices, the behaviour's answer first and the target, no delimiter),
as this lab's cloze score asks it (engine: steerlab/interop/harness.py). lm-eval's `acc` is then
the share of questions whose behaviour's answer has the higher summed log-likelihood; `acc_norm`
normalises by characters. `--apply_chat_template` asks as this lab does; without it lm-eval
sends the stem as plain text. The data files are written beside the YAML and named by absolute
path, so --include_path works from any folder.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from steerlab.base.errors import UserError
from steerlab.base.progress import say
from steerlab.cli import defaults
from steerlab.cli.options import main_guard
from steerlab.interop.harness import write_group, write_task
from steerlab.questions.behaviors import data_file, items_of
from steerlab.questions.cloze_form import ClozeError, stem_and_answers
from steerlab.questions.data import SPLITS, SplitName


def cloze_questions(behavior: str, split: SplitName) -> tuple[list[tuple[str, str, str]], int]:
    """(stem, behaviour's answer text, other answer text) of every ``split`` item of ``behavior``
    that has a cloze form, by id; and how many have none."""
    items = sorted(items_of(data_file(behavior), behavior, split), key=lambda item: item.id)
    found, skipped = [], 0
    for item in items:
        try:
            found.append(stem_and_answers(item))
        except ClozeError:
            skipped += 1
    return found, skipped


def run() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--behaviors", default=defaults.BEHAVIORS,
                   help="behaviours, each a task (default: the seven that ship)")
    p.add_argument("--split", choices=SPLITS, default="test", help="which split's questions")
    p.add_argument("--out", default=str(Path(defaults.RESULTS) / "lm-eval-tasks"),
                   help="folder for the tasks")
    args = p.parse_args()
    behaviors = args.behaviors.replace(",", " ").split()
    if not behaviors:
        raise UserError("BEHAVIORS names no behaviour")
    for name in behaviors:
        data_file(name)  # an unknown name lists the known ones, before anything is written
    tasks = []
    for name in behaviors:
        questions, skipped = cloze_questions(name, args.split)
        tasks.append(write_task(args.out, name, questions))
        say(f"{tasks[-1]}: {len(questions)} {args.split} questions"
            + (f" ({skipped} without a cloze form)" if skipped else ""))
    group = write_group(args.out, tasks)
    print(f"lm_eval --model hf --model_args pretrained=<model> --include_path {Path(args.out).resolve()} "
          f"--tasks {group} --apply_chat_template")


if __name__ == "__main__":
    main_guard(run)
