"""Progress on stderr, from rank 0 only: a line (``say``), a timed step, a bar, the items left
out. The engine's experiment functions (neutral.py, matrix.py, eval_split.py) and the runners
share them."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager

from tqdm import tqdm

from steerlab.base.errors import UserError
from steerlab.base.parallel import ranks


def say(message: str) -> None:
    """A progress line on stderr, from rank 0 only (the others do the same work on other rows)."""
    if ranks().writer:
        print(message, file=sys.stderr, flush=True)


@contextmanager
def step(message: str):
    start = time.perf_counter()
    say(f"… {message}")
    yield
    say(f"  done in {time.perf_counter() - start:.1f}s")


def progress_bar(total: int, description: str, unit: str = "it") -> tqdm:
    """A progress bar with rate and time left on stderr; silent when stderr is not a terminal
    (logs and CI get the start and end lines from ``say`` instead) and on ranks other than 0
    (rank 0's bar counts rank 0's share of the work)."""
    return tqdm(total=total, desc=description, unit=unit, disable=None if ranks().writer else True,
                dynamic_ncols=True, file=sys.stderr)


def say_skipped(skipped: list[str], any_usable: bool, none_usable: str) -> None:
    """Say every item left out, and stop with ``none_usable`` when nothing is left."""
    for message in skipped:
        say(f"skipped: {message}")
    if not any_usable:
        raise UserError(none_usable)
