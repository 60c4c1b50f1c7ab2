"""Which yardstick makes a scale mean the same cost on two models: KL against |θ| per direction.

For one model and source layer: every stored vector of a store (``make caa pi melbo`` first) and
N_RANDOM random directions, each added at |θ| = f · median ‖h_S‖ for f on a log grid (both signs
for sign-free directions), KL(unsteered ‖ steered) on the 8 neutral val prompts' unsteered
continuations (32 tokens; eval's KL). For each direction the |θ| at which KL reaches TARGET
(log-log interpolation between the grid points around the first crossing), read against
candidate yardsticks measured on the first 128 train prompts (the scale unit's prompts):

- median ‖h_S‖ (the unit of SCALE_UNIT=resid);
- median ‖h_S − μ‖, μ the mean residual over tokens (first tokens left out): the spread of the
  stream without its constant part (a few massive channels on Gemma);
- per direction: √d · std over tokens of ⟨h_S, v̂⟩, the stream's own spread along the direction.

A yardstick travels if |θ*| / yardstick is about the same on both models for the same kind of
direction. Run from the repository root, per model:

    PYTHONPATH=. .venv/bin/python docs/scale_units.py MODEL LAYER STORE [BEHAVIOR]

(SmolLM2 at layer 20: about 2 min on 2 cores; Gemma-3-270M at layer 12: about 10 min.)
"""
import sys

import numpy as np
import torch

from steerlab.lm.generate import generate_ids, prompt_ids
from steerlab.lm.model import load_model
from steerlab.lm.segment import batched_prefixes
from steerlab.measure.grid import random_directions
from steerlab.measure.scales import NORM_PROMPTS
from steerlab.measure.scores import score
from steerlab.measure.side_effects import ScoredText
from steerlab.questions.data import load_items, load_prompts
from steerlab.store import read_vector_groups

MODEL, LAYER, STORE = sys.argv[1], int(sys.argv[2]), sys.argv[3]
BEHAVIOR = sys.argv[4] if len(sys.argv) > 4 else "survival-instinct"
FRACTIONS = [2.0 ** k for k in range(-8, 2)]  # 0.004 .. 2 of the median ‖h_S‖
TARGET = 0.05  # nats per token: KL_MAX
N_RANDOM = 4

lm = load_model(MODEL, "fp32")
pad = lm.tokenizer.pad_token_id
torch.manual_seed(0)

# the stream at S over the scale unit's prompts
sequences = prompt_ids(lm.tokenizer,
                       [i.question for i in load_items(f"data/{BEHAVIOR}.jsonl", "train")[:NORM_PROMPTS]])
rows = []
with torch.no_grad():
    for _, prefix in batched_prefixes(lm.model, sequences, LAYER, pad, 16):
        mask = prefix.attention_mask.bool().clone()
        mask[:, 0] = False  # the attention sink
        rows.append(prefix.hidden[mask].double().cpu())
hidden = torch.cat(rows)  # [tokens, d]
norms = hidden.norm(dim=1)
mean = hidden.mean(0)
centred = (hidden - mean).norm(dim=1)
top = (hidden ** 2).mean(0).sort(descending=True).values
share5 = float(top[:5].sum() / top.sum())
median = float(norms.median())
print(f"{MODEL} L{LAYER}: {len(hidden)} tokens (first tokens left out); median ‖h_S‖ {median:.1f}, "
      f"median ‖h_S − μ‖ {float(centred.median()):.1f}, ‖μ‖ {float(mean.norm()):.1f}, "
      f"top 5 of {lm.d_model} channels hold {share5:.0%} of E‖h‖²")

# the directions
directions: list[tuple[str, torch.Tensor, bool]] = []
for group in read_vector_groups(STORE, lm.key, BEHAVIOR):
    if group.source_layer != LAYER or "-at" in group.run:
        continue
    for i, v in enumerate(group.vectors[:2]):
        directions.append((f"{group.method}/{group.run} #{i}", torch.from_numpy(v.copy()).double(),
                           group.sign_free))
for i, v in enumerate(random_directions(N_RANDOM, lm.d_model, 0, LAYER)):
    directions.append((f"random #{i}", v, True))

prompts = load_prompts("data/neutral-prompts.jsonl", "val", 8)
asked = prompt_ids(lm.tokenizer, [p.text for p in prompts])
continued = generate_ids(lm.model, asked, None, 32, pad_id=pad).tokens
texts = [ScoredText(p.id, a + c, len(a)) for p, a, c in zip(prompts, asked, continued)]

absolute = [f * median for f in FRACTIONS]
thetas, where = [torch.zeros(lm.d_model, dtype=torch.float64)], []
for name, v, sign_free in directions:
    unit = v / v.norm()
    for sign in ((-1, 1) if sign_free else (1,)):
        where.append((name, sign, len(thetas)))
        thetas += [sign * s * unit for s in absolute]
out = score(lm.model, [], 1, texts, source_layer=LAYER, thetas=torch.stack(thetas).float(), pad_id=pad,
            batch_size=4, settings_per_pass=4)
kl = out.kl.mean(1)  # [settings]


def crossing(curve: np.ndarray) -> float:
    """|θ| where KL first reaches TARGET, log-log interpolated (nan if never in the grid)."""
    above = np.nonzero(curve >= TARGET)[0]
    if len(above) == 0 or above[0] == 0:
        return float("nan")
    j = above[0]
    x0, x1 = np.log(absolute[j - 1]), np.log(absolute[j])
    y0, y1 = np.log(max(curve[j - 1], 1e-12)), np.log(curve[j])
    return float(np.exp(x0 + (np.log(TARGET) - y0) * (x1 - x0) / (y1 - y0)))


print(f"\nKL per token at |θ| = f · {median:.1f}, f = " + " ".join(f"{f:g}" for f in FRACTIONS))
print(f"| direction | sign | KL at f = {FRACTIONS[0]:g} … {FRACTIONS[-1]:g} | |θ*| (KL {TARGET}) "
      "| / median ‖h‖ | / median ‖h − μ‖ | / √d·std⟨h, v̂⟩ |")
print("|---|---|---|---|---|---|---|")
by_name = {name: v / v.norm() for name, v, _ in directions}
for name, sign, start in where:
    curve = kl[start:start + len(FRACTIONS)]
    star = crossing(curve)
    along = float((hidden @ by_name[name]).std()) * lm.d_model ** 0.5
    print(f"| {name} | {sign:+d} | {' '.join(f'{k:.3g}' for k in curve)} | {star:.1f} | {star / median:.3f} "
          f"| {star / float(centred.median()):.3f} | {star / along:.3f} |", flush=True)
