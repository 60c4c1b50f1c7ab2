"""Compute only what changes: the prefix up to the source layer once, the segment above it per θ.

``run_prefix`` runs the model's own forward up to and including layer S and stops there, keeping
the residual h_S and the arguments the model passes to its decoder layers (attention mask, rotary
embeddings, position ids), one set per attention type: models that mix sliding-window and full
attention (Gemma-2, Gemma-3) pass each layer the mask (and, in Gemma-3, the rotary embeddings) of
its type. Layers above S run only when a type that occurs above S has not occurred up to S (then
until its first layer, whose arguments are read). ``segment`` then evaluates
``layers[S+1..T](h_S + θ)``: the function every θ-dependent computation is built on.

When all sequences open with the same tokens (the chat template's system turn: 24 of ~100 tokens
per survival question on SmolLM2), those tokens need layers S+1.. only once per θ, not once per
question: ``record_opening`` keeps their keys and values and each layer's attention prepends them to
the batch's own (``KeyValueCache``; ``suffix_layer_kwargs`` gives the arguments for the rest of each
sequence). The same cache lets a cloze item's two answers attend to one run of its prompt
(``continuation_layer_kwargs``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator

import torch

from steerlab.base.parallel import SINGLE, Ranks
from steerlab.lm.site import decoder_layers, injection_site, layer_type
from steerlab.questions.prompts import length_batches, pad_right


class _PrefixDone(Exception):
    """Raised by the hook on layer S to stop the forward pass once h_S is known."""


@dataclass
class Prefix:
    hidden: torch.Tensor  # [B, L, d] residual after layer S, model dtype
    attention_mask: torch.Tensor  # [B, L], 1 on real tokens
    layer_kwargs: dict[str, dict]  # per attention type: what the model passes to its layers
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
        return replace(
            self,
            hidden=self.hidden.repeat(times, 1, 1),
            attention_mask=self.attention_mask.repeat(times, 1),
            layer_kwargs=repeat_rows(self.layer_kwargs, self.batch_size, times),
            down_proj=None,
        )


def repeat_rows(layer_kwargs: dict, batch: int, times: int) -> dict:
    """Decoder-layer arguments of a batch of ``batch`` rows for that batch stacked ``times``."""

    def rep(value):
        if isinstance(value, dict):
            return {key: rep(v) for key, v in value.items()}
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch > 1:
            return value.repeat(times, *([1] * (value.dim() - 1)))
        if isinstance(value, tuple):
            return tuple(rep(v) for v in value)
        return value  # batch-1 tensors broadcast; scalars and None stay

    return rep(layer_kwargs)


# The names under which transformers hands a decoder layer its key/value cache: ``past_key_values``
# up to 5.23, ``cache`` from 5.24 (``past_key_values`` is then a deprecated alias that a decorator
# drops with a warning when ``cache`` is passed too, as the model itself does).
CACHE_ARGUMENTS = ("cache", "past_key_values", "past_key_value")


class LayerContractError(RuntimeError):
    """The model's decoder layers are called in a way the fast paths were not written for."""


def cache_argument(kwargs: dict) -> str:
    """The one cache argument the model passed its decoder layer, by name; a clear error, naming
    the transformers release, when there is none or more than one."""
    passed = [name for name in CACHE_ARGUMENTS if name in kwargs]
    if len(passed) != 1:
        import transformers

        raise LayerContractError(
            f"transformers {transformers.__version__} called a decoder layer with "
            f"{'no cache argument' if not passed else 'the cache arguments ' + ', '.join(passed)} "
            f"(known: one of {', '.join(CACHE_ARGUMENTS)}); the shared-prefix fast paths would "
            "attend to the wrong keys. Install a tested release (pyproject.toml) or report this.")
    return passed[0]


def with_cache(layer_kwargs: dict[str, dict], cache) -> dict[str, dict]:
    """The per-type arguments with the model's own cache argument set to ``cache``."""
    return {kind: {**kwargs, cache_argument(kwargs): cache} for kind, kwargs in layer_kwargs.items()}


@torch.no_grad()
def run_prefix(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               source_layer: int, keep_down_proj: bool = False) -> Prefix:
    """Run embeddings and layers 0..S once, without gradients, and stop as soon as h_S and the
    layer arguments of every attention type above S are known."""
    layers = decoder_layers(model)
    needed = {layer_type(model, i) for i in range(source_layer + 1, len(layers))}
    captured: dict = {"kwargs": {}}

    def complete() -> bool:
        return "hidden" in captured and needed <= captured["kwargs"].keys()

    def record(index: int):
        def pre_hook(_module, _args, kwargs):
            # The cache argument is kept by name (set to None): ``with_cache`` fills that one in.
            captured["kwargs"].setdefault(layer_type(model, index), {
                k: None if k in CACHE_ARGUMENTS else v for k, v in kwargs.items() if k != "use_cache"})
            if index > source_layer and complete():
                raise _PrefixDone
        return pre_hook

    def keep_mlp(_module, _args, output):
        captured["down_proj"] = output

    def after_source(_module, _args, output):
        captured["hidden"] = output[0] if isinstance(output, tuple) else output
        if complete():
            raise _PrefixDone

    handles = [layer.register_forward_pre_hook(record(i), with_kwargs=True) for i, layer in enumerate(layers)]
    handles.append(layers[source_layer].register_forward_hook(after_source))
    if keep_down_proj:
        handles.append(injection_site(model, source_layer).register_forward_hook(keep_mlp))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _PrefixDone:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if not complete():
        raise RuntimeError(f"layer {source_layer} was never reached in the forward pass")
    return Prefix(captured["hidden"], attention_mask, captured["kwargs"], source_layer,
                  captured.get("down_proj"))


