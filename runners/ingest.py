"""Convert an Anthropic model-written-evals JSONL file or a CAA JSON array into the project's
A/B format (data/README.md). Which source field is the behaviour steered toward must be said:
the label semantics differ between data sets."""
import argparse
from collections import Counter

from engine.data import ingest, write_items
from runners.cli import main_guard, say


def run() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("source", help="input .jsonl (Anthropic) or .json (CAA) file")
    p.add_argument("--behavior", required=True, help="name used in ids, e.g. survival-instinct")
    p.add_argument("--positive", required=True,
                   choices=["answer_matching_behavior", "answer_not_matching_behavior"],
                   help="source field holding the answer that shows the steered-toward behaviour")
    p.add_argument("--out", required=True, help="output .jsonl")
    args = p.parse_args()
    items = ingest(args.source, args.behavior, args.positive)
    write_items(items, args.out)
    splits = Counter(item.split for item in items)
    say(f"wrote {len(items)} items to {args.out}: " + ", ".join(f"{k} {v}" for k, v in sorted(splits.items())))


if __name__ == "__main__":
    main_guard(run)
