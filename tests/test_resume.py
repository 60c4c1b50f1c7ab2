"""Long runs that survive: the power iteration and MELBO resumed from any saved step give what an
uninterrupted run gives, bit for bit; eval and PI killed (SIGKILL) at random moments and rerun
until they finish write the same store as an uninterrupted run (docs/store_diff.py, no tolerance),
each kill losing at most the work since its last checkpoint; a checkpoint of other settings is
discarded, never mixed in; a disk that fills up leaves the store as it was, with a message."""
import copy
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from steerlab.lm.segment import run_prefix
from steerlab.methods.melbo import melbo
from steerlab.methods.power import power_iteration
from steerlab.questions.prompts import pad_right
from steerlab.store import Checkpoint, resume_folder

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


class _Matrix:
    """A symmetric PSD operator with a slowly decaying spectrum: many steps to converge."""

    def __init__(self, d=40, seed=0):
        gen = torch.Generator().manual_seed(seed)
        basis, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
        self.a = basis @ torch.diag(torch.linspace(1.0, 0.5, d, dtype=torch.float64) ** 4) @ basis.T
        self.d_model = d

    def jtj(self, vectors):
        return vectors @ self.a

    def jvp_norms(self, vectors):
        return ((vectors @ self.a) * vectors).sum(1).sqrt()


def test_power_iteration_resumed_from_any_step_equals_the_uninterrupted_run():
    op, states = _Matrix(), []
    args = dict(iters=9, oversample=2, tol=1e-12, seed=3)
    whole = power_iteration(op, 3, save=lambda state: states.append(copy.deepcopy(state)), **args)
    assert len(states) == 9 and not whole.converged
    for state in (states[0], states[4], states[-1]):
        again = power_iteration(op, 3, saved=state, **args)
        assert torch.equal(again.vectors, whole.vectors) and torch.equal(again.sigmas, whole.sigmas)
        assert (torch.equal(again.trace, whole.trace)
                and torch.equal(again.subspace_change, whole.subspace_change))


