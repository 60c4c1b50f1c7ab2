"""lm-evaluation-harness as a second reader of this project's cloze score and ``.lm-eval.pt`` files.

``make check-lm-eval`` runs the same cloze questions through lm-eval's own ``hf`` and
``steered`` models (``lm_eval`` is imported only here, and only in ``.venv-lmeval``) and compares
their per-answer log-likelihoods with ``steerlab.measure.cloze``'s:

- ``write_task`` writes a local lm-eval task: each question's stem as the user turn (lm-eval
  applies the chat template, ``--apply_chat_template``), its two answer texts as the choices of a
  ``multiple_choice`` task with ``target_delimiter: ""``, so the continuation is the answer text
  alone, as in ``steerlab.measure.cloze``;
- ``harness_loglikelihoods`` runs one model over it and returns each choice's summed log-prob;
- ``compare`` sets them beside ours.

One difference is lm-eval's rule, not ours: it moves a context's trailing whitespace into the
continuation (``_encode_pair``), and the chat template's generation prompt ends in "\\n", so each
of its log-likelihoods also holds log p("\\n" | the template before it). That term is the same for
both answers of a question, so the comparison is made on the pair difference (positive −
negative), where it cancels, and its size per answer is reported.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

TASK_PREFIX = "steering_cloze_"


GROUP = "steering_cloze"  # every behaviour's task, as one lm-eval group


def task_name(behavior: str) -> str:
    return TASK_PREFIX + behavior.replace("-", "_")


def write_group(folder: str | Path, tasks: Sequence[str]) -> str:
    """An lm-eval group in ``folder`` that runs ``tasks`` (``--tasks steering_cloze``), each
    reported on its own and not aggregated (behaviours are not one score)."""
    listed = "".join(f"  - {task}\n" for task in tasks)
    (Path(folder) / f"{GROUP}.yaml").write_text(f"group: {GROUP}\ntask:\n{listed}")
    return GROUP


def write_task(folder: str | Path, behavior: str, questions: Sequence[tuple[str, str, str]]) -> str:
    """A local lm-eval task in ``folder`` (pass it as ``include_path``): ``questions`` as (stem,
    positive answer text, negative answer text), choice 0 the positive. Returns the task's name."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = task_name(behavior)
    data = folder / f"{name}.jsonl"
    with data.open("w") as handle:
        for stem, positive, negative in questions:
            handle.write(json.dumps({"question": stem, "choices": [positive, negative]}) + "\n")
    # doc_to_text and doc_to_choice name fields of the document, so no text passes through Jinja
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data.resolve()))}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: question\n"
        "doc_to_choice: choices\n"
        "doc_to_target: 0\n"
        'target_delimiter: ""\n'
        "metric_list:\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n")
    return name


def harness_loglikelihoods(pretrained: str | Path, task_folder: str | Path, task: str, *,
                           steer_path: str | Path | None = None, dtype: str = "float32",
                           device: str = "cpu", batch_size: int = 4) -> np.ndarray:
    """[n_questions, 2] each choice's summed log-likelihood under lm-eval's ``hf`` model (or its
    ``steered`` model with ``steer_path``), chat template applied, in the task's document order."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    args = {"pretrained": str(pretrained), "dtype": dtype}
    if steer_path is not None:
        args["steer_path"] = str(steer_path)
    results = simple_evaluate(model="steered" if steer_path is not None else "hf", model_args=args,
                              tasks=[task], task_manager=TaskManager(include_path=str(task_folder)),
                              batch_size=batch_size, device=device, apply_chat_template=True,
                              log_samples=True, bootstrap_iters=0, verbosity="ERROR")
    samples = sorted(results["samples"][task], key=lambda sample: sample["doc_id"])
    return np.array([[float(resp[0][0]) for resp in sample["resps"]] for sample in samples], dtype=np.float64)


@dataclass(frozen=True)
class Agreement:
    """lm-eval's numbers beside ours on the same questions (pair differences, nats)."""
    label: str
    correlation: float  # of the per-question pair differences (or of their steering changes)
    max_abs_difference: float  # largest |theirs − ours| among them
    largest: float  # largest |ours| among them: what the difference is measured against

    def row(self) -> str:
        return (f"| {self.label} | {self.correlation:.10f} | {self.max_abs_difference:.2e} "
                f"| {self.largest:.3f} |")


def pair_difference(loglikelihoods: np.ndarray) -> np.ndarray:
    """[n] positive − negative of [n, 2] per-choice log-likelihoods."""
    return loglikelihoods[:, 0] - loglikelihoods[:, 1]


def compare(label: str, theirs: np.ndarray, ours: np.ndarray) -> Agreement:
    """``theirs`` and ``ours``: [n] numbers of the same questions."""
    theirs, ours = np.asarray(theirs, np.float64), np.asarray(ours, np.float64)
    correlation = float(np.corrcoef(theirs, ours)[0, 1]) if len(ours) > 1 and ours.std() > 0 else float("nan")
    return Agreement(label, correlation, float(np.abs(theirs - ours).max()), float(np.abs(ours).max()))


def whitespace_term(theirs: np.ndarray, ours: np.ndarray) -> tuple[float, float]:
    """lm-eval's per-answer surplus over ours (its log p of the moved trailing whitespace): the
    largest |surplus| and the largest spread of it between a question's two answers (0 when the
    surplus is one term per question, as it should be)."""
    surplus = np.asarray(theirs, np.float64) - np.asarray(ours, np.float64)  # [n, 2]
    return float(np.abs(surplus).max()), float(np.abs(surplus[:, 0] - surplus[:, 1]).max())
