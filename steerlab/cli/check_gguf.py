"""Check the GGUF export in the program that consumes it: llama.cpp's own llama-server.

Exports the stored vector --vector (default: CAA read on the answer texts at --layer) at --scale
as a control vector, as `make export` writes it, and twice more with its layer index shifted by
-1 and +1 (deliberately wrong files). Starts llama-server on 127.0.0.1 with the model's own GGUF
file (the one the embedded model was converted from), without a control vector and with each file
(--control-vector-scaled FILE:1), asks for the top --n-probs next-token log-probabilities of
--prompts chat-templated prompts (neutral and A/B test prompts, sent as token ids), and compares
the change steering makes there with this project's model steered after layer S.

Passes when the right file's Δ log p correlates at --min-correlation or more and better than
either shifted file by --margin; exits 1 otherwise. Writes RESULTS/check-gguf/agreement.md.
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import torch

from steerlab.base.errors import UserError
from steerlab.base.progress import say, step
from steerlab.cli import defaults
from steerlab.cli.checks import add_check_vector, check_vector
from steerlab.cli.options import (
    behavior_items,
    main_guard,
    parse,
    parser,
    positive_int,
)
from steerlab.interop.export import gguf_direction_index, write_gguf
from steerlab.interop.llama_cpp import (
    agreement,
    agreement_page,
    free_port,
    llama_server,
    next_token_logprobs,
    project_logprobs,
    server_command,
    unsteered_difference,
)
from steerlab.lm.generate import prompt_ids
from steerlab.lm.model import EMBEDDED, embedded_gguf, load_model
from steerlab.lm.vector import SteeringVector
from steerlab.questions.data import load_prompts


def embedded_name(model: str) -> str:
    folder = Path(model).resolve()
    for name, embedded in EMBEDDED.items():
        if embedded.folder.resolve() == folder:
            return name
    raise UserError(f"{model} is not an embedded model ({', '.join(EMBEDDED)}): llama-server needs "
                    "the GGUF file the model came from; pass it with --gguf")


def run() -> None:
    p = parser(__doc__)
    add_check_vector(p, "two runtimes")
    p.add_argument("--server", default=defaults.LLAMA_SERVER, help="the llama-server binary")
    p.add_argument("--gguf", default=None,
                   help="the GGUF file llama-server loads (default: the embedded model's own)")
    p.add_argument("--prompts", type=positive_int, default=int(defaults.CHECK_PROMPTS),
                   help="prompts: half neutral, half A/B test questions")
    p.add_argument("--n-probs", type=positive_int, default=40, help="top tokens per prompt from the server")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--start-timeout", type=float, default=120.0, help="seconds for the server to load")
    p.add_argument("--min-correlation", type=float, default=0.9)
    p.add_argument("--margin", type=float, default=0.05,
                   help="how much better than a shifted file the right one must correlate")
    p.add_argument("--neutral", default=defaults.NEUTRAL, help="neutral prompts (JSONL)")
    p.add_argument("--out", default=str(Path(defaults.RESULTS) / "check-gguf"))

    def validate(args) -> None:
        if not Path(args.server).is_file():
            raise UserError(f"no llama-server at {args.server}: `make check-gguf` builds it "
                            "(scripts/build_llama_server.sh), or pass LLAMA_SERVER=<binary>")
        if args.gguf is None:
            embedded_name(args.model)
        elif not Path(args.gguf).is_file():
            raise UserError(f"--gguf {args.gguf} does not exist")
        if not np.isfinite(args.scale) or args.scale == 0:
            raise UserError(f"--scale must be finite and not 0, got {args.scale}")
        gguf_direction_index(args.layer - 1)  # the shifted-down file must be writable too

    args = parse(p, validate)
    lm = load_model(args.model, args.dtype, args.device)
    lm.check_layer(args.layer + 1, "layer + 1 (the shifted file)")
    vector_name, choice, right = check_vector(args, lm)

    half = args.prompts // 2
    texts = [q.text for q in load_prompts(args.neutral, "test", args.prompts - half)]
    texts += [item.question for item in behavior_items(args, "test")[:half]]
    prompts = prompt_ids(lm.tokenizer, texts)
    steer = SteeringVector(torch.from_numpy(np.array(right.vector)), args.layer, args.site)
    ours_base = project_logprobs(lm.model, prompts, None)
    ours_moved = project_logprobs(lm.model, prompts, steer)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = {shift: out / f"{lm.key}-{choice.method}-{choice.run}-{choice.index}-shift{shift:+d}.gguf"
             for shift in (0, -1, +1)}
    for shift, path in files.items():
        write_gguf(path, dataclasses.replace(right, source_layer=args.layer + shift))

    with tempfile.TemporaryDirectory(prefix="check-gguf-") as scratch:
        gguf = Path(args.gguf) if args.gguf else embedded_gguf(embedded_name(args.model), Path(scratch))
        answers = {}
        for shift in (None, 0, -1, +1):
            label = "unsteered" if shift is None else f"direction.{args.layer + shift}"
            port = free_port()
            command = server_command(args.server, gguf, port, None if shift is None else files[shift])
            with step(f"llama-server, {label}: {len(prompts)} prompts"):
                with llama_server(command, port, out / f"server-{label}.log", args.start_timeout) as url:
                    answers[shift] = [next_token_logprobs(url, ids, args.n_probs, args.timeout)
                                      for ids in prompts]

    results = {shift: agreement(answers[None], answers[shift], ours_base, ours_moved)
               for shift in (0, -1, +1)}
    apart = unsteered_difference(answers[None], ours_base)
    page = agreement_page(results, title=f"{vector_name} at {args.scale:+g} ({args.scale_unit}; |θ| = "
                          f"{abs(choice.scale):.1f}), {lm.key}", server=args.server, gguf=gguf.name,
                          n_prompts=len(prompts), n_probs=args.n_probs, apart=apart, layer=args.layer)
    (out / "agreement.md").write_text(page)
    print(page, end="")
    best_wrong = max(results[-1].correlation, results[+1].correlation)
    if results[0].correlation < args.min_correlation or results[0].correlation < best_wrong + args.margin:
        say(f"FAILED: the right file correlates at {results[0].correlation:.3f} (needs ≥ "
            f"{args.min_correlation} and ≥ {best_wrong:.3f} + {args.margin})")
        raise SystemExit(1)
    say(f"passed: llama.cpp adds direction.{args.layer} where the project adds θ (after layer "
        f"{args.layer}); the shifted files agree at {results[-1].correlation:.3f} and "
        f"{results[+1].correlation:.3f}")


if __name__ == "__main__":
    main_guard(run)
