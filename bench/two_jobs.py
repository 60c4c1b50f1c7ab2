"""Two jobs at once on this machine's cores: each with torch's default threads (one per core)
against OMP_NUM_THREADS=1 each, and one job alone. The job is a fixed forward workload: every
layer of the default model over 32 question sequences (8 train questions' letter prompts in both
orders and cloze answers), three times.

    .venv/bin/python bench/two_jobs.py            # prints the three wall times and the ratio
"""
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def work() -> None:
    """The workload, timed; prints its seconds."""
    import torch

    from steerlab.lm import segment
    from steerlab.lm.model import DEFAULT_MODEL_DIR, load_model
    from steerlab.measure.cloze import cloze_reads
    from steerlab.measure.letter import letter_reads
    from steerlab.measure.scores import usable_questions
    from steerlab.questions.behaviors import items_of

    lm = load_model(str(DEFAULT_MODEL_DIR), "fp32", "cpu")
    items = items_of(ROOT / "data/survival-instinct.jsonl", "survival-instinct", "train")[:8]
    answers, cloze, _ = usable_questions(lm.tokenizer, items, "both", "both")
    sequences = letter_reads(answers)[0] + cloze_reads(cloze)[0]
    last = lm.model.config.num_hidden_layers - 1
    started = time.perf_counter()
    with torch.no_grad():
        for _ in range(3):
            for _ in segment.batched_prefixes(lm.model, sequences, last, lm.tokenizer.pad_token_id, 16):
                pass
    print(f"{time.perf_counter() - started:.1f}")


def jobs(n_jobs: int, threads: str | None) -> list[float]:
    """Wall seconds of each of ``n_jobs`` workloads started together, with OMP_NUM_THREADS=threads."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = threads
    running = [subprocess.Popen([sys.executable, __file__, "--work"], env=env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
               for _ in range(n_jobs)]
    return [float(p.communicate()[0].split()[-1]) for p in running]


def main() -> None:
    default = jobs(2, None)
    single = jobs(2, "1")
    alone = jobs(1, None)
    print(f"two jobs, torch's threads each: {default} s")
    print(f"two jobs, OMP_NUM_THREADS=1 each: {single} s")
    print(f"one job alone, torch's threads: {alone} s")
    print(f"two_jobs_one_thread_speedup {max(default) / max(single):.2f}")


if __name__ == "__main__":
    work() if sys.argv[1:] == ["--work"] else main()
