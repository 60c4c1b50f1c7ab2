"""Compute only what changes: the prefix up to the source layer once, the segment above it per θ.

``run_prefix`` runs the model's own forward up to and including layer S and stops there (layers
above S never run), keeping the residual h_S and the arguments the model passes to its decoder
layers (attention mask, rotary embeddings, position ids). ``segment`` then evaluates
``layers[S+1..T](h_S + θ)``: the function every θ-dependent computation is built on.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator

import torch

from engine.model import decoder_layers, injection_site, uniform_attention_from
from engine.prompts import length_batches, pad_right


class _PrefixDone(Exception):
    """Raised by the hook on layer S to stop the forward pass once h_S is known."""


@dataclass
class Prefix:
    hidden: torch.Tensor  # [B, L, d] residual after layer S, model dtype
    attention_mask: torch.Tensor  # [B, L], 1 on real tokens
    layer_kwargs: dict  # what the model passes to every decoder layer
    source_layer: int
    down_proj: torch.Tensor | None = None  # [B, L, d] output of layers[S].mlp.down_proj

    @property
    def batch_size(self) -> int:
        return self.hidden.shape[0]

    def residual_norms(self) -> torch.Tensor:
        """‖h_S‖ of every real token, fp64: the yardstick scales are read against."""
        return self.hidden[self.attention_mask.bool()].double().norm(dim=-1)

    def repeat(self, times: int) -> "Prefix":
        """The same prefix stacked ``times`` along the batch, for several settings in one batch."""
        batch = self.batch_size

        def rep(value):
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch > 1:
                return value.repeat(times, *([1] * (value.dim() - 1)))
            if isinstance(value, tuple):
                return tuple(rep(v) for v in value)
            return value  # batch-1 tensors broadcast; scalars and None stay

        return replace(
            self,
            hidden=self.hidden.repeat(times, 1, 1),
            attention_mask=self.attention_mask.repeat(times, 1),
            layer_kwargs={key: rep(value) for key, value in self.layer_kwargs.items()},
            down_proj=None,
        )


@torch.no_grad()
def run_prefix(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               source_layer: int, keep_down_proj: bool = False) -> Prefix:
    """Run embeddings and layers 0..S once, without gradients, and stop."""
    layers = decoder_layers(model)
    uniform_attention_from(model, source_layer)
    captured: dict = {}

    def keep_mlp(_module, _args, output):
        captured["down_proj"] = output

    def stop_after_block(_module, _args, kwargs, output):
        captured["hidden"] = output[0] if isinstance(output, tuple) else output
        captured["kwargs"] = {k: v for k, v in kwargs.items()
                              if k not in ("past_key_values", "past_key_value", "use_cache")}
        raise _PrefixDone

    handles = [layers[source_layer].register_forward_hook(stop_after_block, with_kwargs=True)]
    if keep_down_proj:
        handles.append(injection_site(model, source_layer).register_forward_hook(keep_mlp))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _PrefixDone:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if "hidden" not in captured:
        raise RuntimeError(f"layer {source_layer} was never reached in the forward pass")
    return Prefix(captured["hidden"], attention_mask, captured["kwargs"], source_layer,
                  captured.get("down_proj"))


def batched_prefixes(model: torch.nn.Module, sequences: list[tuple[int, ...]], source_layer: int,
                     pad_id: int, batch_size: int, keep_down_proj: bool = False
                     ) -> Iterator[tuple[list[int], Prefix]]:
    """``sequences`` in length-sorted, right-padded batches, each with its prefix:
    (indices into ``sequences``, Prefix), one batch at a time."""
    device = next(model.parameters()).device
    for batch in length_batches([len(seq) for seq in sequences], batch_size):
        ids, mask = pad_right([sequences[i] for i in batch], pad_id)
        yield batch, run_prefix(model, ids.to(device), mask.to(device), source_layer, keep_down_proj)


def run_layers(model: torch.nn.Module, hidden: torch.Tensor, layer_kwargs: dict,
               first: int, last: int) -> torch.Tensor:
    """``layers[first..last]`` (inclusive) applied to ``hidden``; empty when first > last."""
    layers = decoder_layers(model)
    for index in range(first, last + 1):
        out = layers[index](hidden, **layer_kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def segment(model: torch.nn.Module, prefix: Prefix, theta: torch.Tensor,
            target_layer: int) -> torch.Tensor:
    """f(θ) = layers[S+1..T](h_S + θ): the residual output of layer T, in the model's dtype.

    θ is [d] (one vector for the whole batch) or [B, 1, d] (one per batch row); it is cast to the
    model's dtype here, so callers keep θ in fp32/fp64 for their linear algebra.
    """
    if target_layer < prefix.source_layer:
        raise ValueError(f"target layer {target_layer} is below source layer {prefix.source_layer}")
    hidden = prefix.hidden + theta.to(prefix.hidden.dtype)
    return run_layers(model, hidden, prefix.layer_kwargs, prefix.source_layer + 1, target_layer)
