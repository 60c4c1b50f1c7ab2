"""How much memory the machine has left, and a check that a planned allocation fits in it: a run
that would be killed by the kernel half-way is refused (or made smaller) before it starts."""
from __future__ import annotations

from pathlib import Path

from steerlab.base.errors import UserError

HEADROOM = 0.85  # the share of the available memory a plan may take (the allocator, other arrays)


def available_bytes(meminfo: str | Path = "/proc/meminfo") -> int | None:
    """MemAvailable of this Linux machine in bytes (None where it cannot be read)."""
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_fits(need: float, what: str, advice: str, available: int | None = None) -> None:
    """A UserError naming ``what``, the memory it needs and has, and ``advice`` (the setting that
    makes it smaller), when ``need`` bytes exceed HEADROOM of the available memory."""
    available = available_bytes() if available is None else available
    if available is not None and need > HEADROOM * available:
        raise UserError(f"{what} would need about {gib(need)} of memory and {gib(available)} is available: "
                        f"{advice}")


def largest_chunk(per_item: float, fixed: float, wanted: int, available: int | None = None) -> int:
    """The most items (at most ``wanted``, at least 1) whose ``fixed + n · per_item`` bytes fit in
    HEADROOM of the available memory; ``wanted`` where the memory cannot be read."""
    available = available_bytes() if available is None else available
    if available is None or per_item <= 0:
        return wanted
    return max(1, min(wanted, int((HEADROOM * available - fixed) // per_item)))
