"""Baseline consistency per behaviour: the first 64 val questions by id, both orders, SmolLM2-135M fp32.

Run from the repository root: PYTHONPATH=. .venv/bin/python docs/baseline_consistency.py
(about 2 min on 2 cores).
"""
import torch

from steerlab.lm.model import DEFAULT_MODEL_DIR, load_model
from steerlab.measure.letter import letter_scores
from steerlab.measure.statistics import row
from steerlab.questions.behaviors import CATALOGUE, data_file
from steerlab.questions.data import load_items
from steerlab.questions.orders import answers_in_order

lm = load_model(str(DEFAULT_MODEL_DIR), "fp32")
print("| behaviour | n | behaviour % | order-mean logit diff | letter shift | consistency % | correlation |")
print("|---|---|---|---|---|---|---|")
for name in CATALOGUE:
    items = sorted(load_items(data_file(name), "val"), key=lambda i: i.id)[:64]
    answers, skipped = answers_in_order(lm.tokenizer, items, "both")
    out = letter_scores(lm.model, answers, 7, torch.zeros(1, lm.d_model), pad_id=lm.tokenizer.pad_token_id)
    by_order = out.logit_diff.numpy().reshape(1, 2, -1)[0]
    r = row(0.0, by_order.mean(0), out.answer_mass.numpy().reshape(2, -1).mean(0), by_order.mean(0), by_order)
    print(f"| {name} | {by_order.shape[1]} | {r.positive.fmt()} | {r.mean_diff.fmt(3, True)} | "
          f"{r.letter_shift.fmt(3, True)} | {r.consistency.fmt()} | {r.correlation.fmt(2, True)} |")
