"""Useful floating-point operations, counted from a model's shapes and the tokens actually
processed: what the fractions of peak divide by time. Only matrix products count (2 per
multiply-add): the projections and MLP of each layer, attention's scores and weighted sums over
each token's causal context, and the unembedding where logits are read. Padding, norms,
activations and softmax do not count, so a fraction of peak is a lower bound on how busy the
matrix units are.
"""
from __future__ import annotations


def layer_flops_per_token(config) -> int:
    """Projections (q, k, v, o) and the gated MLP (gate, up, down) of one layer, per token."""
    d, inner = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q = config.num_attention_heads * head_dim
    kv = config.num_key_value_heads * head_dim
    return 2 * (d * q + 2 * d * kv + q * d + 3 * d * inner)


def attention_flops(config, contexts: int) -> int:
    """Scores and weighted sums of one layer, summed over tokens: ``contexts`` is the sum over
    the tokens of how many positions each attends to."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * 2 * config.num_attention_heads * head_dim * contexts


def run_flops(config, tokens: int, contexts: int, layers: int) -> int:
    """``layers`` layers over ``tokens`` tokens whose causal contexts sum to ``contexts``."""
    return layers * (tokens * layer_flops_per_token(config) + attention_flops(config, contexts))


def causal(first: int, last: int) -> int:
    """Sum of the context lengths of positions first..last-1 (position p attends to p + 1)."""
    return sum(p + 1 for p in range(first, last))


def eval_flops(config, lengths: list[int], opening: int, source_layer: int, n_settings: int) -> int:
    """The eval fast path (steerlab.measure.letter) on questions of ``lengths`` tokens under
    ``n_settings`` θ settings: layers 0..S once per question (and once for the shared opening);
    layers S+1.. per setting for the opening once and for each question's tokens after it; the
    unembedding at the answer position per setting and question."""
    n_layers = config.num_hidden_layers
    before, after = source_layer + 1, n_layers - source_layer - 1
    flops = run_flops(config, opening, causal(0, opening), before)
    flops += n_settings * run_flops(config, opening, causal(0, opening), after)
    for length in lengths:
        flops += run_flops(config, length, causal(0, length), before)
        flops += n_settings * run_flops(config, length - opening, causal(opening, length), after)
    return flops + n_settings * len(lengths) * 2 * config.hidden_size * config.vocab_size


def jtjv_flops(config, lengths: list[int], layers: int, k: int) -> int:
    """One JᵀJV step for k vectors over prompts of ``lengths`` tokens: per vector, the JVP costs
    what a forward of the segment costs, and the VJP (gradients of the inputs only) as much again."""
    forward = sum(run_flops(config, length, causal(0, length), layers) for length in lengths)
    return 2 * k * forward


def plain_eval_flops(config, lengths: list[int], n_settings: int,
                     questions_per_forward: int | None = None) -> int:
    """The plain eval loop (steerlab.measure.reference.letter_plain): per setting, every layer and the
    unembedding at every position of each forward's questions, padded to its longest."""
    step = questions_per_forward or max(len(lengths), 1)
    flops = 0
    for first in range(0, len(lengths), step):
        chunk = lengths[first:first + step]
        padded = max(chunk)
        flops += len(chunk) * (run_flops(config, padded, causal(0, padded), config.num_hidden_layers)
                               + padded * 2 * config.hidden_size * config.vocab_size)
    return n_settings * flops


def shared_flops(config, layout, reads: list[list[int]], source_layer: int, n_settings: int) -> int:
    """The steered forward (steerlab.lm.steered) on a request laid out as ``layout``
    (``shared_layout``: opening, stems, each sequence up to its last read): layers 0..S once per
    sequence and once for the opening; layers S+1.. per setting for the opening once, each stem's
    tokens after it once, and each sequence's tokens after its stem; the unembedding at every read
    position per setting."""
    before, after = source_layer + 1, config.num_hidden_layers - source_layer - 1
    opening = layout.opening
    flops = run_flops(config, opening, causal(0, opening), before)
    flops += n_settings * run_flops(config, opening, causal(0, opening), after)
    for group, stem in zip(layout.groups, layout.stem):
        flops += n_settings * run_flops(config, stem - opening, causal(opening, stem), after)
        for i in group:
            length = len(layout.needed[i])
            flops += run_flops(config, length, causal(0, length), before)
            flops += n_settings * run_flops(config, length - stem, causal(stem, length), after)
    return flops + n_settings * sum(len(at) for at in reads) * 2 * config.hidden_size * config.vocab_size
