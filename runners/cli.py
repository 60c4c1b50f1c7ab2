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
