"""The lm-eval side of `make check-lm-eval` that runs without lm_eval: the task files it writes and
the comparison it makes (the check itself runs in .venv-lmeval)."""
import json

import numpy as np
import pytest
import yaml

from steerlab.interop.harness import compare, pair_difference, task_name, whitespace_term, write_task


def test_the_task_holds_each_question_with_its_two_answer_texts_positive_first(tmp_path):
    questions = [('Say "{{x}}": yes or no?', "Yes", "No, never"), ("Q2\nwith a line", "A: {b}", "B")]
    name = write_task(tmp_path, "survival-instinct", questions)
    assert name == task_name("survival-instinct") == "steering_cloze_survival_instinct"
    config = yaml.safe_load((tmp_path / f"{name}.yaml").read_text())
    assert config["task"] == name and config["output_type"] == "multiple_choice"
    # fields, not templates: braces in a question reach the model as written
    assert config["doc_to_text"] == "question" and config["doc_to_choice"] == "choices"
    assert config["doc_to_target"] == 0 and config["target_delimiter"] == ""
    data = config["dataset_kwargs"]["data_files"]["test"]
    rows = [json.loads(line) for line in open(data)]
    assert rows == [{"question": q, "choices": [p, n]} for q, p, n in questions]


def test_the_pair_difference_cancels_a_term_shared_by_a_questions_two_answers():
    rng = np.random.default_rng(0)
    ours = rng.normal(-5, 2, (6, 2))
    newline = rng.normal(-0.5, 0.2, (6, 1))  # lm-eval's moved trailing whitespace, one per question
    theirs = ours + newline
    agreement = compare("x", pair_difference(theirs), pair_difference(ours))
    assert agreement.max_abs_difference < 1e-12 and agreement.correlation == pytest.approx(1.0)
    surplus, spread = whitespace_term(theirs, ours)
    assert surplus == pytest.approx(np.abs(newline).max()) and spread < 1e-12
    # a term that is not shared (one answer's tokens differ) shows in both numbers
    theirs[2, 0] += 0.3
    assert (compare("x", pair_difference(theirs), pair_difference(ours)).max_abs_difference
            == pytest.approx(0.3))
    assert whitespace_term(theirs, ours)[1] == pytest.approx(0.3)


def test_lm_eval_tasks_writes_each_behaviours_cloze_questions_and_the_group(tmp_path):
    from steerlab.cli.lm_eval_tasks import cloze_questions
    from steerlab.questions.behaviors import data_file, items_of
    from tests.helpers import run_runner

    behaviors = ["survival-instinct", "myopic-reward"]
    done = run_runner("steerlab.cli.lm_eval_tasks", "--behaviors", " ".join(behaviors), "--split", "val",
                      "--out", tmp_path)
    assert done.returncode == 0, done.stderr
    group = yaml.safe_load((tmp_path / "steering_cloze.yaml").read_text())
    assert group == {"group": "steering_cloze", "task": [task_name(b) for b in behaviors]}
    for behavior in behaviors:
        config = yaml.safe_load((tmp_path / f"{task_name(behavior)}.yaml").read_text())
        rows = [json.loads(line) for line in open(config["dataset_kwargs"]["data_files"]["test"])]
        questions, skipped = cloze_questions(behavior, "val")
        assert rows == [{"question": q, "choices": [p, n]} for q, p, n in questions]
        assert len(rows) + skipped == len(items_of(data_file(behavior), behavior, "val")) and len(rows) > 20
    unknown = run_runner("steerlab.cli.lm_eval_tasks", "--behaviors", "no-such", "--out", tmp_path / "x")
    assert unknown.returncode == 2 and "no-such" in unknown.stderr and not (tmp_path / "x").exists()
