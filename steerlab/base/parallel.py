"""Data parallelism over ``torch.distributed``: which part of the work is this process's, and the
collectives that put the parts back together.

Under ``torchrun --nproc-per-node N`` every process (rank) runs the same runner on its own
contiguous share of the work (pairs, prompt batches, questions, prompts) and the engine combines
the shares: sums are all-reduced, per-item results are gathered in rank order, so that every rank
ends with what one process would have computed, up to the order of floating-point additions and
the batch shapes. Only rank 0 writes. Decisions a rank takes from the store (is this group
current?) are rank 0's, broadcast, so that no rank waits in a collective another skipped.

Without ``torchrun`` (``WORLD_SIZE`` unset or 1) there is no process group: ``SINGLE`` is one rank
of one, every share is the whole, and every collective returns its input.
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass, field
from typing import Any, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from steerlab.base.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place among ``size`` processes; ``device`` is where collectives run (a GPU
    for NCCL, the CPU for gloo)."""
    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def writer(self) -> bool:
        """Rank 0 alone writes the store and result files."""
        return self.rank == 0

    def span(self, n: int) -> range:
        """This rank's contiguous share of ``n`` items: shares differ by at most one item, in rank
        order, and are empty when there are more ranks than items."""
        return range(n * self.rank // self.size, n * (self.rank + 1) // self.size)

    def part(self, items: Sequence[T]) -> list[T]:
        return [items[i] for i in self.span(len(items))]

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of every rank's ``tensor`` (same shape on all), on every rank."""
        if self.size == 1:
            return tensor
        total = tensor.detach().to(self.device, copy=True)
        dist.all_reduce(total)
        return total.to(tensor.device)

    def gather(self, values: Sequence[T]) -> list[T]:
        """Every rank's ``values`` concatenated in rank order, on every rank (picklable values;
        tensors should be on the CPU)."""
        if self.size == 1:
            return list(values)
        shares: list[Any] = [None] * self.size
        dist.all_gather_object(shares, list(values))
        return [value for share in shares for value in share]

    def cat(self, array: np.ndarray, axis: int = 0) -> np.ndarray:
        """Every rank's ``array`` concatenated along ``axis`` in rank order (the other axes must
        agree; a rank with no share passes a size-0 axis)."""
        if self.size == 1:
            return array
        shares: list[Any] = [None] * self.size
        dist.all_gather_object(shares, np.asarray(array))
        return np.concatenate(shares, axis=axis)

    def cat_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` concatenated along the first axis in rank order, on the CPU."""
        if self.size == 1:
            return tensor
        shares: list[Any] = [None] * self.size
        dist.all_gather_object(shares, tensor.detach().cpu())
        return torch.cat(shares)

    def same(self, value: T) -> T:
        """Rank 0's ``value`` on every rank: for decisions read from shared state (the store) that
        must not differ between ranks."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def largest(self, value: float) -> float:
        """The largest of every rank's ``value`` (e.g. wall time: the slowest rank's)."""
        if self.size == 1:
            return value
        box = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(box, op=dist.ReduceOp.MAX)
        return float(box[0])

    def barrier(self) -> None:
        """Wait until every rank is here: a runner's ranks leave together, so that none tears
        down its process group while rank 0 is still writing (gloo aborted such a rank at exit)."""
        if self.size > 1:
            dist.barrier()

    def check_identical(self, tensor: torch.Tensor, what: str) -> None:
        """Raise on every rank unless every rank holds bitwise the same ``tensor``: what must stay
        replicated (power iteration's block, MELBO's vectors) after each rank's own linear
        algebra on all-reduced inputs."""
        if self.size == 1:
            return
        reference = tensor.detach().to(self.device, copy=True)
        dist.broadcast(reference, src=0)
        differs = torch.tensor([float(not torch.equal(reference, tensor.to(self.device)))],
                               device=self.device)
        dist.all_reduce(differs, op=dist.ReduceOp.MAX)
        if differs.item():
            raise RuntimeError(f"{what} differs between ranks: the ranks no longer run the same "
                               "computation (a bug; rerun with NPROC=1)")


SINGLE = Ranks()
_current = SINGLE


def ranks() -> Ranks:
    """This process's ranks: ``SINGLE`` unless ``start`` joined a process group."""
    return _current


def start(device: str) -> tuple[Ranks, str]:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK,
    LOCAL_RANK, MASTER_ADDR/PORT) and return this process's ranks and the device it computes on:
    with CUDA, its own GPU (``cuda:LOCAL_RANK``) and NCCL; on a CPU, gloo. Without torchrun:
    ``SINGLE`` and ``device`` unchanged."""
    global _current
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return SINGLE, device
    if not dist.is_initialized():
        if device.startswith("cuda"):
            local = int(os.environ["LOCAL_RANK"])
            if local >= torch.cuda.device_count():
                raise UserError(f"{os.environ.get('LOCAL_WORLD_SIZE', size)} processes on this machine "
                                f"need as many GPUs, and it has {torch.cuda.device_count()}: lower NPROC")
            device = f"cuda:{local}"
            torch.cuda.set_device(local)
            dist.init_process_group("nccl", device_id=torch.device(device))
        else:
            dist.init_process_group("gloo")
        atexit.register(_leave)
    comm = torch.device(device) if device.startswith("cuda") else torch.device("cpu")
    _current = Ranks(dist.get_rank(), dist.get_world_size(), comm)
    return _current, device


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
