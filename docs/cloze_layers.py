"""Which source layer: the answer-text CAA's cloze effect per layer, on val, against random controls.

For each layer S: CAA read on the answer texts of the first 128 train pairs (file order), balanced
over polarity classes and pooled (the ablation); each added at ±s · unit(vector) for s in SCALES,
and 3 random directions at the same norms; cloze scores on the first 64 val questions by id
(class-balanced Δ, polarity shift) and KL on 8 neutral val prompts. The main job's default layer
is chosen from this table (docs/results.md, "Which layer"), never from test.

Run from the repository root: PYTHONPATH=. .venv/bin/python docs/cloze_layers.py [layers...]
(about 6 min per layer on 2 cores for SmolLM2). Environment: CAPTURE=mlp|resid (default resid)
reads the activations at layers[S].mlp.down_proj's output or at the block's output (the residual
stream); MODEL (a folder, default the default model), N_VAL (default 64) and SCALES (|θ|, default
"16 32") size the run for larger models. COSTS (KL in nats per token, e.g. "0.01 0.04") replaces
SCALES: every direction, each sign apart, is then sized by eval's cost search (steerlab/measure/kl_search.py)
on the same 8 neutral prompts to cost that KL, so CAA and the random directions are compared at
equal cost (on Gemma-3-270M a CAA direction takes ~60 times a random one's |θ| for one cost); the
s column is then the signed cost and a |θ| column says what each cost took.
"""
import os
import sys

import numpy as np
import torch

from steerlab.lm.generate import generate_ids, prompt_ids
from steerlab.lm.model import DEFAULT_MODEL_DIR, load_model
from steerlab.measure.cloze import cloze_preference
from steerlab.measure.grid import random_directions
from steerlab.measure.kl_search import MAX_UNITS, UNIT_START, kl_norms
from steerlab.measure.scales import NORM_PROMPTS, residual_norm
from steerlab.measure.scores import score
from steerlab.measure.side_effects import ScoredText
from steerlab.measure.statistics import balanced_stat, polarity_shift_stat, stat, stratified
from steerlab.methods.caa import caa_answer_vector
from steerlab.questions.cloze_form import cloze_items, cloze_token_counts
from steerlab.questions.data import load_items, load_prompts

LAYERS = [int(a) for a in sys.argv[1:]] or [3, 7, 11, 15, 20]
SCALES = [float(s) for s in os.environ.get("SCALES", "16 32").split()]
COSTS = [float(c) for c in os.environ.get("COSTS", "").split()]
N_RANDOM = 3
DATA = "data/survival-instinct.jsonl"
CAPTURE = os.environ.get("CAPTURE", "resid")

torch.manual_seed(0)
lm = load_model(os.environ.get("MODEL", str(DEFAULT_MODEL_DIR)), "fp32")
pad = lm.tokenizer.pad_token_id
train, _ = cloze_items(lm.tokenizer, load_items(DATA, "train")[:128])
val, _ = cloze_items(lm.tokenizer,
                     sorted(load_items(DATA, "val"), key=lambda i: i.id)[:int(os.environ.get("N_VAL", "64"))])
classes = np.array([item.polarity for item in val])
counts = cloze_token_counts(val)
prompts = load_prompts("data/neutral-prompts.jsonl", "val", 8)
asked = prompt_ids(lm.tokenizer, [p.text for p in prompts])
continued = generate_ids(lm.model, asked, None, 32, pad_id=pad).tokens
texts = [ScoredText(p.id, a + c, len(a)) for p, a, c in zip(prompts, asked, continued)]
print(f"capture {CAPTURE}; val: {len(val)} questions, classes " + ", ".join(f"{c} {int((classes == c).sum())}"
                                                         for c in ("yes", "no", "other")))
print("| layer | median ‖h_S‖ | " + ("KL target | |θ| CAA balanced / random (mean) " if COSTS else "s ")
      + "| CAA balanced: Δ | its polarity shift | its Δ on other | CAA pooled: Δ "
      "| its polarity shift | random (3 dirs): Δ | KL balanced | KL random |")
print("|---|---|---|" + ("---|" if COSTS else "") + "---|---|---|---|---|---|---|---|")
norm_prompts = prompt_ids(lm.tokenizer, [item.question for item in load_items(DATA, "train")[:NORM_PROMPTS]])
for layer in LAYERS:
    norm = residual_norm(lm.model, norm_prompts, layer, pad).median
    balanced = caa_answer_vector(lm.model, train, layer, pad, capture=CAPTURE, balance=True)
    pooled = caa_answer_vector(lm.model, train, layer, pad, capture=CAPTURE, balance=False)
    units = [v.vector.double() / v.vector.double().norm() for v in (balanced, pooled)]
    randoms = random_directions(N_RANDOM, lm.d_model, 0, layer)
    directions = units + [d.double() / d.double().norm() for d in randoms]
    if COSTS:  # each direction and sign at the |θ| that costs each target
        signed = [-c for c in reversed(COSTS)] + COSTS
        sizes = {sign: kl_norms(lm.model, texts, layer, torch.stack([sign * u for u in directions]),
                                targets=COSTS, pad_id=pad, start=UNIT_START * norm,
                                max_norm=MAX_UNITS * norm).norms for sign in (1, -1)}
        norms = [[float(sizes[1 if c > 0 else -1][i, COSTS.index(abs(c))]) for c in signed]
                 for i in range(len(directions))]
    else:
        signed = [-s for s in reversed(SCALES)] + SCALES
        norms = [[abs(s) for s in signed] for _ in directions]
    rows = [torch.zeros(lm.d_model, dtype=torch.float64)]
    rows += [(1 if s > 0 else -1) * n * u for u, ns in zip(directions, norms) for s, n in zip(signed, ns)]
    out = score(lm.model, [], 1, texts, source_layer=layer, thetas=torch.stack(rows).float(), pad_id=pad,
                batch_size=4, settings_per_pass=2, cloze=val)
    pref = cloze_preference(out.cloze, counts)  # [settings, n_q]
    delta = pref - pref[0]
    n = len(signed)
    for j, s in enumerate(signed):
        caa_b, caa_p = delta[1 + j], delta[1 + n + j]
        rand = np.stack([delta[1 + 2 * n + r * n + j] for r in range(N_RANDOM)])
        kl_b = stat(out.kl[1 + j])
        kl_r = stat(np.stack([out.kl[1 + 2 * n + r * n + j] for r in range(N_RANDOM)]))
        shift_b, shift_p = polarity_shift_stat(caa_b, classes), polarity_shift_stat(caa_p, classes)
        other = stratified(caa_b, classes, {"other": 1.0})
        size = (f" {norms[0][j]:.3g} / {np.mean([norms[2 + r][j] for r in range(N_RANDOM)]):.3g} |"
                if COSTS else "")
        print(f"| {layer} | {norm:.1f} | {s:+g} |{size} {balanced_stat(caa_b, classes).fmt(3, True)} | "
              f"{shift_b.fmt(3, True)} | {other.fmt(3, True)} | {balanced_stat(caa_p, classes).fmt(3, True)} "
              f"| {shift_p.fmt(3, True)} | "
              f"{balanced_stat(rand, classes).fmt(3, True)} | {kl_b.fmt(3)} | {kl_r.fmt(3)} |", flush=True)
    cosine = float(units[0] @ units[1])
    print(f"|  | cos(balanced, pooled) = {cosine:+.2f} | | | | | | | | | |" + (" |" if COSTS else ""),
          flush=True)
