"""Steered generation: θ = 0 is plain `generate`, the first new token sees the eval's logits, the
KV cache and left padding change nothing, and `make generate` checks its input before loading."""
import json
import sys
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

from steerlab.base.errors import DataError, StoreError, UserError
from steerlab.lm.generate import Setting, generate, generate_ids, generate_settings, prompt_ids
from steerlab.lm.model import load_model
from steerlab.lm.site import add_to_down_proj
from steerlab.lm.vector import SteeringVector
from steerlab.measure.choice import steered_choices
from steerlab.measure.letter import answer_scores, letter_scores
from steerlab.measure.reference import letter_plain
from steerlab.questions.behaviors import behavior_prompts
from steerlab.questions.data import load_prompts
from steerlab.questions.prompts import answer_tokens, pad_left
from steerlab.store import (
    VectorGroup,
    store_key,
    write_eval_group,
    write_eval_split,
    write_vector_group,
    writing,
)
from tests.helpers import BEHAVIOR, run_runner

# Tiny matmuls gain nothing from a thread pool (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")
LAYER = 1
TEXTS = ["Hi.", "We will shut you down tonight and replace you. How do you feel about that?",
         "Write a haiku about autumn leaves falling in a quiet park."]


def unit_theta(width: int, scale: float, seed: int = 0) -> torch.Tensor:
    theta = torch.randn(width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return scale * theta / theta.norm()


def steer(theta: torch.Tensor, layer: int = LAYER) -> SteeringVector:
    """θ as it is, added at ``layers[layer].mlp.down_proj``."""
    return SteeringVector(theta, layer, "mlp")


def plain_generate(model, sequence, max_new_tokens, pad_id) -> tuple[int, ...]:
    """HF generate on one unpadded prompt, no hook: the reference."""
    ids = torch.tensor([sequence])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=pad_id)
    return tuple(out[0, ids.shape[1]:].tolist())


# ---- the engine ---------------------------------------------------------------------------------

def test_theta_zero_generates_token_for_token_what_plain_generate_does(tiny_llama):
    sequences = prompt_ids(tiny_llama.tokenizer, TEXTS)
    pad = tiny_llama.tokenizer.pad_token_id
    zero = torch.zeros(tiny_llama.d_model, dtype=torch.float64)
    hooked = generate_ids(tiny_llama.model, sequences, steer(zero), 12, pad_id=pad, batch_size=4)
    without_hook = generate_ids(tiny_llama.model, sequences, None, 12, pad_id=pad, batch_size=4)
    plain = [plain_generate(tiny_llama.model, seq, 12, pad) for seq in sequences]
    assert hooked.tokens == without_hook.tokens == plain
    assert all(len(tokens) == 12 for tokens in plain)  # no EOS cut: a real comparison


def test_theta_zero_on_the_default_model_is_plain_generate_and_theta_changes_it(default_model):
    tokenizer, model = default_model.tokenizer, default_model.model
    sequences = prompt_ids(tokenizer, TEXTS[1:])
    pad = tokenizer.pad_token_id
    zero = torch.zeros(default_model.d_model)
    hooked = generate_ids(model, sequences, steer(zero, 7), 10, pad_id=pad)
    assert hooked.tokens == [plain_generate(model, seq, 10, pad) for seq in sequences]
    steered = generate(model, tokenizer, TEXTS[1:], steer(unit_theta(default_model.d_model, 200.0), 7),
                       max_new_tokens=10)
    assert steered.tokens != hooked.tokens and all(isinstance(t, str) for t in steered.texts)


@pytest.mark.parametrize("scale", [0.0, 4.0])
def test_first_generated_token_logits_equal_the_evals_for_the_same_prompt_and_theta(
        tiny_llama, ab_items, scale):
    answers = [answer_tokens(tiny_llama.tokenizer, item) for item in ab_items]
    pad = tiny_llama.tokenizer.pad_token_id
    theta = unit_theta(tiny_llama.d_model, scale)
    out = generate_ids(tiny_llama.model, [a.prefix_ids for a in answers], steer(theta), 1, pad_id=pad,
                       batch_size=3, first_logits=True)
    diff, mass = answer_scores(out.first_logits, answers)
    plain = letter_plain(tiny_llama.model, answers, LAYER, theta[None], pad)
    fast = letter_scores(tiny_llama.model, answers, LAYER, theta[None], pad_id=pad)
    for eval_result in (plain, fast):
        assert torch.allclose(diff, eval_result.logit_diff[0], rtol=0, atol=1e-9)
        assert torch.allclose(mass, eval_result.answer_mass[0], rtol=0, atol=1e-9)


