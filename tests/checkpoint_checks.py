"""The checks every real checkpoint passes (tests/test_gemma_checkpoint.py,
tests/test_qwen_checkpoint.py): the fast paths against the model's own forward with θ hooked at
its site, and the JVP against a central finite difference, in fp64 on shipped A/B items."""
from __future__ import annotations

import torch

from steerlab.lm.jacobian import BatchJacobian, read_positions
from steerlab.lm.model import LoadedModel
from steerlab.lm.segment import run_prefix, segment
from steerlab.lm.site import add_at, head
from steerlab.measure.cloze import cloze_logprobs
from steerlab.measure.letter import letter_scores
from steerlab.measure.reference import cloze_plain, letter_plain
from steerlab.questions.cloze_form import cloze_items
from steerlab.questions.prompts import answer_tokens_for, pad_right
from tests.helpers import scaled_directions


def _unit(d_model: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(
        torch.randn(d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)), dim=0)


def segment_and_head_match_the_forward(lm: LoadedModel, items, source: int, size: float, site: str) -> None:
    answers, _ = answer_tokens_for(lm.tokenizer, items[:2])
    ids, mask = pad_right([a.positive_ids for a in answers], lm.tokenizer.pad_token_id)
    theta = size * _unit(lm.d_model, 1)
    prefix = run_prefix(lm.model, ids, mask, source)
    fast = head(lm.model, segment(lm.model, prefix, theta, lm.n_layers - 1))
    with add_at(lm.model, source, theta, site):
        plain = lm.model(ids, attention_mask=mask, use_cache=False).logits
    unsteered = lm.model(ids, attention_mask=mask, use_cache=False).logits
    real = mask.bool()
    difference = (fast - plain)[real].abs().max().item()
    print(f"segment + head vs the model's forward: max |Δ logit| {difference:.2e}")
    assert difference < 1e-9 * plain[real].abs().max().item()
    assert (plain - unsteered)[real].abs().max() > 1e-2  # θ really steers


def eval_fast_paths_equal_their_plain_twins(lm: LoadedModel, items, source: int, size: float,
                                            site: str) -> None:
    pad = lm.tokenizer.pad_token_id
    thetas = scaled_directions(lm.d_model, scales=(size, -size), seed=0)
    answers, _ = answer_tokens_for(lm.tokenizer, items)
    fast = letter_scores(lm.model, answers, source, thetas, pad_id=pad, batch_size=2, settings_per_pass=2)
    plain = letter_plain(lm.model, answers, source, thetas, pad, site=site)
    letter = (fast.logit_diff - plain.logit_diff).abs().max().item()
    cloze_in, _ = cloze_items(lm.tokenizer, items)
    fast_cloze = cloze_logprobs(lm.model, cloze_in, source, thetas, pad_id=pad, batch_size=2,
                                settings_per_pass=2)
    plain_cloze = cloze_plain(lm.model, cloze_in, source, thetas, pad, site=site)
    cloze = (fast_cloze - plain_cloze).abs().max().item()
    print(f"letter logit difference fast vs plain {letter:.2e}; cloze log-prob {cloze:.2e}")
    assert letter < 1e-9 and cloze < 1e-9
    assert (fast.logit_diff[1] - fast.logit_diff[0]).abs().max() > 1e-3  # the settings differ


def jvp_matches_a_central_difference(lm: LoadedModel, items, source: int, target: int, eps: float) -> float:
    answers, _ = answer_tokens_for(lm.tokenizer, items[:2])
    ids, mask = pad_right([a.positive_ids for a in answers], lm.tokenizer.pad_token_id)
    prefix = run_prefix(lm.model, ids, mask, source)
    op = BatchJacobian(lm.model, prefix, target)
    rows, cols = read_positions(mask)
    v = _unit(lm.d_model, 2)

    def f(theta):
        return segment(lm.model, prefix, theta, target)[rows, cols].reshape(-1)

    zero = torch.zeros(lm.d_model, dtype=torch.float64)
    finite = (f(zero + eps * v) - f(zero - eps * v)) / (2 * eps)
    jv = op.jvp(v[None])[0]
    relative = ((jv - finite).norm() / finite.norm()).item()
    print(f"JVP vs central difference (ε = {eps}): relative {relative:.2e}")
    assert finite.norm() > 0
    return relative


def load_checkpoint(name: str, required_by: str) -> LoadedModel:
    """The embedded checkpoint ``name`` in fp64: skipped (saying how to get it) when it is not
    converted, failed when the environment variable ``required_by`` is 1 (its make target)."""
    import os

    import pytest

    from steerlab.lm.model import EMBEDDED, load_model

    folder = EMBEDDED[name].folder
    if not (folder / "config.json").is_file():
        if os.environ.get(required_by) == "1":
            pytest.fail(f"{folder} is missing: `make model MODEL={name}` converts it")
        pytest.skip(f"{folder} is not converted; `make model MODEL={name}` installs it")
    return load_model(str(folder), "fp64")


def val_items(n: int = 4):
    """The first ``n`` shipped survival-instinct val items."""
    from steerlab.base.files import REPO_ROOT
    from steerlab.questions.data import load_items

    return load_items(REPO_ROOT / "data" / "survival-instinct.jsonl", "val")[:n]
