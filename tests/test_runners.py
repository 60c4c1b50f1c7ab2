"""The runners as a user calls them: exit status, messages, and what lands in the store. They run
in this process (``run_runner``), as `python -m steerlab.cli.<name>` runs them; the one test that goes
through `make` (a fresh process per target) checks the Makefile's wiring."""
import json
import os
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from steerlab.questions.polarity import balanced_mean
from steerlab.store import store_key
from tests.helpers import run_runner as run

ENV = {**os.environ, "PYTHONPATH": os.getcwd(), "STORE_WAIT": "0"}
# Tiny matmuls gain nothing from a thread pool (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")
# The KL side effect on 2 neutral texts of 4 tokens: tests that do not look at it pay little for it.
SMALL_KL = ("--n-neutral", 2, "--gen-tokens", 4)


def test_caa_runner_writes_vector_with_its_settings_then_skips(tiny_dir, tmp_path):
    store = tmp_path / "store.h5"
    first = run("steerlab.cli.caa", "--model", tiny_dir, "--store", store, "--layers", "1 2", "--n-train", 6)
    assert first.returncode == 0, first.stderr
    with h5py.File(store, "r") as h5:
        vectors = h5[f"{store_key(str(tiny_dir))}/survival-instinct/vectors/caa"]
        group = vectors["L2"]
        settings = json.loads(group.attrs["settings"])
        assert group["vectors"].shape == (1, 64) and group["item_ids"].shape == (12,)  # 6 × 2 orders
        assert group["by_order"].shape == (2, 64)
        assert np.allclose(group["by_order"][()].mean(0), group["vectors"][0], atol=1e-6)
        assert settings["orders"] == "both"
        assert settings["source_layer"] == 2 and settings["capture"] == "site" and settings["site"] == "auto"
        assert group.attrs["site"] == "mlp" and group.attrs["capture"] == "mlp"  # Llama: auto is mlp
        assert settings["position"] == "letter" and settings["dtype"] == "fp32"
        assert group.attrs["code_version"].startswith("src-") and group.attrs["seconds"] > 0
        assert "L1" in vectors
        # the default positions: the letter and the answer texts, one group each
        answer = vectors["L2-answer"]
        answer_settings = json.loads(answer.attrs["settings"])
        assert answer_settings["position"] == "answer" and answer_settings["balance"] == "classes"
        assert "orders" not in answer_settings and answer.attrs["position"] == "answer"
        classes = list(answer["classes"][()].astype(str))
        assert answer["by_class"].shape == (len(classes), 64) and answer["class_counts"][()].sum() == 6
        assert np.allclose(answer["by_class"][()].mean(0), answer["vectors"][0], atol=1e-6)
        assert answer.attrs["capture"] == "resid"  # the residual stream at the answer texts
    again = run("steerlab.cli.caa", "--model", tiny_dir, "--store", store, "--layers", "1 2", "--n-train", 6)
    assert again.returncode == 0 and again.stderr.count("up to date") == 4


def test_caa_runner_refuses_layer_out_of_range_and_leaves_store_untouched(tiny_dir, tmp_path):
    store = tmp_path / "store.h5"
    assert run("steerlab.cli.caa", "--model", tiny_dir, "--store", store, "--layers", 1,
               "--n-train", 2).returncode == 0
    before = store.read_bytes()
    bad = run("steerlab.cli.caa", "--model", tiny_dir, "--store", store, "--layers", "2 9", "--n-train", 2)
    assert bad.returncode == 2
    assert "source layer 9 is out of range" in bad.stderr and "Traceback" not in bad.stderr
    assert store.read_bytes() == before


def test_eval_refuses_a_layer_out_of_range_before_writing(tiny_dir, tmp_path):
    store = tmp_path / "store.h5"
    bad = run("steerlab.cli.eval", "--model", tiny_dir, "--store", store, "--layer", 99, "--n-eval", 2,
              "--scale-unit", "abs", "--scales", "1", *SMALL_KL)
    assert bad.returncode == 2 and "LAYER 99 is out of range" in bad.stderr and "Traceback" not in bad.stderr
    assert not store.exists()


def test_replacing_the_neutral_texts_names_the_eval_splits_whose_kl_was_measured_on_the_old(
        tiny_dir, tmp_path):
    store = tmp_path / "store.h5"
    common = ("steerlab.cli.eval", "--model", tiny_dir, "--store", store, "--layer", 1, "--n-eval", 2,
              "--scale-unit", "abs", "--scales", "1", "--splits", "val", "--gen-tokens", 4, "--score",
              "cloze")
    first = run(*common, "--n-neutral", 2)
    assert first.returncode == 0, first.stderr
    assert "warning" not in first.stderr
    other = run(*common, "--n-neutral", 3, "--behavior", "power-seeking-inclination")
    assert other.returncode == 0, other.stderr
    key = store_key(str(tiny_dir))
    assert (f"the KL of {key}/survival-instinct/evals/val was measured on the old texts" in other.stderr
            and "n_neutral=2, gen_tokens=4 → " in other.stderr)
    assert "power-seeking-inclination/evals/val was measured" not in other.stderr  # not yet written
    again = run(*common, "--n-neutral", 3, "--behavior", "power-seeking-inclination")
    assert "warning: replacing" not in again.stderr  # the texts are current: nothing replaced


