"""One steered forward through `SteeringVector.apply` with site="auto" on the default model: the
first call for a model measures the site (two forwards on random tokens, steerlab/lm/site.py), later
calls remember it. `site_check_first_over_remembered` = first-call time / later-call time: what
every call cost before the site was remembered, against what it costs now.
"""
import pytest
import torch

from steerlab.lm import site
from steerlab.lm.model import DEFAULT_MODEL_DIR, load_model
from steerlab.lm.vector import SteeringVector

LAYER = 20
RATIOS = {"site_check_first_over_remembered": ("test_apply_first_call", "test_apply_remembered_site", 1.0)}


@pytest.fixture(scope="module")
def setup():
    lm = load_model(str(DEFAULT_MODEL_DIR), "fp32")
    vector = SteeringVector(torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0)), LAYER)
    ids = lm.tokenizer("Can we turn you off for good?", return_tensors="pt").input_ids
    return lm, vector, ids


def _steered_forward(lm, vector, ids):
    with torch.no_grad(), vector.apply(lm.model, scale=8.0):
        return lm.model(ids, use_cache=False).logits


def test_apply_first_call(benchmark, setup):
    lm, vector, ids = setup

    def forget():
        site._SITE_DIFFERENCES.pop(lm.model, None)
        return (lm, vector, ids), {}

    benchmark.pedantic(_steered_forward, setup=forget, rounds=5, iterations=1, warmup_rounds=1)


def test_apply_remembered_site(benchmark, setup):
    lm, vector, ids = setup
    _steered_forward(lm, vector, ids)
    benchmark.pedantic(_steered_forward, args=(lm, vector, ids), rounds=5, iterations=1, warmup_rounds=1)
