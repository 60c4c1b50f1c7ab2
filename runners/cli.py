"""Command-line pieces every runner shares: model/data/store options, progress, error exit."""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from engine.model import DEFAULT_MODEL_DIR, DTYPES

DEFAULT_DATA = Path(__file__).resolve().parent.parent / "data" / "survival-instinct.jsonl"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR),
                   help="HF id, local HF folder, or .gguf file")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                   help="dtype the network runs in; auto: bf16 on GPU, fp32 on CPU")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--store", default="store.h5", help="HDF5 store to read and write")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="A/B items (project JSONL format)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per forward pass")
    p.add_argument("--force", action="store_true", help="recompute groups that are up to date")
    return p


def layer_list(text: str) -> list[int]:
    try:
        return [int(tok) for tok in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"layers must be integers separated by spaces, got {text!r}")


def count_or_all(text: str) -> int | None:
    """`all` (None) or a positive count."""
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive count or 'all', got {text!r}")
    return value


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def step(message: str):
    start = time.perf_counter()
    say(f"… {message}")
    yield
    say(f"  done in {time.perf_counter() - start:.1f}s")


def main_guard(run) -> None:
    """Run ``run()``; turn the project's own errors into one clear line and exit status 2."""
    from engine.data import DataError
    from engine.model import ModelError
    from engine.store import StoreError

    try:
        run()
    except (DataError, ModelError, StoreError, ValueError) as err:
        say(f"error: {err}")
        sys.exit(2)


def load_checked(args, dtype: str, items, source_layers: list[int], target_layer: int | None = None):
    """Load the model, check the layers and the injection site, and find every item's answer
    tokens; returns (model, answers, skipped messages). Raises if no item is usable."""
    from engine.model import check_injection_site, load_model
    from engine.prompts import answer_tokens_for

    with step(f"loading {args.model} ({dtype})"):
        lm = load_model(args.model, dtype, args.device)
    for layer in source_layers:
        lm.check_layer(layer, "source layer")
        check_injection_site(lm, layer)
    if target_layer is not None:  # above the source layer: checked by the runner before loading
        lm.check_layer(target_layer, "target layer")
    answers, skipped = answer_tokens_for(lm.tokenizer, items)
    for message in skipped:
        say(f"skipped (no answer token found): {message}")
    if not answers:
        raise ValueError("no usable prompts: every item was skipped")
    return lm, answers, skipped