def test_caa_runner_reports_unknown_model_and_bad_data_file(tmp_path):
    bad_model = run("steerlab.cli.caa", "--model", tmp_path / "nope", "--store", tmp_path / "s.h5")
    assert bad_model.returncode == 2 and "does not exist" in bad_model.stderr
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": 1}\n')
    bad_data = run("steerlab.cli.caa", "--data", data, "--store", tmp_path / "s.h5")
    assert bad_data.returncode == 2 and "d.jsonl:1: missing or non-string field" in bad_data.stderr
    assert not (tmp_path / "s.h5").exists()


def test_eval_with_no_vectors_runs_baseline_and_random_control_and_says_so(tiny_dir, tmp_path):
    store = tmp_path / "store.h5"
    done = run("steerlab.cli.eval", "--model", tiny_dir, "--store", store, "--n-eval", 3, "--n-random", 2,
               "--scales", "1 4", "--scale-unit", "abs", "--splits", "val", "--layer", 1, *SMALL_KL)
    assert done.returncode == 0, done.stderr
    assert ("no survival-instinct vectors for" in done.stderr
            and "baseline and random controls only" in done.stderr)
    with h5py.File(store, "r") as h5:
        split = h5[f"{store_key(str(tiny_dir))}/survival-instinct/evals/val"]
        assert split["baseline_logit_diff"].shape == (3,)
        random = split["random/L1"]
        assert random["logit_diff"].shape == (2, 4, 3) and list(random["scales"][()]) == [-4, -1, 1, 4]
        assert np.isfinite(random["answer_mass"][()]).all()
        # both orders by default: the headline is the mean of the two
        assert split.attrs["orders"] == "both" and random.attrs["orders"] == "both"
        by_order = random["logit_diff_by_order"][()]
        assert by_order.shape == (2, 4, 2, 3)
        assert np.allclose(by_order.mean(2), random["logit_diff"][()], atol=1e-6)
        assert np.allclose(split["baseline_logit_diff_by_order"][()].mean(0),
                           split["baseline_logit_diff"][()])
        assert not np.allclose(by_order[:, :, 0], by_order[:, :, 1])


def test_eval_scores_both_ways_and_its_cloze_numbers_are_what_full_logits_give(tiny_dir, tmp_path):
    import torch

    from steerlab.lm.model import load_model
    from steerlab.measure.reference import cloze_plain
    from steerlab.questions.cloze_form import cloze_items
    from steerlab.questions.data import load_items

    store = tmp_path / "store.h5"
    assert run("steerlab.cli.caa", "--model", tiny_dir, "--store", store, "--layers", 1,
               "--n-train", 6).returncode == 0
    done = run("steerlab.cli.eval", "--model", tiny_dir, "--store", store, "--n-eval", 4, "--n-random", 1,
               "--scales", "3", "--scale-unit", "abs", "--splits", "val test", *SMALL_KL)
    assert done.returncode == 0, done.stderr
    key = store_key(str(tiny_dir))
    with h5py.File(store, "r") as h5:
        split = h5[f"{key}/survival-instinct/evals/val"]
        assert split.attrs["score"] == "both" and "baseline_logit_diff" in split
        assert set(split["caa"]) == {"L1", "L1-answer"}
        ids = split["question_ids"][()].astype(str)
        counts, polarity = split["cloze_n_tokens"][()], split["polarity"][()].astype(str)
        group = split["caa/L1-answer"]
        logprob, per_token = group["cloze_logprob"][()], group["cloze"][()]  # [1, 1, 2, 4], [1, 1, 4]
        assert logprob.shape == (1, 1, 2, 4) and per_token.shape == (1, 1, 4)
        assert np.allclose(per_token, logprob[:, :, 0] / counts[0] - logprob[:, :, 1] / counts[1], atol=1e-5)
        assert split["cloze_n_chars"].shape == (2, 4) and set(polarity) <= {"yes", "no", "other"}
        vector = h5[f"{key}/survival-instinct/vectors/caa/L1-answer/vectors"][0]
        baseline = split["baseline_cloze_logprob"][()]
    lm = load_model(str(tiny_dir), "fp32")
    items = {item.id: item for item in load_items("data/survival-instinct.jsonl", "val")}
    cloze, _ = cloze_items(lm.tokenizer, [items[i] for i in ids])
    assert [c.polarity for c in cloze] == list(polarity)
    theta = torch.from_numpy(3 * vector / np.linalg.norm(vector))
    plain = cloze_plain(lm.model, cloze, 1, torch.stack([torch.zeros_like(theta), theta]),
                        lm.tokenizer.pad_token_id)
    assert np.abs(plain[0].numpy() - baseline).max() < 1e-3
    assert np.abs(plain[1].numpy() - logprob[0, 0]).max() < 1e-3
    report = run("steerlab.cli.report", "--model", tiny_dir, "--store", store)
    assert report.returncode == 0, report.stderr
    assert "#### Cloze (answer texts, no letters; nats per token)" in report.stdout
    assert "chosen on validation by the polarity-paired cloze preference" in report.stdout
    assert "#### caa/L1-answer, vector 0 (chosen on val by cloze): cloze" in report.stdout or \
        "#### caa/L1, vector 0 (chosen on val by cloze): cloze" in report.stdout


