"""Markdown tables of the stored evals (`make report`), with 95% bootstrap intervals over questions:
per split and method, the setting chosen on validation by --select-by at every scale beside the
unsteered baseline and the random control; then the summary, each choice scored on test against
random directions at the same cost, each score beside its confound (the letter shift, the
polarity shift) and KL. steerlab/render/report.py writes the tables and says what each column is.
"""
from steerlab.cli.options import choice_parser, main_guard, parse_choice
from steerlab.measure.analysis import other_libraries, read_splits
from steerlab.render.report import report
from steerlab.store import store_key


def run() -> None:
    args = parse_choice(choice_parser(__doc__, reads="model whose evals to report"))
    key = store_key(args.model)
    splits = read_splits(args.store, key, args.behavior)
    for line in other_libraries(splits):
        print(f"note: {line}; `make eval FORCE=1` recomputes it here")
    print(report(splits, key, args.kl_max, args.select_by))


if __name__ == "__main__":
    main_guard(run)
