"""J = ∂h_T/∂θ as a batched linear operator, built on the segment function.

θ is added at ``layers[S].mlp.down_proj`` (every position); h_T is the residual output of
``layers[T]`` at the prompts' real positions (all of them, or the last N of each prompt), flattened
to one vector of ``n_positions * d`` numbers. J is never formed: ``jvp`` maps k input vectors to
k output vectors (J V), ``vjp`` maps k output vectors back (Jᵀ U), ``jtj`` does both (JᵀJ V).

At the linearisation point θ₀ everything that does not depend on the tangents is computed once and
kept: ``torch.func.vjp`` keeps the forward pass's autograd graph (Jᵀu for any u without a new
forward), and the JVP is the transpose of that linear map, ``u ↦ Jᵀu``, differentiated once more
(a second ``vjp``, taken at u = 0): J v without rerunning the forward or the backward of θ₀.
That is ``jvp="transpose"``: no set-up cost beyond one forward and backward. ``jvp="linearize"``
uses ``torch.func.linearize`` instead, which keeps the forward's primal work as constants of a
traced tangent-only graph: faster per JVP, but its ``make_fx`` trace costs seconds per layer on
a CPU, so it pays off only over many steps (docs/development.md, "Performance", has the figures).
``vmap`` pushes k vectors through either at once. (``torch.func.jvp`` would recompute the primal
forward on every call.)
The network runs in the model's dtype; vectors come in and go out in the caller's dtype (fp32/fp64
for the linear algebra) and are cast at the boundary.

Forward-mode AD does not go through SDPA's flash/efficient kernels, so every evaluation here runs
with SDPA restricted to its math backend.
"""
from __future__ import annotations

from typing import Callable, Literal, get_args

import torch
from torch.func import linearize, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from steerlab.base.errors import UserError
from steerlab.base.parallel import SINGLE, Ranks
from steerlab.lm.segment import Prefix, prompt_prefixes, segment


def math_attention():
    """SDPA restricted to the math backend: the only one forward-mode AD goes through."""
    return sdpa_kernel([SDPBackend.MATH])


def parse_tokens(text: str) -> int | None:
    """``all`` (None) or ``last:N`` (N) — which real positions of each prompt J reads."""
    if text == "all":
        return None
    head, _, count = text.partition(":")
    if head == "last" and count.isdigit() and int(count) > 0:
        return int(count)
    raise UserError(f"TOKENS must be 'all' or 'last:N' with N > 0, got {text!r}")


def read_positions(attention_mask: torch.Tensor, tokens: str = "all") -> tuple[torch.Tensor, torch.Tensor]:
    """(row, position) index pairs of the real tokens J reads, row-major; pads are never read."""
    last = parse_tokens(tokens)
    mask = attention_mask.bool()
    if last is not None:
        lengths = mask.sum(dim=1, keepdim=True)
        index = torch.arange(mask.shape[1], device=mask.device)
        mask = mask & (index >= lengths - last)
    rows, cols = mask.nonzero(as_tuple=True)
    return rows, cols


JvpMode = Literal["transpose", "linearize"]
JVP_MODES: tuple[JvpMode, ...] = get_args(JvpMode)


class BatchJacobian:
    """J of one padded batch of prompts at θ₀, with its primal work cached."""

    def __init__(self, model: torch.nn.Module, prefix: Prefix, target_layer: int,
                 tokens: str = "all", theta0: torch.Tensor | None = None,
                 jvp: JvpMode = "transpose", chunk: int | None = None,
                 positions: tuple[torch.Tensor, torch.Tensor] | None = None,
                 readout: Callable[[torch.Tensor], torch.Tensor] | None = None):
        """``positions`` (rows, columns) replaces ``tokens`` as the positions read; ``readout``
        maps the residuals read there [n, d] to the output (e.g. the head's logits [n, vocab])."""
        if jvp not in JVP_MODES:
            raise ValueError(f"jvp must be one of {JVP_MODES}, got {jvp!r}")
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be a positive number of vectors, got {chunk}")
        self.chunk = chunk
        self.rows, self.cols = (positions if positions is not None
                                else read_positions(prefix.attention_mask, tokens))
        self.d_model = prefix.hidden.shape[-1]
        self.model_dtype = prefix.hidden.dtype
        self.device = prefix.hidden.device
        if theta0 is None:
            theta0 = torch.zeros(self.d_model)
        primal = theta0.to(self.device, self.model_dtype)

        def f(theta: torch.Tensor) -> torch.Tensor:
            read = segment(model, prefix, theta, target_layer)[self.rows, self.cols]
            return (read if readout is None else readout(read)).reshape(-1)

        with math_attention():
            self.output, self._vjp = vjp(f, primal)
            if jvp == "linearize":
                _, self._jvp = linearize(f, primal)
            else:
                _, transpose = vjp(self._vjp, torch.zeros_like(self.output))
                self._jvp = lambda tangent: transpose((tangent,))[0]
        self.out_dim = self.output.numel()

    def _chunked(self, map_rows, rows: torch.Tensor) -> torch.Tensor:
        """``map_rows`` (vmapped over rows) applied ``chunk`` rows at a time: the memory of the
        vmapped intermediates grows with the rows pushed through together, not with k."""
        with math_attention():
            pieces = [map_rows(piece.to(self.device, self.model_dtype))
                      for piece in rows.split(self.chunk or max(len(rows), 1))]
        whole = pieces[0] if len(pieces) == 1 else torch.cat(pieces)  # no copy unless chunked
        return whole.to(rows.device, rows.dtype)

    def jvp(self, vectors: torch.Tensor) -> torch.Tensor:
        """J V for V [k, d] -> [k, n_positions * d], in V's dtype."""
        return self._chunked(vmap(self._jvp), vectors)

    def vjp(self, cotangents: torch.Tensor) -> torch.Tensor:
        """Jᵀ U for U [k, n_positions * d] -> [k, d], in U's dtype."""
        return self._chunked(lambda u: vmap(self._vjp)(u)[0], cotangents)

    def jtj(self, vectors: torch.Tensor) -> torch.Tensor:
        """JᵀJ V for V [k, d] -> [k, d]; J V stays in the model's dtype in between."""
        return self._chunked(lambda v: vmap(self._vjp)(vmap(self._jvp)(v))[0], vectors)


