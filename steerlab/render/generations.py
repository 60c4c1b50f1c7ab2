"""The page of a stored generations group (`make generate`): <out>/<behavior>/generations.md, every
setting's completion of each prompt, read from the store alone."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from steerlab.store import open_for_reading


def cell(text: str) -> str:
    """A markdown table cell: one line, no table syntax, no raw HTML."""
    text = text.strip().replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("|", "\\|").replace("\n", "<br>") or "*(nothing)*"


def generations_page(node: h5py.Group, key: str, behavior: str, store: str) -> str:
    """The page for one stored generations group: a summary of the settings, then per prompt
    every setting's completion."""
    settings = json.loads(node.attrs["settings"])

    def text(name: str) -> np.ndarray:
        return node[name].asstr()[()]

    methods, runs, prompts = text("method"), text("run"), text("prompts")
    index, scale, layer = node["vector_index"][()], node["scale"][()], node["source_layer"][()]
    labels = ["unsteered" if m == "unsteered" else f"{m}/{r} #{i} at scale {s:+.4g}"
              for m, r, i, s in zip(methods, runs, index, scale)]
    texts, tokens, seconds = text("texts"), node["new_tokens"][()], node["seconds"][()]
    mode = f"sampled (seed {settings['seed']})" if settings["sample"] else "greedy"
    chosen = (f"`{settings['vector']}` at the scales asked for" if settings["vector"] else
              "each method's vector and scale chosen on validation as the report chooses (the "
              f"largest {settings.get('select_by', 'letter')} score whose answer mass stays at half "
              "the baseline's or more and whose mean KL on neutral text is at most "
              f"{settings.get('kl_max')}; random controls left out)")
    lines = [f"# Generations of {key}, {behavior}", "",
             f"Completions of {len(prompts)} prompts, {mode}, up to {settings['max_new_tokens']} new "
             f"tokens. Steered: {chosen}. θ = scale × unit vector is added to "
             "the residual stream after layer S (at `down_proj` or the block output, the site) at every "
             "position, generated tokens included. "
             f"Stored in `{store}` at `{node.name.lstrip('/')}`.", "",
             "| setting | source layer | new tokens | tokens/s |", "|---|---|---|---|"]
    for label, lay, toks, secs in zip(labels, layer, tokens, seconds):
        where = "–" if lay < 0 else str(lay)
        lines.append(f"| {label} | {where} | {toks.sum()} | {toks.sum() / max(secs, 1e-9):.1f} |")
    kinds, ids = text("prompt_sets"), text("prompt_ids")
    for p, prompt in enumerate(prompts):
        lines += ["", f"## {p + 1}. {ids[p]} ({kinds[p]})", "",
                  *[f"> {line}" if line else ">" for line in prompt.strip().splitlines()], "",
                  "| setting | completion |", "|---|---|"]
        lines += [f"| {label} | {cell(texts[s, p])} |" for s, label in enumerate(labels)]
    return "\n".join(lines) + "\n"


def write_generations_page(store: str | Path, where: str, key: str, behavior: str, out: str | Path) -> Path:
    """``generations_page`` of the group at ``where`` in ``store``, written to
    <out>/<behavior>/generations.md; returns that path."""
    with open_for_reading(store) as h5:
        page = generations_page(h5[where], key, behavior, str(store))
    path = Path(out) / behavior / "generations.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
