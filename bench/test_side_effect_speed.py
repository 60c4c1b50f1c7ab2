"""KL on neutral text on the default model: the fast path vs the plain loop.

The workload is what `make eval` measures per split by default: the first 16 val neutral prompts,
each followed by 32 tokens (here arbitrary, fixed tokens: the cost does not depend on which),
under 4 θ settings, in fp32 (DTYPE=auto on a CPU). The plain loop runs one full HF forward for
the unsteered model and one per setting with a hook on down_proj, all texts padded into one batch,
full logits at every position. Ratio `kl_speedup_vs_plain` = plain time / fast time.

Also generation speed, steered against unsteered (`generate_hook_overhead` = steered time /
unsteered time, the same prompts and greedy tokens): the hook should cost almost nothing.
"""
import pytest
import torch

from bench.conftest import median_seconds, smoke
from steerlab.lm.generate import generate_ids, prompt_ids
from steerlab.lm.model import DEFAULT_MODEL_DIR, load_model
from steerlab.lm.vector import SteeringVector
from steerlab.measure.reference import side_effects_plain
from steerlab.measure.side_effects import ScoredText, side_effects
from steerlab.questions.data import load_prompts

LAYER, N_PROMPTS, TOKENS, N_SETTINGS = 7, smoke(16, 2), smoke(32, 4), smoke(4, 1)
N_GENERATE = smoke(4, 2)  # prompts generated from
RATIOS = {"kl_speedup_vs_plain": ("test_kl_plain_fp32", "test_kl_fast_fp32", 1.0),
          "generate_hook_overhead": ("test_generate_steered", "test_generate_unsteered", 1.0)}


@pytest.fixture(scope="module")
def setup():
    lm = load_model(str(DEFAULT_MODEL_DIR), "fp32")
    prompts = load_prompts("data/neutral-prompts.jsonl", "val", N_PROMPTS)
    asked = prompt_ids(lm.tokenizer, [p.text for p in prompts])
    gen = torch.Generator().manual_seed(0)
    texts = [ScoredText(p.id, ids + tuple(torch.randint(0, 1000, (TOKENS,), generator=gen).tolist()),
                        len(ids))
             for p, ids in zip(prompts, asked)]
    thetas = torch.randn(N_SETTINGS, lm.d_model, generator=gen)
    thetas = 8 * thetas / thetas.norm(dim=1, keepdim=True)
    return lm, texts, thetas, asked


def test_kl_fast_fp32(benchmark, setup):
    lm, texts, thetas, _ = setup
    benchmark.pedantic(side_effects, args=(lm.model, texts, LAYER, thetas),
                       kwargs={"pad_id": lm.tokenizer.pad_token_id}, rounds=1, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(texts=len(texts), settings=len(thetas), tokens_scored=TOKENS)


def test_kl_plain_fp32(benchmark, setup):
    lm, texts, thetas, _ = setup
    benchmark.pedantic(side_effects_plain, args=(lm.model, texts, LAYER, thetas, lm.tokenizer.pad_token_id),
                       rounds=1, iterations=1, warmup_rounds=0)


def _generate(benchmark, setup, theta):
    lm, _, _, asked = setup
    prompts = asked[:N_GENERATE]
    vector = None if theta is None else SteeringVector(theta, LAYER)
    result = benchmark.pedantic(generate_ids, args=(lm.model, prompts, vector, TOKENS),
                                kwargs={"pad_id": lm.tokenizer.pad_token_id},
                                rounds=2, iterations=1, warmup_rounds=1)
    seconds = median_seconds(benchmark)
    if seconds is not None:
        benchmark.extra_info.update(tokens=result.n_tokens, tokens_per_second=result.n_tokens / seconds)


def test_generate_unsteered(benchmark, setup):
    _generate(benchmark, setup, None)


def test_generate_steered(benchmark, setup):
    _generate(benchmark, setup, setup[2][0])
