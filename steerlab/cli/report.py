"""Markdown tables of the stored evals, with 95% bootstrap intervals over questions.

Per split and method: the vector chosen on validation, at every scale, next to the unsteered
baseline; the random control pools all its directions. Then the summary: per method the vector
and scale chosen on validation with its test numbers, and beside it, labelled, the best-on-test
setting (the optimistic selection that picks on the same questions it scores).

Two scores, one table each. Letter: counterbalanced evals (every question as written and
mirrored) show the order-mean logit difference (the behaviour), the letter shift (half the
difference between the orders) and the consistency of the two orders; single-order evals say
that their numbers mix both. Cloze (each answer's text after the stem, no letters, nats per
token): the polarity-paired Δ (yes and no class means weigh the same, steerlab/questions/polarity.py),
the Δ within each class and the polarity shift ½(Δ_no − Δ_yes), which a pure Yes/No direction
moves and the balanced Δ does not. The val choice maximises --select-by (cloze by default); both
summaries show that one choice.
"""
from steerlab.cli.options import choice_parser, main_guard, parse_choice
from steerlab.measure.analysis import read_splits
from steerlab.render.report import report
from steerlab.store import store_key


def run() -> None:
    args = parse_choice(choice_parser(__doc__, reads="model whose evals to report"))
    key = store_key(args.model)
    print(report(read_splits(args.store, key, args.behavior), key, args.kl_max, args.select_by))


if __name__ == "__main__":
    main_guard(run)
