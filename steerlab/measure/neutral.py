"""The neutral texts the KL side effect is scored on: each neutral prompt with the unsteered
model's greedy continuation, cached in the store under /<model>/neutral/<split>
(docs/DESIGN.md, "The store")."""
from __future__ import annotations

import json
import time
from pathlib import Path

from steerlab.base.parallel import ranks
from steerlab.base.progress import say, step
from steerlab.lm.generate import generate_ids, prompt_ids
from steerlab.lm.model import LoadedModel
from steerlab.measure.side_effects import ScoredText
from steerlab.questions.data import Prompt, SplitName
from steerlab.store import (
    behaviors_in_store,
    code_version,
    evals_path,
    file_checksum,
    is_current,
    neutral_path,
    now,
    open_for_reading,
    read_neutral,
    run_attrs,
    write_neutral,
    writing,
)


def neutral_texts(store: str | Path, lm: LoadedModel, split: SplitName, prompts: list[Prompt], *,
                  model: str, dtype: str, device: str, neutral: str | Path, n_neutral: int | None,
                  gen_tokens: int, force: bool = False) -> list[ScoredText]:
    """The split's neutral ``prompts`` with the unsteered model's greedy continuations of
    ``gen_tokens``: read from ``store`` when current (same settings, same code), else generated
    once and written (rank 0 decides and writes). ``model``, ``dtype``, ``device``, ``neutral``
    (the prompts' file, also checksummed) and ``n_neutral`` are recorded as given."""
    # the texts also depend on how the prompts were read and the model loaded, done by the callers
    version = code_version("steerlab.measure.neutral:neutral_texts", "steerlab.questions.data:load_prompts",
                           "steerlab.lm.model:load_model")
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
            generated = generate_ids(lm.model, asked, None, gen_tokens, pad_id=lm.tokenizer.pad_token_id,
                                     ranks=ranks())
        tokens = [prompt + new for prompt, new in zip(asked, generated.tokens)]
        prompt_lengths = [len(prompt) for prompt in asked]
        if ranks().writer:
            measured_elsewhere(store, lm.key, split, settings)
            with writing(store) as h5:
                write_neutral(h5, lm, split, ids, token_ids=tokens, prompt_lengths=prompt_lengths,
                              attrs=run_attrs(settings, version, started, time.perf_counter() - t0))
    return [ScoredText(i, t, n) for i, t, n in zip(ids, tokens, prompt_lengths) if len(t) > n]


# What an eval split records of its neutral texts (its settings), as neutral_texts records them.
TEXT_SETTINGS = ("neutral", "n_neutral", "gen_tokens")


def measured_elsewhere(store: str | Path, key: str, split: SplitName, settings: dict) -> list[str]:
    """Before the split's neutral texts are replaced: the eval splits (of any behaviour) whose KL
    was measured on other texts than ``settings`` make, each named in a warning, since their KL
    no longer matches what the store holds."""
    if not Path(store).is_file():
        return []
    stale = []
    with open_for_reading(store) as h5:
        if neutral_path(key, split) not in h5:
            return []
        for behavior in behaviors_in_store(h5, key):
            path = evals_path(key, behavior, split)
            if path not in h5:
                continue
            recorded = json.loads(h5[path].attrs.get("settings", "{}"))
            if any(str(recorded.get(name)) != str(settings[name]) for name in TEXT_SETTINGS):
                stale.append((path, behavior, recorded))
    for path, behavior, recorded in stale:
        was = ", ".join(f"{name}={recorded.get(name)}" for name in TEXT_SETTINGS)
        now_ = ", ".join(f"{name}={settings[name]}" for name in TEXT_SETTINGS)
        say(f"warning: replacing the {split} neutral texts ({was} → {now_}): the KL of {path} was "
            f"measured on the old texts and no longer matches the store; `make eval BEHAVIOR={behavior} "
            f"SPLITS={split}` with today's settings measures it again")
    return [path for path, _, _ in stale]