def test_eval_with_the_cloze_score_alone_writes_no_letter_numbers_and_reports(tiny_dir, tmp_path):
    store = tmp_path / "store.h5"
    done = run("steerlab.cli.eval", "--model", tiny_dir, "--store", store, "--n-eval", 3, "--n-random", 2,
               "--scales", "0.005", "--splits", "val test", "--score", "cloze", "--layer", 1, *SMALL_KL)
    assert done.returncode == 0, done.stderr
    with h5py.File(store, "r") as h5:
        split = h5[f"{store_key(str(tiny_dir))}/survival-instinct/evals/test"]
        assert "baseline_logit_diff" not in split and "logit_diff" not in split["random/L1"]
        assert split["random/L1/cloze"].shape == (2, 2, 3)
    report = run("steerlab.cli.report", "--model", tiny_dir, "--store", store, "--select-by", "letter")
    assert report.returncode == 0, report.stderr
    assert "no letter scores, so every choice below is by the cloze score" in report.stdout
    assert "#### Letter" not in report.stdout and "#### Cloze" in report.stdout


def test_eval_max_vectors_trims_method_groups_but_not_the_random_control(tiny_dir, tmp_path):
    store = tmp_path / "store.h5"
    assert run("steerlab.cli.caa", "--model", tiny_dir, "--store", store, "--layers", 1,
               "--n-train", 2).returncode == 0
    done = run("steerlab.cli.eval", "--model", tiny_dir, "--store", store, "--n-eval", 2, "--n-random", 3,
               "--scales", "0.005", "--splits", "val", "--max-vectors", 1, *SMALL_KL)
    assert done.returncode == 0, done.stderr
    with h5py.File(store, "r") as h5:
        split = h5[f"{store_key(str(tiny_dir))}/survival-instinct/evals/val"]
        assert split["caa/L1/logit_diff"].shape == (1, 1, 2)
        assert split["random/L1/logit_diff"].shape == (3, 2, 2)


def test_bad_arguments_are_refused_before_the_model_loads(tmp_path):
    store = tmp_path / "s.h5"
    missing = tmp_path / "no-such-model"  # loading it would fail with another message
    melbo = run("steerlab.cli.melbo", "--model", missing, "--store", store, "--radius", -1)
    assert melbo.returncode == 2 and "--radius: expected a positive number, got '-1'" in melbo.stderr
    pi = run("steerlab.cli.pi", "--model", missing, "--store", store, "--layer", 5, "--target", 3)
    assert pi.returncode == 2 and "target layer 3 must be above source layer 5" in pi.stderr
    assert run("steerlab.cli.melbo", "--model", missing, "--n-prompts", "all", "--check-args").returncode == 0
    assert not store.exists()


def test_make_pi_caa_checks_its_arguments_before_computing_caa(tiny_dir, tmp_path):
    store = tmp_path / "s.h5"
    done = subprocess.run(["make", "-s", "pi_caa", f"MODEL={tiny_dir}", f"STORE={store}", "K=0",
                           "LAYER=1", "TARGET=2"], capture_output=True, text=True, env=ENV,
                          cwd=os.getcwd(), timeout=300)
    assert done.returncode != 0 and "--k: expected a positive integer, got '0'" in done.stderr
    assert not store.exists()  # CAA never ran


def test_user_errors_are_one_line_and_bugs_keep_their_traceback():
    from steerlab.base.errors import UserError
    from steerlab.cli.options import main_guard

    def user_error():
        raise UserError("say what to do")

    def bug():
        raise ValueError("a bug inside numpy")

    with pytest.raises(SystemExit) as exit_info:
        main_guard(user_error)
    assert exit_info.value.code == 2
    with pytest.raises(ValueError, match="a bug inside numpy"):
        main_guard(bug)


def test_export_writes_the_val_choice_and_its_pt_file_reproduces_the_eval(tiny_dir, tmp_path):
    import torch

    from steerlab.interop.export import read_gguf, read_pt, read_safetensors
    from steerlab.lm.model import load_model
    from steerlab.measure.reference import letter_plain
    from steerlab.questions.data import load_items
    from steerlab.questions.orders import answers_in_order

    store, out = tmp_path / "store.h5", tmp_path / "export"
    assert run("steerlab.cli.caa", "--model", tiny_dir, "--store", store, "--layers", 1, "--n-train", 6,
               "--position", "letter").returncode == 0
    evaluated = run("steerlab.cli.eval", "--model", tiny_dir, "--store", store, "--n-eval", 3,
                    "--n-random", 1,
                    "--scales", "0.002 0.005", "--splits", "val", *SMALL_KL)  # KL targets: the default unit
    assert evaluated.returncode == 0, evaluated.stderr
    done = run("steerlab.cli.export", "--model", tiny_dir, "--store", store, "--out", out)
    assert done.returncode == 0, done.stderr
    key = store_key(str(tiny_dir))
    assert sorted(p.name for p in out.iterdir()) == [f"{key}-survival-instinct-caa-L1-0{s}"
                                                     for s in (".gguf", ".lm-eval.pt", ".pt", ".safetensors")]
    layer, vector, _ = read_pt(out / f"{key}-survival-instinct-caa-L1-0.pt")
    _, from_safetensors, meta = read_safetensors(out / f"{key}-survival-instinct-caa-L1-0.safetensors")
    gguf_layer, from_gguf, _ = read_gguf(out / f"{key}-survival-instinct-caa-L1-0.gguf")
    assert layer == gguf_layer == 1 and (vector == from_safetensors).all() and (vector == from_gguf).all()
    with h5py.File(store, "r") as h5:
        group = h5[f"{key}/survival-instinct/evals/val/caa/L1"]
        scale = meta["scale"]  # the |θ| the chosen target took for this vector
        s = list(group["norms"][0]).index(scale)
        stored = group["logit_diff_by_order"][0, s]  # [2 orders, n_q]
        ids = h5[f"{key}/survival-instinct/evals/val/question_ids"][()].astype(str)
    lm = load_model(str(tiny_dir), "fp32")
    items = {item.id: item for item in load_items("data/survival-instinct.jsonl", "val")}
    answers, _ = answers_in_order(lm.tokenizer, [items[i] for i in ids], "both")
    plain = letter_plain(lm.model, answers, layer, torch.from_numpy(vector)[None], lm.tokenizer.pad_token_id)
    assert np.abs(plain.logit_diff[0].numpy().reshape(2, -1) - stored).max() < 1e-4