def batched_prefixes(model: torch.nn.Module, sequences: list[tuple[int, ...]], source_layer: int,
                     pad_id: int, batch_size: int, keep_down_proj: bool = False, *, ranks: Ranks = SINGLE
                     ) -> Iterator[tuple[list[int], Prefix]]:
    """``sequences`` in length-sorted, right-padded batches (this rank's share of them), each with
    its prefix: (indices into ``sequences``, Prefix), one batch at a time."""
    device = next(model.parameters()).device
    for batch in ranks.part(length_batches([len(seq) for seq in sequences], batch_size)):
        ids, mask = pad_right([sequences[i] for i in batch], pad_id)
        yield batch, run_prefix(model, ids.to(device), mask.to(device), source_layer, keep_down_proj)


@torch.no_grad()
def residual_norms(model: torch.nn.Module, sequences: list[tuple[int, ...]], source_layer: int, pad_id: int,
                   batch_size: int = 16) -> torch.Tensor:
    """‖h_S‖ of every real token of ``sequences`` after layer ``source_layer``, fp64 on the CPU."""
    return torch.cat([prefix.residual_norms().cpu()
                      for _, prefix in batched_prefixes(model, sequences, source_layer, pad_id, batch_size)])


def prompt_prefixes(model: torch.nn.Module, batches: list[list[tuple[int, ...]]], pad_id: int,
                    source_layer: int) -> list[Prefix]:
    """The cached prefix (layers 0..S) of each batch of prompts (token id sequences): what every
    θ and θ₀ of the Jacobian and MELBO share."""
    device = next(model.parameters()).device
    prefixes = []
    for batch in batches:
        ids, mask = pad_right(batch, pad_id)
        prefixes.append(run_prefix(model, ids.to(device), mask.to(device), source_layer))
    return prefixes


class KeyValueCache:
    """Keys and values of earlier tokens in layers S+1.., handed to HF decoder layers as
    ``past_key_values``: their attention calls ``update(key, value, layer_idx)`` and attends over
    what comes back.

    Attending to ``past`` (another cache), row r of a pass gets row ``rows[r]`` of ``past``'s keys
    and values in front of its own: the shared opening of every question (one recorded row per θ
    setting), or a cloze item's prompt (one recorded row per item and setting) in front of each
    of its answers. With ``record`` the cache keeps what it returns (earlier + own), so that a
    later pass can attend to it in turn; without, nothing is stored, so one recorded cache serves
    every batch.
    """

    def __init__(self, past: "KeyValueCache | None" = None, rows: torch.Tensor | None = None,
                 record: bool = False):
        self.past, self.rows, self.record = past, rows, record
        self.keys: dict[int, torch.Tensor] = {}  # layer -> [rows, kv_heads, length, head_dim]
        self.values: dict[int, torch.Tensor] = {}

    def attending(self, rows: torch.Tensor, record: bool = False) -> "KeyValueCache":
        """A cache for a pass whose row r attends to row ``rows[r]`` of this one."""
        return KeyValueCache(self, rows, record)

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *_args, **_kwargs):
        if self.past is not None:
            key = torch.cat([self.past.keys[layer_idx][self.rows], key], dim=-2)
            value = torch.cat([self.past.values[layer_idx][self.rows], value], dim=-2)
        if self.record:
            self.keys[layer_idx], self.values[layer_idx] = key, value
        return key, value


def record_opening(model: torch.nn.Module, opening: Prefix, thetas: torch.Tensor,
                   last_layer: int) -> KeyValueCache:
    """The keys and values of the opening ([1, P] prefix) in layers S+1..last, one row per θ
    row of ``thetas``."""
    cache = KeyValueCache(record=True)
    hidden = opening.hidden + thetas[:, None, :].to(opening.hidden)
    run_layers(model, hidden, with_cache(opening.layer_kwargs, cache), opening.source_layer + 1,
               last_layer)
    return cache


def setting_rows(settings: slice, rows_per_setting: int, device=None) -> torch.Tensor:
    """Row of each pass row in a cache with one row per setting: a pass stacks ``settings``
    setting-major, ``rows_per_setting`` rows each."""
    return torch.arange(settings.start, settings.stop, device=device).repeat_interleave(rows_per_setting)