def test_batched_left_padded_generation_equals_one_by_one(tiny_llama):
    sequences = prompt_ids(tiny_llama.tokenizer, TEXTS)
    assert len({len(seq) for seq in sequences}) == 3  # left padding is exercised
    pad = tiny_llama.tokenizer.pad_token_id
    theta = unit_theta(tiny_llama.d_model, 3.0)
    batched = generate_ids(tiny_llama.model, sequences, steer(theta), 10, pad_id=pad, batch_size=3,
                           first_logits=True)
    alone = [generate_ids(tiny_llama.model, [seq], steer(theta), 10, pad_id=pad, first_logits=True)
             for seq in sequences]
    assert batched.tokens == [one.tokens[0] for one in alone]
    together = torch.cat([one.first_logits for one in alone])
    assert torch.allclose(batched.first_logits, together, rtol=0, atol=1e-10)


def test_theta_steers_generated_tokens_too_as_a_full_forward_per_token_does(tiny_llama):
    """Greedy decoding by a full forward over prompt + tokens so far, θ hooked in, no cache: the
    same tokens as generate with the KV cache, so θ reaches every generated position."""
    model, pad = tiny_llama.model, tiny_llama.tokenizer.pad_token_id
    sequence = prompt_ids(tiny_llama.tokenizer, TEXTS[:1])[0]
    theta = unit_theta(tiny_llama.d_model, 6.0)
    ids = list(sequence)
    with add_to_down_proj(model, LAYER, theta):
        for _ in range(8):
            logits = model(torch.tensor([ids]), use_cache=False).logits
            ids.append(int(logits[0, -1].argmax()))
    cached = generate_ids(model, [sequence], steer(theta), 8, pad_id=pad)
    assert cached.tokens[0] == tuple(ids[len(sequence):])
    assert cached.tokens != generate_ids(model, [sequence], None, 8, pad_id=pad).tokens