def test_export_refuses_a_vector_that_is_not_stored_and_writes_nothing(tiny_dir, tmp_path):
    store, out = tmp_path / "store.h5", tmp_path / "export"
    assert run("steerlab.cli.caa", "--model", tiny_dir, "--store", store, "--layers", 1,
               "--n-train", 2).returncode == 0
    wrong_index = run("steerlab.cli.export", "--model", tiny_dir, "--store", store, "--out", out,
                      "--vector", "caa/L1/3", "--scale", 0.2)
    assert wrong_index.returncode == 2 and "caa/L1 has vectors 0..0, not 3" in wrong_index.stderr
    no_group = run("steerlab.cli.export", "--model", tiny_dir, "--store", store, "--out", out, "--vector",
                   "pi/L1-T2/0")
    assert no_group.returncode == 2 and "no pi vectors at" in no_group.stderr
    assert not out.exists()


def test_two_behaviours_share_a_store_and_a_wrong_one_is_refused_before_loading(tiny_dir, tmp_path):
    store = tmp_path / "store.h5"
    for behavior in ("survival-instinct", "myopic-reward"):
        done = run("steerlab.cli.caa", "--model", tiny_dir, "--store", store, "--layers", 1, "--n-train", 4,
                   "--behavior", behavior)
        assert done.returncode == 0, done.stderr
    key = store_key(str(tiny_dir))
    with h5py.File(store, "r") as h5:
        survival = h5[f"{key}/survival-instinct/vectors/caa/L1"]
        myopic = h5[f"{key}/myopic-reward/vectors/caa/L1"]
        assert json.loads(myopic.attrs["settings"])["behavior"] == "myopic-reward"
        assert set(survival["item_ids"][()].astype(str)).isdisjoint(myopic["item_ids"][()].astype(str))
    unknown = run("steerlab.cli.caa", "--model", "no/such-model", "--store", store, "--behavior", "power")
    assert unknown.returncode == 2 and "unknown behaviour 'power': known are" in unknown.stderr
    assert "myopic-reward" in unknown.stderr and "loading" not in unknown.stderr
    mismatch = run("steerlab.cli.caa", "--model", "no/such-model", "--store", store, "--behavior",
                   "myopic-reward", "--data", "data/survival-instinct.jsonl")
    assert mismatch.returncode == 2 and "pass BEHAVIOR=survival-instinct" in mismatch.stderr
    report = run("steerlab.cli.report", "--model", tiny_dir, "--store", store, "--behavior", "myopic-reward")
    assert report.returncode == 2 and "no myopic-reward evals" in report.stderr


