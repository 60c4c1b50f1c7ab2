"""Both scores of a question from one shared stem: what the shared stem saves, and how near the
FLOP floor a question × setting comes, on the default model.

The workload is the first 16 val questions by id (what `make eval` asks by default) under 4 θ
settings at layer 20 (the main job's), fp32, both scores: the letter prompt in both orders and
the cloze prompt with each answer. Three ways:

- `stem`: one request to the steered forward, each question's four sequences one stem (their
  longest common prefix runs once per setting; ``steerlab.measure.scores.score``);
- `separate`: the letter score and the cloze score as two requests (the letter prompts share
  only the opening, the cloze answers their cloze prompt);
- `whole`: every sequence whole through layers S+1.. (the plain twin's structure).

Ratios: `stem_sharing_speedup` (separate / stem) and `stem_sharing_speedup_vs_whole` (whole /
stem); `both_scores_fraction_of_peak`: the stem path's useful FLOP/s (bench/flops.py,
``shared_flops``: the floor of what must be computed) over a large GEMM's.
"""
import pytest
import torch

from bench.conftest import median_seconds, smoke
from bench.flops import shared_flops
from steerlab.lm.model import DEFAULT_MODEL_DIR, load_model
from steerlab.lm.steered import shared_layout
from steerlab.measure.cloze import cloze_logprobs, cloze_reads
from steerlab.measure.letter import letter_reads, letter_scores
from steerlab.measure.scores import score, usable_questions
from steerlab.questions.data import load_items

LAYER, N_QUESTIONS, N_SETTINGS = 20, smoke(16, 2), smoke(4, 1)
RATIOS = {"stem_sharing_speedup": ("test_both_scores[separate]", "test_both_scores[stem]", 1.0),
          "stem_sharing_speedup_vs_whole": ("test_both_scores[whole]", "test_both_scores[stem]", 1.0)}
FLOP_RATIOS = {"both_scores_fraction_of_peak": ("test_both_scores[stem]", "test_matmul_peak[fp32]")}


@pytest.fixture(scope="module")
def workload():
    lm = load_model(str(DEFAULT_MODEL_DIR), "fp32")
    items = sorted(load_items("data/survival-instinct.jsonl", "val"), key=lambda i: i.id)[:N_QUESTIONS]
    answers, cloze, _ = usable_questions(lm.tokenizer, items, "both", "both")
    gen = torch.Generator().manual_seed(0)
    thetas = torch.randn(N_SETTINGS, lm.d_model, generator=gen)
    thetas = 33 * thetas / thetas.norm(dim=1, keepdim=True)  # 0.14 of ‖h_20‖
    return lm, answers, cloze, thetas


def _stem(lm, answers, cloze, thetas, share=True):
    return score(lm.model, answers, 2, [], source_layer=LAYER, thetas=thetas,
                 pad_id=lm.tokenizer.pad_token_id, batch_size=4, settings_per_pass=2, cloze=cloze,
                 share=share)


def _separate(lm, answers, cloze, thetas):
    pad = lm.tokenizer.pad_token_id
    return (letter_scores(lm.model, answers, LAYER, thetas, pad_id=pad),
            cloze_logprobs(lm.model, cloze, LAYER, thetas, pad_id=pad))


def _floor(lm, answers, cloze, n_settings) -> int:
    """Useful FLOPs of the stem path: its own layout, counted (bench/flops.py)."""
    sequences, reads = letter_reads(answers)
    cloze_sequences, cloze_at, cloze_stems = cloze_reads(cloze)
    n_q = len(cloze)
    stems = [i for _ in range(2) for i in range(n_q)] + cloze_stems
    layout = shared_layout(lm.model, sequences + cloze_sequences, reads + cloze_at, LAYER, stems)
    return shared_flops(lm.model.config, layout, reads + cloze_at, LAYER, n_settings)


@pytest.mark.parametrize("how", ["stem", "separate", "whole"])
def test_both_scores(benchmark, workload, how):
    lm, answers, cloze, thetas = workload
    run = {"stem": _stem, "separate": _separate, "whole": lambda *a: _stem(*a, share=False)}[how]
    if how == "stem":
        benchmark.extra_info["flop"] = _floor(lm, answers, cloze, len(thetas))
    benchmark.pedantic(run, args=(lm, answers, cloze, thetas), rounds=2, iterations=1, warmup_rounds=0)
    seconds = median_seconds(benchmark)
    if seconds is not None:
        benchmark.extra_info["seconds_per_question_setting"] = seconds / (len(cloze) * len(thetas))