def opening_shareable(model: torch.nn.Module, source_layer: int) -> bool:
    """Whether ``suffix_layer_kwargs`` builds the mask the model itself would: SDPA attention
    (a boolean mask) and full causal attention in every layer above S. Otherwise (eager
    attention, sliding windows) the fast path runs every sequence whole, with the model's masks."""
    kinds = {layer_type(model, i) for i in range(source_layer + 1, len(decoder_layers(model)))}
    return model.config._attn_implementation == "sdpa" and kinds <= {"full_attention"}


def suffix_layer_kwargs(layer_kwargs: dict[str, dict], attention_mask: torch.Tensor, start: int
                        ) -> dict[str, dict]:
    """Decoder-layer arguments for positions ``start..`` of a right-padded batch whose positions
    before ``start`` come from a ``KeyValueCache``: rotary embeddings and position ids of those
    positions, and an SDPA mask [B, 1, L - start, L] (True = attend) that is causal over the whole
    sequence and hides pad keys, as the model's own mask does (only for models where
    ``opening_shareable`` holds)."""
    return {kind: _suffix_kwargs(kwargs, attention_mask, start) for kind, kwargs in layer_kwargs.items()}


def _suffix_kwargs(layer_kwargs: dict, attention_mask: torch.Tensor, start: int) -> dict:
    length = attention_mask.shape[1]
    query_at = torch.arange(start, length, device=attention_mask.device)
    key_at = torch.arange(length, device=attention_mask.device)
    causal = key_at[None, :] <= query_at[:, None]
    mask = causal[None, None] & attention_mask.bool()[:, None, None, :]
    kwargs = dict(layer_kwargs, attention_mask=mask)
    cos, sin = layer_kwargs["position_embeddings"]
    kwargs["position_embeddings"] = (cos[..., start:, :], sin[..., start:, :])
    if layer_kwargs.get("position_ids") is not None:
        kwargs["position_ids"] = layer_kwargs["position_ids"][..., start:]
    return kwargs


def truncated(layer_kwargs: dict[str, dict], length: int) -> dict[str, dict]:
    """Per-type decoder-layer arguments of a right-padded batch, for its first ``length``
    positions only (rotary embeddings and position ids; the mask is rebuilt by the caller)."""
    def cut(kwargs: dict) -> dict:
        out = dict(kwargs)
        cos, sin = kwargs["position_embeddings"]
        out["position_embeddings"] = (cos[..., :length, :], sin[..., :length, :])
        if kwargs.get("position_ids") is not None:
            out["position_ids"] = kwargs["position_ids"][..., :length]
        return out

    return {kind: cut(kwargs) for kind, kwargs in layer_kwargs.items()}


def continuation_layer_kwargs(layer_kwargs: dict[str, dict], prompt_mask: torch.Tensor,
                              starts: torch.Tensor, own_mask: torch.Tensor) -> dict[str, dict]:
    """Decoder-layer arguments for continuation rows whose prompts come from a ``KeyValueCache``:
    row r's keys are its prompt's (``prompt_mask[r]`` [Lp], right-padded) followed by its own
    tokens (``own_mask[r]`` [La]), which sit at positions ``starts[r]``.. of the whole sequence.
    The SDPA mask [R, 1, La, Lp + La] lets each own token see the real prompt tokens and the real
    own tokens up to itself, as the model's own causal mask over prompt + continuation does.
    ``layer_kwargs`` are those of a right-padded run over whole sequences, whose rotary tables
    cover every position asked for (only for models where ``opening_shareable`` holds)."""
    rows, length = own_mask.shape
    own_at = torch.arange(length, device=own_mask.device)
    causal = own_at[None, :] <= own_at[:, None]
    own = causal[None] & own_mask.bool()[:, None, :]
    prompt = prompt_mask.bool()[:, None, :].expand(rows, length, prompt_mask.shape[1])
    mask = torch.cat([prompt, own], dim=-1)[:, None]

    def place(kwargs: dict) -> dict:
        cos, sin = kwargs["position_embeddings"]
        positions = (starts[:, None] + own_at[None]).clamp(max=cos.shape[-2] - 1)
        out = dict(kwargs, attention_mask=mask,
                   position_embeddings=(cos[0][positions], sin[0][positions]))
        if kwargs.get("position_ids") is not None:
            out["position_ids"] = kwargs["position_ids"][0][positions]
        return out

    return {kind: place(kwargs) for kind, kwargs in layer_kwargs.items()}


def run_layers(model: torch.nn.Module, hidden: torch.Tensor, layer_kwargs: dict[str, dict],
               first: int, last: int) -> torch.Tensor:
    """``layers[first..last]`` (inclusive) applied to ``hidden``, each with the arguments of its
    attention type; empty when first > last."""
    layers = decoder_layers(model)
    for index in range(first, last + 1):
        out = layers[index](hidden, **layer_kwargs[layer_type(model, index)])
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