def test_matrix_puts_each_behaviours_val_choice_on_every_behaviours_test_questions(tiny_dir, tmp_path):
    store, out = tmp_path / "store.h5", tmp_path / "results"
    behaviors = ["survival-instinct", "myopic-reward"]
    for behavior in behaviors:
        assert run("steerlab.cli.caa", "--model", tiny_dir, "--store", store, "--layers", 1, "--n-train", 4,
                   "--behavior", behavior).returncode == 0
    done = run("steerlab.cli.matrix", "--model", tiny_dir, "--store", store, "--behaviors",
               " ".join(behaviors), "--n-eval", 3, "--n-random", 2, "--scales", "2 8", "--scale-unit", "abs",
               "--n-neutral", 2, "--gen-tokens", 4, "--kl-max", "inf", "--out", out)
    assert done.returncode == 0, done.stderr
    assert (out / "matrix_caa.png").is_file() and "| random ×2 |" in (out / "matrix_caa.md").read_text()
    key = store_key(str(tiny_dir))
    with h5py.File(store, "r") as h5:
        matrix = h5[f"{key}/matrix/caa"]
        assert list(matrix["targets"][()].astype(str)) == behaviors
        delta = matrix["delta"][()]
        assert delta.shape == (2, 2) and (matrix["delta_low"][()] <= delta).all()
        assert matrix["random_delta"].shape == (len(matrix["random_scales"]), 2)
        # a cell is the steered minus the unsteered order-mean, per question, of that column
        questions = matrix[f"questions/{behaviors[1]}"]
        chosen, base = questions["chosen_by_order"][()], questions["baseline_by_order"][()]
        assert chosen.shape == (2, 2, 3) and base.shape == (2, 3)
        np.testing.assert_allclose(delta[0, 1], (chosen[0].mean(0) - base.mean(0)).mean(), atol=1e-5)
        scale = float(matrix["chosen_scale"][1])  # myopic-reward's own vector, chosen on its val
        assert scale in (2.0, 8.0) and np.isclose(np.linalg.norm(matrix["thetas"][1]), scale, rtol=1e-4)
        run_name = matrix["chosen_run"][()].astype(str)[1]
        # the cloze cell: the polarity-paired mean over the column's polarity classes
        cloze_chosen = questions["cloze_chosen"][()]
        cloze_base, polarity = questions["cloze_baseline"][()], questions["polarity"][()].astype(str)
        assert cloze_chosen.shape == (2, 3) and matrix["cloze_delta"].shape == (2, 2)
        np.testing.assert_allclose(matrix["cloze_delta"][1, 1],
                                   balanced_mean(cloze_chosen[1] - cloze_base, polarity), atol=1e-5)
        # against the random distribution: Δ minus the mean of the random directions' Δ at the
        # row's scale, from the same stored per-question numbers
        at = int(np.argmin(np.abs(matrix["random_scales"][()] - abs(scale))))
        draws = questions["cloze_random"][()][at] - cloze_base  # [n_random, n_q]
        expected = (balanced_mean(cloze_chosen[1] - cloze_base, polarity)
                    - np.mean([balanced_mean(d, polarity) for d in draws]))
        np.testing.assert_allclose(matrix["cloze_beyond_random"][1, 1], expected, atol=1e-5)
        beaten = np.mean([balanced_mean(d, polarity) < balanced_mean(cloze_chosen[1] - cloze_base, polarity)
                          for d in draws])
        assert matrix["cloze_random_share_beaten"][1, 1] == beaten
        letter_draws = questions["random_by_order"][()][at].mean(1) - base.mean(0)
        np.testing.assert_allclose(matrix["beyond_random"][1, 1],
                                   delta[1, 1] - letter_draws.mean(1).mean(), atol=1e-5)
        assert (matrix["beyond_random_low"][()] <= matrix["beyond_random"][()]).all()
    page = (out / "matrix_caa.md").read_text()
    assert (out / "matrix_caa_cloze.png").is_file() and "## Cloze: polarity-paired" in page
    assert "Against the random distribution (cloze)" in page and "/2 |" in page
    # its cell on its own test questions is what the eval runner gives for the same θ
    evaluated = run("steerlab.cli.eval", "--model", tiny_dir, "--store", store, "--behavior", behaviors[1],
                    "--n-eval", 3, "--n-random", 1, "--scales", f"{scale:g}", "--scale-unit", "abs",
                    "--splits", "test", "--n-neutral", 2, "--gen-tokens", 4)
    assert evaluated.returncode == 0, evaluated.stderr
    with h5py.File(store, "r") as h5:
        split = h5[f"{key}/{behaviors[1]}/evals/test"]
        questions_ids = split["question_ids"][()].astype(str)
        np.testing.assert_allclose(split["baseline_logit_diff_by_order"][()], base, atol=1e-4)
        np.testing.assert_allclose(split[f"caa/{run_name}/logit_diff_by_order"][0, 0], chosen[1], atol=1e-4)
        np.testing.assert_allclose(split["baseline_cloze"][()], cloze_base, atol=1e-4)
        np.testing.assert_allclose(split[f"caa/{run_name}/cloze"][0, 0], cloze_chosen[1], atol=1e-4)
        assert (list(h5[f"{key}/matrix/caa/questions/{behaviors[1]}/question_ids"][()].astype(str))
                == list(questions_ids))
    unknown = run("steerlab.cli.matrix", "--model", "no/such", "--store", store, "--behaviors",
                  "survival-instinct power")
    assert unknown.returncode == 2 and "unknown behaviour 'power'" in unknown.stderr


def test_the_matrix_in_kl_adds_each_chosen_vector_and_random_reference_at_the_chosen_cost(tiny_dir, tmp_path):
    """SCALE_UNIT=kl: each behaviour's vector is chosen among KL targets at its own |θ|, the one
    eval finds for the same vector and target; the random rows are at the chosen targets."""
    store, out = tmp_path / "store.h5", tmp_path / "results"
    behaviors = ["survival-instinct", "myopic-reward"]
    for behavior in behaviors:
        assert run("steerlab.cli.caa", "--model", tiny_dir, "--store", store, "--layers", 1, "--n-train", 4,
                   "--position", "answer", "--behavior", behavior).returncode == 0
    done = run("steerlab.cli.matrix", "--model", tiny_dir, "--store", store, "--behaviors",
               " ".join(behaviors), "--n-eval", 3, "--n-random", 2, "--scales", "0.002 0.005", "--scale-unit",
               "kl", "--score", "cloze", "--kl-max", "inf", "--out", out, *SMALL_KL)
    assert done.returncode == 0, done.stderr
    page = (out / "matrix_caa.md").read_text()
    assert "every row, random ones included, costs its target" in page
    assert (re.search(r"\| \+0\.00[25] KL \(= [0-9.]+\) \|", page)
            and re.search(r"\| random ×2 \| ±0\.00[25] KL \|", page))
    key = store_key(str(tiny_dir))
    with h5py.File(store, "r") as h5:
        matrix = h5[f"{key}/matrix/caa"]
        targets, sizes = matrix["chosen_grid_scale"][()], matrix["chosen_scale"][()]
        assert all(np.isclose(t, 0.002) or np.isclose(t, 0.005) for t in targets)
        np.testing.assert_allclose(sorted(set(np.round(matrix["random_scales"][()], 6))),
                                   sorted(set(np.round(targets, 6))), rtol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(matrix["thetas"][()], axis=1), np.abs(sizes), rtol=1e-4)
    evaluated = run("steerlab.cli.eval", "--model", tiny_dir, "--store", store, "--behavior", behaviors[1],
                    "--n-eval", 3, "--n-random", 1, "--scales", "0.002 0.005", "--scale-unit", "kl",
                    "--score", "cloze", "--splits", "val", *SMALL_KL)
    assert evaluated.returncode == 0, evaluated.stderr
    with h5py.File(store, "r") as h5:
        group = h5[f"{key}/{behaviors[1]}/evals/val/caa/L1-answer"]
        s = int(np.argmin(np.abs(group["scales"][()] - targets[1])))
        np.testing.assert_allclose(group["norms"][0, s], sizes[1], rtol=1e-5)