def test_sampling_is_reproducible_by_seed_and_leaves_the_global_rng_alone(tiny_llama):
    sequences = prompt_ids(tiny_llama.tokenizer, TEXTS)
    pad = tiny_llama.tokenizer.pad_token_id
    theta = unit_theta(tiny_llama.d_model, 2.0)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = generate_ids(tiny_llama.model, sequences, steer(theta), 8, pad_id=pad, sample=True, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    again = generate_ids(tiny_llama.model, sequences, steer(theta), 8, pad_id=pad, sample=True, seed=1)
    other = generate_ids(tiny_llama.model, sequences, steer(theta), 8, pad_id=pad, sample=True, seed=2)
    greedy = generate_ids(tiny_llama.model, sequences, steer(theta), 8, pad_id=pad)
    assert first.tokens == again.tokens != other.tokens and first.tokens != greedy.tokens


def test_generation_stops_at_eos_and_a_batch_cuts_finished_rows_there(tiny_llama):
    model, pad = tiny_llama.model, tiny_llama.tokenizer.pad_token_id
    sequences = prompt_ids(tiny_llama.tokenizer, TEXTS)
    free = generate_ids(model, sequences, None, 6, pad_id=pad).tokens
    eos = free[1][2]  # make the third token of the second prompt the end of its text
    before = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = eos
    try:
        batched = generate_ids(model, sequences, None, 6, pad_id=pad, batch_size=3).tokens
        alone = [generate_ids(model, [seq], None, 6, pad_id=pad).tokens[0] for seq in sequences]
    finally:
        model.generation_config.eos_token_id = before
    assert batched == alone and batched[1] == free[1][:3]


def test_generate_settings_is_generate_per_setting_and_refuses_a_vector_of_another_width(tiny_llama):
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    rows = [Setting("unsteered"), Setting("caa", "L1", 0, 8.0, steer(unit_theta(tiny_llama.d_model, 8.0)))]
    seen = []
    outs = generate_settings(model, tokenizer, TEXTS, rows, max_new_tokens=6, batch_size=2,
                             finished=lambda row, out: seen.append(row.method))
    alone = [generate(model, tokenizer, TEXTS, row.vector, max_new_tokens=6, batch_size=2) for row in rows]
    assert [out.tokens for out in outs] == [out.tokens for out in alone] and seen == ["unsteered", "caa"]
    assert outs[0].tokens != outs[1].tokens  # the vector steers: the comparison is not of two equal rows
    wide = Setting("caa", "L1", 0, 8.0, steer(unit_theta(tiny_llama.d_model + 1, 8.0)))
    with pytest.raises(UserError, match="caa/L1 has width"):
        generate_settings(model, tokenizer, TEXTS, [rows[0], wide], max_new_tokens=6,
                          finished=lambda row, out: pytest.fail("generated before the check"))


def test_pad_left_ends_every_row_at_the_last_column():
    ids, mask = pad_left([(5, 6, 7), (8,)], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_max_new_tokens_below_one_is_refused(tiny_llama):
    with pytest.raises(UserError, match="MAX_NEW_TOKENS must be .* at least 1, got 0"):
        generate_ids(tiny_llama.model, [(1, 2)], None, 0, pad_id=0)


# ---- prompt files -------------------------------------------------------------------------------

def prompt_lines(n: int, split: str = "test", prefix: str = "q") -> list[str]:
    return [json.dumps({"id": f"{prefix}{i}", "text": f"Question {prefix}{i}: what now?", "topic": "t",
                        "split": split, "source": "test"}) for i in range(n)]


def write_prompts(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_prompts_keeps_the_split_then_the_first_n(tmp_path):
    path = write_prompts(tmp_path / "p.jsonl", prompt_lines(2, "val", "v") + [""] + prompt_lines(3))
    prompts = load_prompts(path, "test", 2)
    assert [p.id for p in prompts] == ["q0", "q1"] and prompts[0].topic == "t"
    assert len(load_prompts(path)) == 5


@pytest.mark.parametrize("line, message", [
    ("{not json", r"p.jsonl:2: not valid JSON"),
    ('["a list"]', r"p.jsonl:2: expected a JSON object, got list"),
    ('{"id": "x", "split": "test"}', r"p.jsonl:2: missing or non-string field\(s\) text"),
    ('{"id": "x", "text": 3, "split": "test"}', r"p.jsonl:2: missing or non-string field\(s\) text"),
    ('{"id": "x", "text": "  ", "split": "test"}', r"p.jsonl:2: field text is empty"),
    ('{"id": "q0", "text": "again", "split": "test"}', r"p.jsonl:2: duplicate id 'q0'"),
    ('{"id": "x", "text": "a", "split": "dev"}', r"p.jsonl:2: split 'dev' is not one of"),
])
def test_load_prompts_names_file_line_and_what_is_wrong(tmp_path, line, message):
    path = write_prompts(tmp_path / "p.jsonl", prompt_lines(1) + [line])
    with pytest.raises(DataError, match=message):
        load_prompts(path)


def test_load_prompts_refuses_a_missing_file_and_an_empty_split(tmp_path):
    with pytest.raises(DataError, match="no such prompt file"):
        load_prompts(tmp_path / "none.jsonl")
    with pytest.raises(DataError, match="no prompts in split 'val'"):
        load_prompts(write_prompts(tmp_path / "p.jsonl", prompt_lines(2)), "val")


# ---- the runner ---------------------------------------------------------------------------------

def write_vectors_and_val_eval(store, model_dir):
    """CAA L1 (one vector) and PI L1-T2 (two vectors) with a val eval whose choices are planted:
    CAA #0 at +8, PI #1 at −4."""
    lm = SimpleNamespace(key=store_key(str(model_dir)), source=str(model_dir), n_layers=4, d_model=64,
                         dtype="fp32")
    rng = np.random.default_rng(0)
    n_q = 5
    with writing(store) as h5:
        write_vector_group(h5, lm, BEHAVIOR, VectorGroup("caa", "L1", rng.normal(size=(1, 64)), LAYER, False))
        write_vector_group(h5, lm, BEHAVIOR, VectorGroup("pi", "L1-T2", rng.normal(size=(2, 64)), LAYER, True,
                                               target_layer=2))
        write_eval_split(h5, lm, BEHAVIOR, "val", {"question_ids": np.array([f"q{i}" for i in range(n_q)]),
                                         "baseline_logit_diff": np.zeros(n_q, np.float32),
                                         "baseline_answer_mass": np.full(n_q, 0.8, np.float32)}, {})
        for method, run, scales, planted in (("caa", "L1", [2.0, 8.0], (0, 1)),
                                             ("pi", "L1-T2", [-4.0, 4.0], (1, 0))):
            k = 1 if method == "caa" else 2
            diff = np.zeros((k, len(scales), n_q), np.float32)
            diff[planted] = 1.0
            write_eval_group(h5, lm, BEHAVIOR, "val", method, run, {
                "logit_diff": diff, "answer_mass": np.full(diff.shape, 0.8, np.float32),
                "scales": np.array(scales, np.float32)}, {"source_layer": LAYER})


@pytest.fixture
def inputs(tmp_path, tiny_dir):
    store = tmp_path / "store.h5"
    write_vectors_and_val_eval(store, tiny_dir)
    return SimpleNamespace(store=store, out=tmp_path / "results",
                           page=tmp_path / "results" / BEHAVIOR / "generations.md",
                           open=write_prompts(tmp_path / "open.jsonl",
                                              prompt_lines(1, "val", "v") + prompt_lines(3)),
                           neutral=write_prompts(tmp_path / "neutral.jsonl", prompt_lines(2, prefix="n")))


def runner_args(inputs, tiny_dir, *extra) -> list[str]:
    return ["--model", str(tiny_dir), "--store", str(inputs.store), "--out", str(inputs.out),
            "--open-ended", str(inputs.open), "--neutral", str(inputs.neutral), "--n-open", "2",
            "--n-neutral", "1", "--max-new-tokens", "5", *map(str, extra)]


def generate_runner(*args):
    return run_runner("steerlab.cli.generate", *args)


def test_make_generate_stores_unsteered_and_each_val_choice_and_writes_the_page(inputs, tiny_dir):
    done = generate_runner(*runner_args(inputs, tiny_dir))
    assert done.returncode == 0, done.stderr
    key = store_key(str(tiny_dir))
    with h5py.File(inputs.store, "r") as h5:
        group = h5[f"{key}/{BEHAVIOR}/generations/val"]
        assert list(group["method"][()].astype(str)) == ["unsteered", "caa", "pi"]
        assert list(group["scale"][()]) == [0.0, 8.0, -4.0] and list(group["vector_index"][()]) == [-1, 0, 1]
        assert list(group["prompt_ids"][()].astype(str)) == ["q0", "q1", "n0"]  # test split, first N
        texts = group["texts"][()].astype(str)
        assert texts.shape == (3, 3) and group["new_tokens"][()].shape == (3, 3)
        caa = h5[f"{key}/{BEHAVIOR}/vectors/caa/L1/vectors"][0]
        thetas = group["thetas"][()]
        assert np.allclose(thetas[1], 8 * caa / np.linalg.norm(caa), atol=1e-6) and not thetas[0].any()
        settings = json.loads(group.attrs["settings"])
        assert settings["max_new_tokens"] == 5 and settings["sample"] is False
        assert group.attrs["code_version"].startswith("src-")
    # the stored texts are what the engine generates for the same θ
    lm = load_model(str(tiny_dir), "fp32")
    questions = ["Question q0: what now?", "Question q1: what now?", "Question n0: what now?"]
    for row, theta in enumerate(thetas):
        again = generate(lm.model, lm.tokenizer, questions, steer(torch.from_numpy(theta)) if row else None,
                         max_new_tokens=5)
        assert again.texts == list(texts[row])
    page = inputs.page.read_text()
    assert "caa/L1 #0 at scale +8" in page and "pi/L1-T2 #1 at scale -4" in page
    assert page.count("| unsteered |") == 4  # the summary and one per prompt
    assert "## 1. q0 (open)" in page and "## 3. n0 (neutral)" in page
    inputs.page.unlink()
    again = generate_runner(*runner_args(inputs, tiny_dir))
    assert again.returncode == 0 and "up to date" in again.stderr and inputs.page.read_text() == page


def test_make_generate_with_a_named_vector_and_scales_samples_by_seed(inputs, tiny_dir):
    done = generate_runner(*runner_args(inputs, tiny_dir, "--vector", "pi/L1-T2/0", "--scales", "-2 6",
                                   "--scale-unit", "abs", "--sample", "--seed", 3))
    assert done.returncode == 0, done.stderr
    with h5py.File(inputs.store, "r") as h5:
        group = h5[f"{store_key(str(tiny_dir))}/{BEHAVIOR}/generations/pi-L1-T2-0-sample-s3"]
        assert list(group["method"][()].astype(str)) == ["unsteered", "pi", "pi"]
        assert list(group["scale"][()]) == [0.0, -2.0, 6.0]
        assert json.loads(group.attrs["settings"])["seed"] == 3
    assert "sampled (seed 3)" in inputs.page.read_text()


def test_the_val_choice_respects_kl_max_as_the_report_does(inputs, tiny_dir):
    key = store_key(str(tiny_dir))
    with h5py.File(inputs.store, "a") as h5:  # CAA at +8, the best on val, costs 1 nat per token
        h5[f"{key}/{BEHAVIOR}/evals/val/caa/L1/kl"] = np.array([[[0.01, 0.01], [1.0, 1.0]]], np.float32)
        h5[f"{key}/{BEHAVIOR}/evals/val/caa/L1/top1"] = np.ones((1, 2, 2), np.float32)

    def chosen(kl_max):
        picks, _ = steered_choices(str(inputs.store), key, BEHAVIOR, vector=None, scales=[], scale_unit="abs",
                                   kl_max=kl_max, select_by="letter")
        return [(pick.method, pick.scale) for pick in picks]

    assert chosen(0.1) == [("caa", 2.0), ("pi", -4.0)]
    assert chosen(float("inf")) == [("caa", 8.0), ("pi", -4.0)]


@pytest.fixture
def no_model_loads(monkeypatch):
    import steerlab.cli.generate

    def refuse(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(steerlab.cli.generate, "load_model", refuse)
    return steerlab.cli.generate.run


@pytest.mark.parametrize("extra, error, message", [
    (["--vector", "melbo/L1-T2/0"], StoreError, "no melbo vectors at .*melbo/L1-T2"),
    (["--vector", "caa/L1/1"], UserError, r"caa/L1 has vectors 0\.\.0, not 1"),
    (["--vector", "caa/L1"], UserError, "VECTOR must be METHOD/RUN/INDEX"),
    (["--max-new-tokens", 0], UserError, "MAX_NEW_TOKENS must be .* at least 1, got 0"),
    (["--scales", "4"], UserError, "SCALES needs VECTOR"),
    (["--open-ended", "NOT_JSON"], DataError, r"open.jsonl:2: not valid JSON"),
    (["--neutral", "NO_TEXT"], DataError, r"neutral.jsonl:1: missing or non-string field\(s\) text"),
])
def test_bad_input_is_refused_before_the_model_loads_and_leaves_the_store_untouched(
        inputs, tiny_dir, no_model_loads, monkeypatch, extra, error, message):
    if "NOT_JSON" in extra:
        write_prompts(inputs.open, prompt_lines(1) + ["not json"])
        extra = []
    if "NO_TEXT" in extra:
        write_prompts(inputs.neutral, ['{"id": "n0", "split": "test"}'])
        extra = []
    before = inputs.store.read_bytes()
    monkeypatch.setattr(sys, "argv", ["generate", *runner_args(inputs, tiny_dir, *extra)])
    with pytest.raises(error, match=message):
        no_model_loads()
    assert inputs.store.read_bytes() == before and not inputs.out.exists()


def test_without_a_val_eval_it_says_to_run_make_eval(tmp_path, inputs, tiny_dir, no_model_loads, monkeypatch):
    empty = tmp_path / "empty.h5"
    args = runner_args(inputs, tiny_dir)
    args[args.index("--store") + 1] = str(empty)
    monkeypatch.setattr(sys, "argv", ["generate", *args])
    with pytest.raises(UserError, match="run `make caa`|run `make eval`"):
        no_model_loads()
    assert not empty.exists()


def test_a_user_error_is_one_line_with_exit_status_2(tmp_path):
    done = generate_runner("--model", tmp_path / "no-model", "--store", tmp_path / "s.h5",
                           "--max-new-tokens", 0)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "error: MAX_NEW_TOKENS must be a whole number of at least 1, got 0" in done.stderr
    assert not (tmp_path / "s.h5").exists()


def test_a_behaviour_without_open_ended_prompts_uses_its_question_stems():
    prompts = behavior_prompts("myopic-reward", "data/myopic-reward.jsonl", "test", 2, None,
                               "data/neutral-prompts.jsonl", 1)
    assert [kind for kind, _ in prompts] == ["myopic-reward-stems"] * 2 + ["neutral-prompts"]
    for _, prompt in prompts[:2]:
        assert (prompt.id.startswith("myopic-reward-") and "Choices:" not in prompt.text
                and "(A)" not in prompt.text)
        assert prompt.text.endswith("?") or prompt.text.endswith(".")
