"""Adding θ inside the network with hooks: the plain path every fast path is tested against.

Hooks live only inside these context managers, which always remove them.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from engine.model import decoder_layers, injection_site


def _add(output: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    return output + theta.to(device=output.device, dtype=output.dtype)


@contextmanager
def _forward_hook(module: torch.nn.Module, hook) -> Iterator[None]:
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def add_to_down_proj(model: torch.nn.Module, layer: int, theta: torch.Tensor):
    """θ ([d] or broadcastable to the batch) added to ``layers[layer].mlp.down_proj``'s output."""
    return _forward_hook(injection_site(model, layer), lambda _m, _a, out: _add(out, theta))


def add_to_block_output(model: torch.nn.Module, layer: int, theta: torch.Tensor):
    """θ added to the residual stream after ``layers[layer]`` (the block's output)."""

    def hook(_module, _args, out):
        if isinstance(out, tuple):  # older transformers return (hidden, ...)
            return (_add(out[0], theta),) + tuple(out[1:])
        return _add(out, theta)

    return _forward_hook(decoder_layers(model)[layer], hook)