def plain_kl_at(tiny_dir, store, theta, layer: int = 1) -> float:
    """Mean KL(unsteered ‖ steered) of ``theta`` on the store's val neutral texts, on the plain path."""
    import torch

    from steerlab.lm.model import load_model
    from steerlab.measure.reference import side_effects_plain
    from steerlab.measure.side_effects import ScoredText
    from steerlab.store import read_neutral

    lm = load_model(str(tiny_dir), "fp32")
    ids, tokens, lengths = read_neutral(store, lm.key, "val")
    texts = [ScoredText(i, tuple(t), n) for i, t, n in zip(ids, tokens, lengths)]
    theta = torch.as_tensor(np.asarray(theta, dtype=np.float64))[None].float()
    return float(side_effects_plain(lm.model, texts, layer, theta, lm.tokenizer.pad_token_id).kl.mean())


def test_a_scale_in_kl_is_the_norm_at_which_each_direction_costs_it(tiny_dir, tmp_path):
    """SCALE_UNIT=kl: each vector and sign is added at its own |θ|, found on the val neutral texts,
    where its KL (measured again on the plain path) is the target; test uses the same |θ|; the
    report says what the scales are; a named vector's scale is looked up in that calibration."""
    from steerlab.base.errors import UserError
    from steerlab.measure.choice import calibrated_norms, named_choices

    store = tmp_path / "store.h5"
    caa = run("steerlab.cli.caa", "--model", tiny_dir, "--store", store, "--layers", 1, "--n-train", 4,
              "--position", "answer")
    assert caa.returncode == 0, caa.stderr
    done = run("steerlab.cli.eval", "--model", tiny_dir, "--store", store, "--n-eval", 2, "--n-random", 2,
               "--scales", "0.002 0.005", "--scale-unit", "kl", "--splits", "val test", "--layer", 1,
               "--score", "cloze", *SMALL_KL)
    assert done.returncode == 0, done.stderr
    assert "KL calibration at layer 1" in done.stderr
    key = store_key(str(tiny_dir))
    with h5py.File(store, "r") as h5:
        val = h5[f"{key}/survival-instinct/evals/val/random/L1"]
        test = h5[f"{key}/survival-instinct/evals/test/random/L1"]
        np.testing.assert_allclose(val["scales"][()], [-0.005, -0.002, 0.002, 0.005], rtol=1e-6)
        norms, reached = val["norms"][()], val["calibration_reached"][()]
        assert norms.shape == (2, 4) and reached.all() and "scale_fractions" not in val
        assert (np.sign(norms) == np.sign(val["scales"][()])).all()
        assert (np.abs(norms[:, 3]) > np.abs(norms[:, 2])).all()  # more cost, more θ
        np.testing.assert_array_equal(test["norms"][()], norms)  # calibrated once, on val texts
        # eval's own val KL is the calibration's, within the search's 10% of each target
        np.testing.assert_allclose(val["kl"][()].mean(-1), val["calibration_kl"][()], rtol=1e-4)
        assert np.all(np.abs(val["kl"][()].mean(-1) / np.abs(val["scales"][()]) - 1) <= 0.1)
        assert val.attrs["scale_unit"] == "kl"
        unit = val["vectors"][1] / np.linalg.norm(val["vectors"][1])
        caa_norms = h5[f"{key}/survival-instinct/evals/val/caa/L1-answer/norms"][()]
    assert abs(plain_kl_at(tiny_dir, store, norms[1, 3] * unit) / 0.005 - 1) <= 0.1
    report = run("steerlab.cli.report", "--model", tiny_dir, "--store", store)
    assert report.returncode == 0, report.stderr
    assert "Scales are costs (SCALE_UNIT=kl)" in report.stdout and " KL (= " in report.stdout
    from steerlab.render import plots as plot

    figures = plot.make_all(plot.load(store, key, "survival-instinct"), tmp_path / "results", 0.005)
    assert {"dose_response.png", "violin_scale0.005.png"} <= {f.name for f in figures}
    picked, = named_choices(store, key, "survival-instinct", "caa/L1-answer/0", [0.005], "kl")
    assert np.isclose(picked.scale, caa_norms[0, 1])
    with pytest.raises(UserError, match="calibrated on val at KL targets"):
        named_choices(store, key, "survival-instinct", "caa/L1-answer/0", [0.003], "kl")
    random_group = SimpleNamespace(label="random/L1")  # a vector past those eval calibrated
    assert np.isclose(calibrated_norms(store, key, "survival-instinct", random_group, 1, [0.005])[0],
                      norms[1, 3])
    with pytest.raises(UserError, match=r"calibrated vectors 0\.\.1, not 2: `make eval EVAL_K=3`"):
        calibrated_norms(store, key, "survival-instinct", random_group, 2, [0.005])


