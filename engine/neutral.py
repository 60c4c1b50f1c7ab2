"""The neutral texts the KL side effect is scored on: each neutral prompt with the unsteered
model's greedy continuation, cached in the store under /<model>/neutral/<split>
(docs/DESIGN.md, "The store")."""
from __future__ import annotations

import time
from pathlib import Path

from engine.generate import Prompt, generate_ids, prompt_ids
from engine.model import LoadedModel
from engine.parallel import ranks
from engine.progress import step
from engine.side_effects import ScoredText
from engine.store import (
    code_version,
    file_checksum,
    is_current,
    neutral_path,
    now,
    read_neutral,
    run_attrs,
    write_neutral,
    writing,
)


def neutral_texts(store: str | Path, lm: LoadedModel, split: str, prompts: list[Prompt], *,
                  model: str, dtype: str, device: str, neutral: str | Path, n_neutral: int | None,
                  gen_tokens: int, force: bool = False) -> list[ScoredText]:
    """The split's neutral ``prompts`` with the unsteered model's greedy continuations of
    ``gen_tokens``: read from ``store`` when current (same settings, same code), else generated
    once and written (rank 0 decides and writes). ``model``, ``dtype``, ``device``, ``neutral``
    (the prompts' file, also checksummed) and ``n_neutral`` are recorded as given."""
    version = code_version("engine.generate")
    settings = {"model": model, "dtype": dtype, "device": device, "neutral": neutral,
                "n_neutral": n_neutral, "gen_tokens": gen_tokens, "split": split,
                "neutral_checksum": file_checksum(neutral)}
    path = neutral_path(lm.key, split)
    if ranks().same(not force and is_current(store, path, settings, version)):
        ids, tokens, prompt_lengths = read_neutral(store, lm.key, split)
    else:
        started, t0 = now(), time.perf_counter()
        ids = [prompt.id for prompt in prompts]
        asked = prompt_ids(lm.tokenizer, [prompt.text for prompt in prompts])
        with step(f"[{split}] unsteered greedy continuations of {len(asked)} neutral prompts "
                  f"({gen_tokens} tokens)"):
            generated = generate_ids(lm.model, asked, None, gen_tokens, lm.tokenizer.pad_token_id,
                                     ranks=ranks())
        tokens = [prompt + new for prompt, new in zip(asked, generated.tokens)]
        prompt_lengths = [len(prompt) for prompt in asked]
        if ranks().writer:
            with writing(store) as h5:
                write_neutral(h5, lm, split, ids, tokens, prompt_lengths,
                              run_attrs(settings, version, started, time.perf_counter() - t0))
    return [ScoredText(i, t, n) for i, t, n in zip(ids, tokens, prompt_lengths) if len(t) > n]
