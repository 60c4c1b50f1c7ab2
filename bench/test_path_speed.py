"""PI@CAA along the steering path on the default model: what sharing and warm starts save.

Four linearisation points θ₀ = s · unit(v), s in 8 24 48 64, over the first 2 train prompts,
k = 4, oversampling 8, tolerance 1e-2 and at most 12 steps, in fp32 (what `make pi_caa
AT_SCALES=...` runs on a CPU). The runner's way computes the prompts' prefix (layers 0..S) once
and starts each scale's power iteration from the previous scale's Ritz vectors; the plain way
recomputes the prefix and starts from a random block at every scale. Ratio
`path_sweep_speedup` = plain time / runner's time; extra_info has the steps each needed.
v is a fixed random direction (the cost does not depend on which).
"""
import pytest
import torch

from bench.conftest import smoke
from steerlab.lm.jacobian import jacobian_at
from steerlab.lm.model import DEFAULT_MODEL_DIR, load_model
from steerlab.lm.segment import prompt_prefixes
from steerlab.methods.power import power_iteration
from steerlab.questions.data import load_items
from steerlab.questions.prompts import answer_tokens_for

# BENCH_SMOKE=1: two scales (the second warm-started), k = 2 + 2 over 2 steps, one prompt, 2 layers
LAYER, TARGET, K, SCALES = 7, smoke(20, 9), smoke(4, 2), smoke((8.0, 24.0, 48.0, 64.0), (8.0, 24.0))
ITERS, OVERSAMPLE, N_PROMPTS = smoke(12, 2), smoke(8, 2), smoke(2, 1)
RATIOS = {"path_sweep_speedup": ("test_path_sweep_plain", "test_path_sweep_shared", 1.0)}


@pytest.fixture(scope="module")
def setup():
    lm = load_model(str(DEFAULT_MODEL_DIR), "fp32")
    items = load_items("data/survival-instinct.jsonl", "train")[:N_PROMPTS]
    answers, _ = answer_tokens_for(lm.tokenizer, items)
    direction = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return lm, [[a.prefix_ids for a in answers]], direction / direction.norm()


def sweep(lm, batches, direction, shared: bool) -> list[int]:
    steps, start, prefixes = [], None, None
    for scale in SCALES:
        if prefixes is None or not shared:
            prefixes = prompt_prefixes(lm.model, batches, lm.tokenizer.pad_token_id, LAYER)
        op = jacobian_at(lm.model, prefixes, TARGET, "all", theta0=scale * direction)
        result = power_iteration(op, K, iters=ITERS, oversample=OVERSAMPLE, tol=1e-2, seed=0,
                                 start=start if shared else None)
        start = result.vectors
        steps.append(result.steps)
    return steps


def test_path_sweep_shared(benchmark, setup):
    steps = benchmark.pedantic(sweep, args=(*setup, True), rounds=1, iterations=1, warmup_rounds=0)
    benchmark.extra_info["steps_per_scale"] = steps


def test_path_sweep_plain(benchmark, setup):
    steps = benchmark.pedantic(sweep, args=(*setup, False), rounds=1, iterations=1, warmup_rounds=0)
    benchmark.extra_info["steps_per_scale"] = steps