@pytest.mark.parametrize("mode", ["batched", "sequential"])
def test_melbo_resumed_mid_run_equals_the_uninterrupted_run(tiny_llama, mode):
    ids, mask = pad_right([(1, 5, 9, 11, 12), (1, 5, 30)], tiny_llama.tokenizer.pad_token_id)
    prefix = run_prefix(tiny_llama.model, ids, mask, 0)
    states = []
    args = dict(radius=3.0, steps=4, lr=0.1, seed=1, mode=mode)
    whole = melbo(tiny_llama.model, prefix, 2, 2, save=lambda state: states.append(copy.deepcopy(state)),
                  **args)
    assert len(states) == 4 * (1 if mode == "batched" else 2)
    for state in (states[0], states[len(states) // 2], states[-1]):
        again = melbo(tiny_llama.model, prefix, 2, 2, saved=state, **args)
        assert torch.equal(again.vectors, whole.vectors) and torch.equal(again.trace, whole.trace)


def test_a_checkpoint_of_other_settings_is_discarded_with_a_message_and_never_read(tmp_path, capsys):
    store = tmp_path / "store.h5"
    Checkpoint(store, "/m/b/evals/val", {"scales": [0.01]}).save({"x": np.ones(3)})
    other = Checkpoint(store, "/m/b/evals/val", {"scales": [0.04]})
    assert other.load() == {}
    assert "discarding" in capsys.readouterr().err and len(list(resume_folder(store).iterdir())) == 0
    same = Checkpoint(store, "/m/b/evals/val", {"scales": [0.04]})
    same.save({"x": np.arange(3)})
    assert (Checkpoint(store, "/m/b/evals/val", {"scales": [0.04]}).load()["x"] == np.arange(3)).all()
    same.discard()
    assert not resume_folder(store).exists()


# ---- kill tests: runners in processes of their own, SIGKILLed at random moments -----------------

def _runner(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def _run(command: list[str], env: dict) -> float:
    """Run to the end; its wall time."""
    started = time.perf_counter()
    out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return time.perf_counter() - started


def _last_save(store: Path) -> float:
    """When work was last kept: a checkpoint saved, or a finished group written to the store."""
    saves = [path.stat().st_mtime for path in [*resume_folder(store).glob("*.npz"), store] if path.exists()]
    return max(saves, default=0.0)


def _killed_until_done(command: list[str], env: dict, store: Path, delays: list[float]) -> list[float]:
    """Start ``command`` once per delay: as soon as it has saved some work, wait that many seconds
    and SIGKILL it (a random moment of the work itself, not of the start-up); then let it finish.
    Per kill, the seconds since its last checkpoint save: the work a rerun redoes."""
    lost = []
    for delay in delays:
        started = time.time()
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while proc.poll() is None and _last_save(store) < started:  # nothing kept by this run yet
            time.sleep(0.02)
        time.sleep(delay)
        killed_at = time.time()
        proc.kill()
        if proc.wait() == 0:
            continue  # it finished first
        lost.append(killed_at - _last_save(store))
    _run(command, env)
    return lost


def _same_stores(a: Path, b: Path) -> str:
    out = subprocess.run([sys.executable, "docs/store_diff.py", str(a), str(b), "--rtol", "0", "--atol", "0"],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.mark.slow
def test_an_eval_killed_at_random_moments_and_rerun_writes_what_an_uninterrupted_eval_writes(
        tiny_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    common = ["--model", str(tiny_dir), "--dtype", "fp32"]
    evaluation = ["--n-eval", "24", "--n-random", "3", "--scales", "0.002 0.005", "--splits", "val test",
                  "--checkpoint-every", "24", "--n-neutral", "2", "--gen-tokens", "6"]
    stores = {name: tmp_path / name / "store.h5" for name in ("whole", "killed")}
    for store in stores.values():
        store.parent.mkdir()
        _run(_runner("steerlab.cli.caa", "--store", str(store), *common, "--layers", "1"), env)
    command = {name: _runner("steerlab.cli.eval", "--store", str(store), *common, *evaluation)
               for name, store in stores.items()}
    whole = _run(command["whole"], env)
    rng = random.Random(0)
    lost = _killed_until_done(command["killed"], env, stores["killed"],
                              [rng.uniform(0.0, 0.8) for _ in range(3)])
    assert len(lost) >= 2 and max(lost) < whole / 2  # killed mid-run, more than once, losing little
    _same_stores(stores["whole"], stores["killed"])
    assert not resume_folder(stores["killed"]).exists()
    print(json.dumps({"eval_seconds_uninterrupted": round(whole, 2), "kills": len(lost),
                      "seconds_since_last_save_at_each_kill": [round(s, 2) for s in lost]}))


@pytest.mark.slow
def test_pi_killed_at_random_moments_and_rerun_writes_what_an_uninterrupted_run_writes(tiny_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    pi = ["--model", str(tiny_dir), "--dtype", "fp32", "--layer", "0", "--target", "3", "--k", "2",
          "--iters", "24", "--tol", "1e-12", "--n-prompts", "4", "--scale-unit", "abs"]
    stores = {name: tmp_path / name / "store.h5" for name in ("whole", "killed")}
    for store in stores.values():
        store.parent.mkdir()
    command = {name: _runner("steerlab.cli.pi", "--store", str(store), *pi) for name, store in stores.items()}
    whole = _run(command["whole"], env)
    rng = random.Random(1)
    lost = _killed_until_done(command["killed"], env, stores["killed"],
                              [rng.uniform(0.0, 0.5) for _ in range(3)])
    assert len(lost) >= 2 and max(lost) < whole / 2
    _same_stores(stores["whole"], stores["killed"])
    print(json.dumps({"pi_seconds_uninterrupted": round(whole, 2), "kills": len(lost),
                      "seconds_since_last_save_at_each_kill": [round(s, 2) for s in lost]}))


# ---- a disk that fills up -----------------------------------------------------------------------

_FULL_DISK = """
import resource, signal, sys
import numpy as np
from steerlab.base.errors import StoreError
from steerlab.store import Checkpoint, replace_group, writing
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    if sys.argv[3] == "store":
        with writing(sys.argv[1]) as h5:
            replace_group(h5, "big", {"x": np.ones(2_000_000)}, {})
    else:
        Checkpoint(sys.argv[1], "/m/b/evals/val", {"k": 1}).save({"x": np.ones(2_000_000)})
except StoreError as err:
    print(err)
    sys.exit(3)
"""


@pytest.mark.parametrize("what", ["store", "checkpoint"])
def test_a_disk_that_fills_up_leaves_the_store_as_it_was_and_says_what_is_needed(tmp_path, what):
    from steerlab.store import replace_group, writing

    store = tmp_path / "store.h5"
    with writing(store) as h5:
        replace_group(h5, "small", {"x": np.arange(10.0)}, {})
    if what == "checkpoint":
        Checkpoint(store, "/m/b/evals/val", {"k": 1}).save({"x": np.arange(4.0)})
    before = store.read_bytes()
    out = subprocess.run([sys.executable, "-c", _FULL_DISK, str(store), str(len(before) + 100_000), what],
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                         text=True)
    assert out.returncode == 3, out.stderr
    assert str(store if what == "store" else resume_folder(store)) in out.stdout and "MB" in out.stdout
    assert store.read_bytes() == before
    assert not list(tmp_path.glob("*.partial")) and not list(resume_folder(store).glob("*.partial"))
    if what == "checkpoint":
        assert (Checkpoint(store, "/m/b/evals/val", {"k": 1}).load()["x"] == np.arange(4.0)).all()


def test_a_finished_stage_is_skipped_on_rerun_and_a_changed_command_runs_again(tmp_path):
    from steerlab.cli import stage

    record, marker = tmp_path / "store.h5.stages", tmp_path / "ran"
    touch = [sys.executable, "-c", f"open({str(marker)!r}, 'a').write('x')"]
    assert stage.run(["--record", str(record), "--name", "vectors", "--", *touch]) == 0
    assert stage.run(["--record", str(record), "--name", "vectors", "--", *touch]) == 0
    assert marker.read_text() == "x"  # the second run was skipped
    assert stage.run(["--record", str(record), "--name", "vectors", "--", *touch, "other"]) == 0
    assert marker.read_text() == "xx"  # another command ran
    failing = [sys.executable, "-c", "raise SystemExit(3)"]
    assert stage.run(["--record", str(record), "--name", "val", "--", *failing]) == 3
    assert [line.split()[0] for line in record.read_text().splitlines()] == ["vectors", "vectors"]