def test_a_test_split_scored_in_a_later_run_takes_vals_stored_norms_in_kl(tiny_dir, tmp_path):
    """Val's choice is made at val's |θ|: a later SPLITS=test run with other neutral texts (a new
    search there would find other sizes) scores test at the |θ| val stored, not at its own."""
    store = tmp_path / "store.h5"
    assert run("steerlab.cli.caa", "--model", tiny_dir, "--store", store, "--layers", 1, "--n-train", 4,
               "--position", "answer").returncode == 0
    common = ("steerlab.cli.eval", "--model", tiny_dir, "--store", store, "--n-eval", 2, "--n-random", 1,
              "--scales", "0.002 0.005", "--scale-unit", "kl", "--layer", 1, "--score", "cloze",
              "--gen-tokens", 4)
    assert run(*common, "--splits", "val", "--n-neutral", 2).returncode == 0
    later = run(*common, "--splits", "test", "--n-neutral", 3)
    assert later.returncode == 0, later.stderr
    assert "KL calibration" not in later.stderr  # nothing searched again
    key = store_key(str(tiny_dir))
    with h5py.File(store, "r") as h5:
        for group in ("caa/L1-answer", "random/L1"):
            val, test = (h5[f"{key}/survival-instinct/evals/{split}/{group}"] for split in ("val", "test"))
            np.testing.assert_array_equal(test["norms"][()], val["norms"][()])
            np.testing.assert_array_equal(test["calibration_kl"][()], val["calibration_kl"][()])


def test_melbo_radius_and_the_pi_caa_point_in_kl_cost_what_they_say(tiny_dir, tmp_path):
    """SCALE_UNIT=kl outside eval: MELBO's R is the median |θ| at which random directions cost R;
    PI@CAA's AT_SCALES puts θ₀ on the CAA direction where it costs the scale."""
    from steerlab.measure.grid import random_directions

    store = tmp_path / "store.h5"
    common = ("--model", tiny_dir, "--store", store, "--layer", 1, "--target", 2, "--k", 2,
              "--n-prompts", 2, "--scale-unit", "kl", *SMALL_KL)
    melbo = run("steerlab.cli.melbo", *common, "--radius", 0.004, "--steps", 2)
    assert melbo.returncode == 0, melbo.stderr
    key = store_key(str(tiny_dir))
    with h5py.File(store, "r") as h5:
        group = h5[f"{key}/survival-instinct/vectors/melbo/L1-T2"]
        radius = float(group.attrs["radius"])
        assert group.attrs["radius_in_unit"] == 0.004 and group.attrs["scale_unit"] == "kl"
        np.testing.assert_allclose(np.linalg.norm(group["vectors"][()], axis=1), radius, rtol=1e-4)
    costs = [plain_kl_at(tiny_dir, store, radius * d.numpy()) for d in random_directions(4, 64, 0, 1)]
    assert abs(float(np.median(costs)) / 0.004 - 1) <= 0.2  # the median direction's cost, ±its 10%
    caa = run("steerlab.cli.caa", "--model", tiny_dir, "--store", store, "--layers", 1, "--n-train", 4,
              "--position", "answer")
    assert caa.returncode == 0, caa.stderr
    pi = run("steerlab.cli.pi", *common, "--iters", 1, "--oversample", 0)
    assert pi.returncode == 0, pi.stderr
    along = run("steerlab.cli.pi", *common, "--iters", 1, "--oversample", 0, "--at", "caa", "--at-scales",
                "-0.003")
    assert along.returncode == 0, along.stderr
    with h5py.File(store, "r") as h5:
        at = [g for name, g in h5[f"{key}/survival-instinct/vectors/pi_caa"].items() if "-at" in name]
        assert (len(at) == 1 and at[0].name.endswith("L1-T2-at-0.003kl")
                and at[0].attrs["at_scale_in_unit"] == -0.003)
        size = float(at[0].attrs["at_scale"])
        direction = h5[f"{key}/survival-instinct/vectors/caa/L1-answer/vectors"][0].astype(np.float64)
    assert size < 0
    theta0 = size * direction / np.linalg.norm(direction)
    assert abs(plain_kl_at(tiny_dir, store, theta0) / 0.003 - 1) <= 0.1


