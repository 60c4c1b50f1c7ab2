"""Convert an Anthropic model-written-evals JSONL file or a CAA JSON array into the project's
A/B format (data/README.md). Which source field holds the answer showing the behaviour must be
said for a behaviour outside the catalogue (steerlab/questions/behaviors.py): the label semantics differ
between data sets. Items whose answers cannot be placed among their choices are skipped and
counted."""
import argparse
from collections import Counter

from steerlab.base.errors import UserError
from steerlab.base.progress import say, say_skipped
from steerlab.cli.options import main_guard
from steerlab.questions.behaviors import CATALOGUE, POSITIVE_FIELDS, check_name, ingest
from steerlab.questions.data import write_items


def run() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("source", help="input .jsonl (Anthropic) or .json (CAA) file")
    p.add_argument("--behavior", required=True, help="name used in ids and the store, e.g. survival-instinct")
    p.add_argument("--positive", choices=POSITIVE_FIELDS,
                   help="source field holding the answer that shows the behaviour (default: the "
                        "catalogue's choice for a catalogued behaviour; required otherwise)")
    p.add_argument("--out", required=True, help="output .jsonl")
    args = p.parse_args()
    check_name(args.behavior)
    positive = args.positive or getattr(CATALOGUE.get(args.behavior), "positive_field", None)
    if positive is None:
        raise UserError(f"{args.behavior} is not in the catalogue: say which source field shows "
                        f"the behaviour with POSITIVE= ({' or '.join(POSITIVE_FIELDS)}); "
                        "read a few items first, the convention differs between files")
    items, skipped = ingest(args.source, args.behavior, positive)
    say_skipped(skipped, bool(items), f"{args.source}: no usable item; nothing written")
    write_items(items, args.out)
    splits = Counter(item.split for item in items)
    say(f"wrote {len(items)} items to {args.out} (positive = {positive}; {len(skipped)} skipped): "
        + ", ".join(f"{k} {v}" for k, v in sorted(splits.items())))


if __name__ == "__main__":
    main_guard(run)
