"""Where θ goes in a model: the decoder layers, the injection site, the hooks, the head.

θ is added to the residual stream after decoder layer S: the fast paths (the cached prefix, the
segment function) add it to h_S. The plain paths add it with a hook at one of two sites:

- ``mlp``: the output of ``model.model.layers[S].mlp.down_proj``. For pre-norm decoders whose MLP
  output enters the residual stream directly (Llama, Qwen, Mistral, SmolLM2) this is the same as
  adding to h_S; ``check_injection_site`` verifies it numerically.
- ``resid``: the output of decoder block S itself, h_S. Right for every decoder; needed where the
  MLP output is normalised before the residual add (Gemma-2, Gemma-3), which the check detects.

``resolve_site`` turns ``auto`` into ``mlp`` where the check passes and ``resid`` otherwise.

Hooks live only inside the context managers here, which always remove them. They are the plain
path every fast path is tested against.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Callable, Iterator, Literal, get_args

import torch

from steerlab.base.errors import ModelError

# Where θ is added (or CAA reads): mlp, the down_proj output; resid, the block output; auto,
# mlp where it equals the residual add, else resid (``resolve_site``).
Site = Literal["auto", "mlp", "resid"]
ResolvedSite = Literal["mlp", "resid"]
SITES: tuple[Site, ...] = get_args(Site)
# Where other families keep their decoder blocks: named in the refusal, not supported.
OTHER_LAYOUTS = ("transformer.h", "gpt_neox.layers", "transformer.blocks", "model.decoder.layers")


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        found = [path for path in OTHER_LAYOUTS if isinstance(_attribute(model, path), torch.nn.ModuleList)]
        where = f"its blocks are at `{found[0]}`" if found else "no decoder-block list was found"
        raise ModelError(
            f"{type(model).__name__} has no `model.layers` list ({where}): supported are HF "
            "decoder-only models that keep their blocks at `model.layers` (Llama, Qwen2/3, "
            "Mistral, SmolLM2, Gemma-2/3; docs/models.md)"
        )
    return layers


def check_layer(model: torch.nn.Module, layer: int, name: str = "source layer",
                key: str = "the model") -> None:
    """A clear error for a layer index the model does not have."""
    n_layers = len(decoder_layers(model))
    if not 0 <= layer < n_layers:
        raise ModelError(f"{name} {layer} is out of range: {key} has layers 0..{n_layers - 1}")


def _attribute(obj, dotted: str):
    for name in dotted.split("."):
        obj = getattr(obj, name, None)
    return obj


def layer_type(model: torch.nn.Module, index: int) -> str:
    """The attention type of decoder layer ``index``: ``full_attention`` unless the config says
    otherwise (``sliding_attention`` in Gemma-2/3's local layers)."""
    kinds = getattr(model.config, "layer_types", None)
    return kinds[index] if kinds else "full_attention"


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


def head(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Final norm and unembedding of [..., d] residuals, with the final logit soft-capping of
    models that have one (Gemma-2: cap · tanh(logits / cap)), as the model's own forward does."""
    logits = model.lm_head(model.model.norm(hidden))
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


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


def add_at(model: torch.nn.Module, layer: int, theta: torch.Tensor, site: Site):
    """θ added at ``site`` (``mlp`` or ``resid``, resolved) of ``layer``: the plain paths' hook."""
    if site == "mlp":
        return add_to_down_proj(model, layer, theta)
    if site == "resid":
        return add_to_block_output(model, layer, theta)
    raise ValueError(f"site must be mlp or resid (resolved), got {site!r}")


def reading_site(model: torch.nn.Module, layer: int, site: Site):
    """A list that receives what is written at ``site`` of ``layer``: ``down_proj``'s output or
    the block's output h_S (CAA reads where θ goes)."""
    if site not in ("mlp", "resid"):
        raise ValueError(f"site must be mlp or resid (resolved), got {site!r}")
    return reading_output(injection_site(model, layer) if site == "mlp" else decoder_layers(model)[layer])


def add_to_block_output(model: torch.nn.Module, layer: int, theta: torch.Tensor):
    """θ added to the residual stream after ``layers[layer]`` (the block's output)."""

    def hook(_module, _args, out):
        if isinstance(out, tuple):
            return (_add(out[0], theta),) + tuple(out[1:])
        return _add(out, theta)

    return forward_hook(decoder_layers(model)[layer], hook)


# mlp_site_difference per model, by (layer, dtype, device): the check runs two forwards, and
# `apply`/`generate` with site="auto" would otherwise run them at every call.
_SITE_DIFFERENCES: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def mlp_site_difference(model: torch.nn.Module, layer: int) -> float:
    """Relative difference between adding θ at ``down_proj`` of ``layer`` and adding it to the
    residual after ``layer``: a short random input run once per site, last hidden states
    compared. About 1e-7 in fp32 where the two are the same site; of order 1 where the MLP
    output is normalised or gated before the residual add. Measured once per model, layer,
    dtype and device, and remembered while the model lives."""
    check_layer(model, layer)
    site = injection_site(model, layer)  # the structure is checked at every call: it is cheap
    weight = next(model.parameters())
    known = _SITE_DIFFERENCES.setdefault(model, {})
    key = (layer, weight.dtype, weight.device, id(decoder_layers(model)[layer].mlp), id(site))
    if key not in known:
        known[key] = _measure_site_difference(model, layer)
    return known[key]


@torch.no_grad()
def _measure_site_difference(model: torch.nn.Module, layer: int) -> float:
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
    return ((via_mlp - via_resid).norm() / via_resid.norm()).item()


def _tolerance(model: torch.nn.Module, rtol: float) -> float:
    # bf16 rounds differently at the two sites
    return rtol if next(model.parameters()).dtype != torch.bfloat16 else max(rtol, 5e-2)


def check_injection_site(model: torch.nn.Module, layer: int, rtol: float = 1e-3) -> float:
    """Adding θ at ``down_proj`` of ``layer`` must equal adding θ to the residual after ``layer``
    (the ``mlp`` site); returns the relative difference and raises ModelError above ``rtol``."""
    rel = mlp_site_difference(model, layer)
    if not rel <= _tolerance(model, rtol):
        raise ModelError(
            f"adding θ at layers[{layer}].mlp.down_proj differs from adding it to the residual after "
            f"layer {layer} (relative difference {rel:.2e}): this architecture normalises or gates "
            "the MLP output before the residual add; use SITE=resid (or SITE=auto)"
        )
    return rel


def resolve_site(model: torch.nn.Module, layer: int, site: Site, rtol: float = 1e-3) -> str:
    """``mlp`` or ``resid`` for ``site`` in SITES: ``auto`` is ``mlp`` where the numerical check
    shows it equals the residual add, else ``resid``; ``mlp`` is refused where it does not hold;
    ``resid`` needs no check (it is the residual add)."""
    if site not in SITES:
        raise ModelError(f"SITE must be one of {', '.join(SITES)}, got {site!r}")
    check_layer(model, layer)
    if site == "resid":
        return site
    if site == "mlp":
        check_injection_site(model, layer, rtol)
        return site
    has_mlp = isinstance(getattr(getattr(decoder_layers(model)[layer], "mlp", None), "down_proj", None),
                         torch.nn.Module)
    if has_mlp and mlp_site_difference(model, layer) <= _tolerance(model, rtol):
        return "mlp"
    return "resid"
