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


LOG_EVERY = 120.0  # seconds between two progress lines in a log


class LogProgress:
    """A progress bar for a log (stderr not a terminal): a plain line every ``LOG_EVERY`` seconds
    with the count, the share done, the time so far and the time left at the rate so far."""

    def __init__(self, total: int, description: str, unit: str):
        self.total, self.description, self.unit = total, description, unit
        self.n, self.postfix = 0, ""
        self.started = self.said = time.perf_counter()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.said >= LOG_EVERY and self.total:
            self.said = now
            elapsed = now - self.started
            left = elapsed * (self.total - self.n) / max(self.n, 1)
            say(f"  {self.description}: {self.n}/{self.total} {self.unit} ({self.n / self.total:.0%}), "
                f"{elapsed / 60:.1f} min, about {left / 60:.0f} min left{self.postfix}")

    def set_postfix(self, **values) -> None:
        self.postfix = "; " + ", ".join(f"{k} {v}" for k, v in values.items())

    def write(self, message: str, **_) -> None:
        """A line of its own (tqdm's ``write``; its ``file`` and other options are not needed)."""
        say(message)


def progress_bar(total: int, description: str, unit: str = "it") -> tqdm | LogProgress:
    """A progress bar with rate and time left on stderr; where stderr is not a terminal (logs, CI),
    a line every ``LOG_EVERY`` seconds instead; silent on ranks other than 0 (rank 0's bar counts
    rank 0's share of the work)."""
    if ranks().writer and not sys.stderr.isatty():
        return LogProgress(total, description, unit)
    return tqdm(total=total, desc=description, unit=unit, disable=None if ranks().writer else True,
                dynamic_ncols=True, file=sys.stderr)


def say_skipped(skipped: list[str], any_usable: bool, none_usable: str) -> None:
    """Say every item left out, and stop with ``none_usable`` when nothing is left."""
    for message in skipped:
        say(f"skipped: {message}")
    if not any_usable:
        raise UserError(none_usable)