class Jacobian:
    """J over several batches: rows stacked batch after batch, so JᵀJ is the sum over batches.

    Under several ``ranks`` each holds the batches of its share of the prompts (maybe none):
    ``jtj`` and ``norms`` are all-reduced and so the same on every rank, while ``jvp`` and ``vjp``
    stay this rank's own rows."""

    def __init__(self, parts: list[BatchJacobian], d_model: int, ranks: Ranks = SINGLE):
        if not parts and ranks.size == 1:
            raise ValueError("a Jacobian needs at least one batch of prompts")
        self.parts = parts
        self.d_model = d_model
        self.ranks = ranks
        self.out_dim = sum(part.out_dim for part in parts)

    def jvp(self, vectors: torch.Tensor) -> torch.Tensor:
        """This rank's rows of J V."""
        return torch.cat([vectors.new_zeros(len(vectors), 0),
                          *(part.jvp(vectors) for part in self.parts)], dim=1)

    def vjp(self, cotangents: torch.Tensor) -> torch.Tensor:
        """Jᵀ U for U over this rank's rows."""
        pieces = cotangents.split([part.out_dim for part in self.parts], dim=1)
        return sum((part.vjp(piece) for part, piece in zip(self.parts, pieces)),
                   cotangents.new_zeros(len(cotangents), self.d_model))

    def jtj(self, vectors: torch.Tensor) -> torch.Tensor:
        """JᵀJ V over every rank's prompts."""
        return self.ranks.sum(sum((part.jtj(vectors) for part in self.parts),
                                  torch.zeros_like(vectors)))

    def norms(self, outputs: torch.Tensor) -> torch.Tensor:
        """‖row‖ of [k, rows] outputs (e.g. J V) taken over every rank's rows."""
        return self.ranks.sum(outputs.pow(2).sum(1)).sqrt()

    def jvp_norms(self, vectors: torch.Tensor) -> torch.Tensor:
        """‖J v‖ for each row v of ``vectors``, over every rank's prompts."""
        return self.norms(self.jvp(vectors))


def jacobian_at(model: torch.nn.Module, prefixes: list[Prefix], target_layer: int,
                tokens: str = "all", *, theta0: torch.Tensor | None = None,
                jvp: JvpMode = "transpose", ranks: Ranks = SINGLE, chunk: int | None = None) -> Jacobian:
    """J of the prompts behind ``prefixes`` (this rank's share) at θ₀ (default 0); ``chunk``
    vectors at a time through the vmapped JVP and VJP (None: all at once)."""
    return Jacobian([BatchJacobian(model, prefix, target_layer, tokens, theta0, jvp, chunk)
                     for prefix in prefixes], model.get_input_embeddings().embedding_dim, ranks)


def prompt_jacobian(model: torch.nn.Module, batches: list[list[tuple[int, ...]]], pad_id: int,
                    source_layer: int, target_layer: int, tokens: str = "all",
                    theta0: torch.Tensor | None = None, jvp: JvpMode = "transpose") -> Jacobian:
    """J of the given prompts (token id sequences, grouped into batches) at θ₀ (default 0)."""
    return jacobian_at(model, prompt_prefixes(model, batches, pad_id, source_layer), target_layer,
                       tokens, theta0=theta0, jvp=jvp)


def relative_change(moved: Jacobian, reference: Jacobian, vectors: torch.Tensor) -> torch.Tensor:
    """‖J(θ₀)v − J(0)v‖ / ‖J(0)v‖ for each row v of ``vectors``: how far the linear map moved
    along those directions (both operators over the same prompts and positions)."""
    before = reference.jvp(vectors)
    return moved.norms(moved.jvp(vectors) - before) / reference.norms(before)


def power_step_memory(model: torch.nn.Module, lengths: list[int], batch_size: int, layers: int,
                      vectors: int) -> float:
    """Bytes a power iteration over prompts of ``lengths`` tokens holds, from the fitted formula of
    docs/usage.md ("Memory of the Jacobian engine"): the linearisation of every prompt batch
    (≈ 10 · L · tokens · (d + d_ff) · bytes, kept for the whole run) and one step's tangents
    (≈ 2.25 · k_c · L · tokens · (d + d_ff) · bytes for the largest batch), k_c = ``vectors``
    pushed through together, L = ``layers`` (T − S), with a third added for the allocator's slack."""
    config = model.config
    width = config.hidden_size + config.intermediate_size
    size = next(model.parameters()).element_size()
    ordered = sorted(lengths)
    batches = [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]
    tokens = [len(batch) * max(batch) for batch in batches]
    linearisation = 10 * layers * sum(tokens) * width * size
    step = 2.25 * vectors * layers * max(tokens, default=0) * width * size
    return 4 / 3 * (linearisation + step)