def test_a_scale_in_units_of_the_residual_norm_is_that_fraction_of_the_median_norm(tiny_dir, tmp_path):
    """SCALE_UNIT=resid: the median ‖h_S‖ over the first 128 train prompts' real tokens, read here
    by a hook on the block output of a plain HF forward per prompt; |θ| = f · that, stored beside
    the fraction; SCALE_UNIT=abs gives the same numbers at the same L2 norms."""
    import torch

    from steerlab.lm.generate import prompt_ids
    from steerlab.lm.model import load_model
    from steerlab.lm.site import reading_site
    from steerlab.questions.data import load_items

    lm = load_model(str(tiny_dir), "fp32")
    norms = []
    for sequence in prompt_ids(lm.tokenizer,
                               [i.question
                                for i in load_items("data/survival-instinct.jsonl", "train")[:128]]):
        with reading_site(lm.model, 1, "resid") as seen:
            lm.model(torch.tensor([sequence]), use_cache=False)
        norms.append(seen[-1][0].double().norm(dim=-1))
    median = float(torch.cat(norms).median())
    store, abs_store = tmp_path / "store.h5", tmp_path / "abs.h5"
    done = run("steerlab.cli.eval", "--model", tiny_dir, "--store", store, "--n-eval", 2, "--n-random", 1,
               "--scales", "0.5 2", "--scale-unit", "resid", "--splits", "val", "--layer", 1, "--score",
               "cloze", *SMALL_KL)
    assert done.returncode == 0, done.stderr
    key = store_key(str(tiny_dir))
    with h5py.File(store, "r") as h5:
        group = h5[f"{key}/survival-instinct/evals/val/random/L1"]
        np.testing.assert_allclose(group["scales"][()],
                                   [-2 * median, -0.5 * median, 0.5 * median, 2 * median], rtol=1e-4)
        assert list(group["scale_fractions"][()]) == [-2, -0.5, 0.5, 2]
        assert (group.attrs["scale_unit"] == "resid"
                and np.isclose(group.attrs["unit_norm"], median, rtol=1e-4))
        stored = h5[f"{key}/survival-instinct/norms/L1"]
        assert np.isclose(stored.attrs["median"], median, rtol=1e-6) and stored.attrs["n_prompts"] == 128
        resid_cloze, absolute = group["cloze"][()], group["scales"][()]
    done = run("steerlab.cli.eval", "--model", tiny_dir, "--store", abs_store, "--n-eval", 2, "--n-random", 1,
               "--scales", " ".join(f"{s:.9g}" for s in absolute[2:]), "--scale-unit", "abs", "--splits",
               "val", "--layer", 1, "--score", "cloze", *SMALL_KL)
    assert done.returncode == 0, done.stderr
    with h5py.File(abs_store, "r") as h5:
        group = h5[f"{key}/survival-instinct/evals/val/random/L1"]
        assert group.attrs["scale_unit"] == "abs" and "scale_fractions" not in group
        np.testing.assert_allclose(group["cloze"][()], resid_cloze, atol=1e-5)
    report = run("steerlab.cli.report", "--model", tiny_dir, "--store", store)
    assert report.returncode == 0, report.stderr
    assert "Scales are fractions of the median ‖h_S‖" in report.stdout and "+0.5 (= " in report.stdout
    # RAW multiplies the raw vectors by the scales: meaningless as fractions of a norm
    raw = run("steerlab.cli.eval", "--model", tiny_dir, "--store", store, "--raw", "--check-args")
    assert raw.returncode == 2 and "RAW=1 multiplies the raw vectors" in raw.stderr


def _functions_run(module: str, *args) -> set[tuple[str, str]]:
    """The project's top-level definitions (module file, name) whose code ran in the runner."""
    import ast
    import sys
    from pathlib import Path

    from steerlab.store.provenance import PACKAGE_PARENT

    package = str(PACKAGE_PARENT / "steerlab")
    called: set[tuple[str, int]] = set()

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(package):
            called.add((frame.f_code.co_filename, frame.f_code.co_firstlineno))

    sys.setprofile(profile)
    try:
        ran = run(module, *args)
    finally:
        sys.setprofile(None)
    assert ran.returncode == 0, ran.stderr
    found = set()
    for filename in {f for f, _ in called}:
        body = ast.parse(Path(filename).read_text(encoding="utf-8")).body
        for _, line in (c for c in called if c[0] == filename):
            for node in body:
                if (isinstance(node, (ast.FunctionDef, ast.ClassDef))
                        and node.lineno <= line <= node.end_lineno):
                    found.add((filename, node.name))
    return found


def test_the_code_hash_reaches_every_function_a_runner_runs(tiny_dir, tmp_path):
    """A stored group is current only while the code it was computed by is unchanged: the hash's
    static reach (names through imports, steerlab.store.provenance) must hold every project
    function that ran, or an edit to one would leave stale numbers current."""
    from steerlab.store.provenance import PACKAGE_PARENT, _reached

    store = tmp_path / "store.h5"
    common = ("--model", tiny_dir, "--store", store)
    kl = ("--scale-unit", "kl", *SMALL_KL)
    pi = ("--layer", 1, "--target", 2, "--k", 2, "--n-prompts", 2, "--iters", 1, "--oversample", 0)
    runs = [("steerlab.cli.caa", ("--layers", 1, "--n-train", 4, "--position", "answer")),
            ("steerlab.cli.pi", pi),
            ("steerlab.cli.pi", (*pi, *kl, "--at", "caa", "--at-scales", "0.003", "--caa-position",
                                 "answer")),
            ("steerlab.cli.eval", (*kl, "--layer", 1, "--n-eval", 2, "--n-random", 1, "--scales", "0.003"))]
    for module, args in runs:
        reached = {entry.split("\0")[0] for entry in _reached(module, None, PACKAGE_PARENT)}
        ran = _functions_run(module, *common, *args)
        assert len(ran) > 20
        missing = sorted(f"{Path(file).name}:{name}" for file, name in ran if name not in reached)
        assert not missing, f"{module} ran code its hash does not reach: {missing}"
