"""Where θ goes in a model: the decoder layers, the injection site, the hooks, the head.

θ is added to the output of ``model.model.layers[S].mlp.down_proj``. For pre-norm decoders whose
MLP output enters the residual stream directly this equals adding θ to the residual stream after
layer S; everything downstream (the cached prefix, the segment function) relies on that, so
``check_injection_site`` verifies it numerically and refuses models where it does not hold.

Hooks live only inside the context managers here, which always remove them. They are the plain
path every fast path is tested against.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from engine.errors import ModelError


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ModelError(
            f"{type(model).__name__} has no `model.layers` list: expected a HF decoder-only model "
            "(LlamaForCausalLM, Qwen3ForCausalLM, MistralForCausalLM, ...)"
        )
    return layers


def injection_site(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    """The module whose output θ is added to: ``model.layers[layer].mlp.down_proj``."""
    block = decoder_layers(model)[layer]
    down_proj = getattr(getattr(block, "mlp", None), "down_proj", None)
    if not isinstance(down_proj, torch.nn.Module):
        raise ModelError(
            f"layer {layer} ({type(block).__name__}) has no `mlp.down_proj`: expected a gated-MLP "
            "decoder block such as Llama's or Qwen's"
        )
    return down_proj


def uniform_attention_from(model: torch.nn.Module, layer: int) -> None:
    """Layers above ``layer`` must share one attention mask (no sliding-window mix):
    the segment function reuses the mask the model built for the first of them."""
    kinds = getattr(model.config, "layer_types", None)
    if kinds and len(set(kinds[layer:])) > 1:
        raise ModelError(
            f"layers {layer}.. mix attention types {sorted(set(kinds[layer:]))}; "
            "only models with one attention type above the source layer are supported"
        )


def head(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Final norm and unembedding of [..., d] residuals."""
    return model.lm_head(model.model.norm(hidden))


def _first(output):
    """A decoder block's hidden states (older transformers return a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def _add(output: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    return output + theta.to(device=output.device, dtype=output.dtype)


@contextmanager
def forward_hook(module: torch.nn.Module, hook: Callable) -> Iterator[None]:
    """``hook(module, args, output)`` registered on ``module`` for the block, then removed."""
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def reading_output(module: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """A list that receives ``module``'s output (a block's hidden states) on every call."""
    seen: list[torch.Tensor] = []
    with forward_hook(module, lambda _m, _a, out: seen.append(_first(out))):
        yield seen


def add_to_down_proj(model: torch.nn.Module, layer: int, theta: torch.Tensor):
    """θ ([d] or broadcastable to the batch) added to ``layers[layer].mlp.down_proj``'s output."""
    return forward_hook(injection_site(model, layer), lambda _m, _a, out: _add(out, theta))


def add_to_block_output(model: torch.nn.Module, layer: int, theta: torch.Tensor):
    """θ added to the residual stream after ``layers[layer]`` (the block's output)."""

    def hook(_module, _args, out):
        if isinstance(out, tuple):
            return (_add(out[0], theta),) + tuple(out[1:])
        return _add(out, theta)

    return forward_hook(decoder_layers(model)[layer], hook)


@torch.no_grad()
def check_injection_site(model: torch.nn.Module, layer: int, rtol: float = 1e-3) -> float:
    """Adding θ at ``down_proj`` of ``layer`` must equal adding θ to the residual after ``layer``.

    Runs a short random input twice, once per site, and compares the last hidden states; returns
    the relative difference and raises ModelError above ``rtol`` (5e-2 in bf16, whose rounding
    differs between the two sites; a post-MLP norm or gate gives differences of order 1).
    """
    n_layers = len(decoder_layers(model))
    if not 0 <= layer < n_layers:
        raise ModelError(f"source layer {layer} is out of range: the model has layers 0..{n_layers - 1}")
    uniform_attention_from(model, layer)
    injection_site(model, layer)
    weight = next(model.parameters())
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, 8), generator=gen).to(weight.device)
    theta = torch.randn(model.config.hidden_size, generator=gen, dtype=torch.float64)
    theta *= 4.0 / theta.norm()

    def last_hidden(context) -> torch.Tensor:
        with context:
            out = model(ids, output_hidden_states=True, use_cache=False)
        return out.hidden_states[-1].double()

    via_mlp = last_hidden(add_to_down_proj(model, layer, theta))
    via_resid = last_hidden(add_to_block_output(model, layer, theta))
    rel = ((via_mlp - via_resid).norm() / via_resid.norm()).item()
    tolerance = rtol if weight.dtype != torch.bfloat16 else max(rtol, 5e-2)
    if not rel <= tolerance:
        raise ModelError(
            f"adding θ at layers[{layer}].mlp.down_proj differs from adding it to the residual after "
            f"layer {layer} (relative difference {rel:.2e}): this architecture normalises or gates "
            "the MLP output before the residual add, which the engine does not support"
        )
    return rel
