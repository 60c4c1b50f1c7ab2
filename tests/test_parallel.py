"""Data parallelism under torchrun (gloo, 2 processes on the CPU): every method gives what one
process gives, on even, uneven and empty shares; the commands `make ... NPROC=2` runs write what
NPROC=1 writes; a failing rank stops the job with its error and leaves the store as it was.

Two torchrun launches in all: one (``two_ranks``) for the engine's collectives and the runners'
plumbing, one for the failing rank. The slow marker lets `make test-fast` leave them out."""
import json
import os
import shlex
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from steerlab.base.parallel import SINGLE, Ranks
from tests.helpers import run_runner

ENV = {**os.environ, "PYTHONPATH": os.getcwd(), "STORE_WAIT": "0", "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
# fp32 on the default model: the ranks' batches differ from one process's in shape (and so in
# padding and summation order), which moves fp32 results by rounding only.
FP32_TOLERANCE = {"caa": 1e-4, "eval": 1e-3}


@pytest.mark.parametrize("n,size", [(10, 2), (5, 2), (1, 2), (0, 3), (7, 3), (2, 5)])
def test_shares_cover_every_item_once_in_order_and_differ_by_at_most_one(n, size):
    shares = [list(Ranks(rank, size).span(n)) for rank in range(size)]
    assert sum(shares, []) == list(range(n))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_one_process_has_no_group_and_its_collectives_return_their_input():
    values = np.arange(6.0).reshape(2, 3)
    assert SINGLE.size == 1 and SINGLE.writer and SINGLE.part([1, 2, 3]) == [1, 2, 3]
    assert SINGLE.cat(values, 1) is values and SINGLE.gather([4, 5]) == [4, 5]
    assert SINGLE.same("x") == "x" and SINGLE.largest(2.5) == 2.5


MAKE_SETTINGS = ["DTYPE=fp64", "LAYER=1", "TARGET=3", "N_TRAIN=5", "N_PROMPTS=3", "K=2", "ITERS=3", "STEPS=3",
                 "N_EVAL=3", "SCALES=0.005", "N_RANDOM=1", "N_NEUTRAL=3", "GEN_TOKENS=4", "SPLITS=val",
                 "OPEN_PROMPTS=1", "NEUTRAL_PROMPTS=2", "MAX_NEW_TOKENS=4", "KL_MAX=100"]
TARGETS = ["caa", "pi", "melbo", "eval", "generate"]


def make_commands(tiny_dir, store, results, nproc: int) -> list[list[str]]:
    """What `make -n <TARGETS> NPROC=<nproc>` would run, one [launcher words..., -m, module, args...]
    per recipe line."""
    done = subprocess.run(["make", "-n", "-s", *TARGETS, f"MODEL={tiny_dir}", f"STORE={store}",
                           f"RESULTS={results}", f"NPROC={nproc}", *MAKE_SETTINGS],
                          capture_output=True, text=True, check=True, timeout=60)
    lines = done.stdout.replace("\\\n", " ").splitlines()
    return [shlex.split(line) for line in lines if " -m steerlab.cli." in line]


def runner_argv(words: list[str]) -> list[str]:
    """[module, args...] of a recipe line: what follows its launcher's ``-m``."""
    return words[words.index("-m") + 1:]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, tiny_dir):
    """One torchrun launch of tests/ranks_agree.py: the engine-level comparisons, then the
    runner commands `make ... NPROC=2` runs, into their own store."""
    folder = tmp_path_factory.mktemp("two-ranks")
    store, commands = folder / "store-2.h5", folder / "commands.json"
    launched = make_commands(tiny_dir, store, folder / "results-2", 2)
    commands.write_text(json.dumps([runner_argv(words) for words in launched]))
    done = subprocess.run([*TORCHRUN, "-m", "tests.ranks_agree", str(folder / "agree.json"), str(commands)],
                          env=ENV, capture_output=True, text=True, timeout=600)
    return done, folder / "agree.json", store, launched


@pytest.mark.slow
def test_every_method_on_two_ranks_equals_one_process(two_ranks):
    done, out, _, _ = two_ranks
    assert done.returncode == 0, done.stderr[-3000:]
    diffs = json.loads(out.read_text())
    for case in ("caa_5xboth", "caa_3xoriginal", "caa_1xoriginal", "eval_5q", "eval_1q",
                 "pi_3prompts", "pi_1prompts", "melbo_3prompts", "melbo_1prompts"):
        assert diffs[f"tiny_{case}"] <= 1e-10, (case, diffs[f"tiny_{case}"])
    for case, tolerance in (("caa_5xboth", "caa"), ("caa_1xoriginal", "caa"), ("eval_5q", "eval"),
                            ("eval_1q", "eval")):
        assert diffs[f"default_{case}"] <= FP32_TOLERANCE[tolerance], (case, diffs[f"default_{case}"])
    assert diffs["tiny_generate_tokens_differ"] == 0 and diffs["default_generate_tokens_differ"] == 0
    assert diffs["check_identical_missed_a_difference"] == 0


def datasets(path) -> dict[str, np.ndarray]:
    found = {}
    with h5py.File(path, "r") as h5:
        h5.visititems(lambda name, node: found.__setitem__(name, node[()])
                      if isinstance(node, h5py.Dataset) else None)
    return found


@pytest.mark.slow
def test_make_with_nproc_2_writes_what_nproc_1_writes(two_ranks, tiny_dir, tmp_path):
    """The runners' plumbing: shares, gathers, rank 0's decisions and writes (fp64, so that the
    stores' fp32 values agree to rounding; pi_caa is the pi runner, checked in ranks_agree). The
    commands are the Makefile's: under torchrun with NPROC=2, plain with NPROC=1, and the NPROC=1
    ones run in this process."""
    done, _, two_store, launched = two_ranks
    assert done.returncode == 0, done.stderr[-3000:]
    assert [runner_argv(words)[0] for words in launched] == [f"steerlab.cli.{t}" for t in TARGETS]
    for words in launched:
        launcher = words[:words.index("-m")]
        assert (launcher[-4].endswith("torchrun")
                and launcher[-3:] == ["--standalone", "--nproc-per-node", "2"])
    one_store = tmp_path / "store-1.h5"
    for words in make_commands(tiny_dir, one_store, tmp_path / "results-1", 1):
        assert not any("torchrun" in word for word in words)
        ran = run_runner(*runner_argv(words))
        assert ran.returncode == 0, ran.stderr[-3000:]
    one, two = datasets(one_store), datasets(two_store)
    assert one.keys() == two.keys() and any("/generations/" in name for name in one)
    assert any("/pi/" in name for name in one) and any("/melbo/" in name for name in one)
    for name, value in one.items():
        if name.endswith("/seconds"):  # wall time
            continue
        if value.dtype.kind in "fc":
            assert np.allclose(value, two[name], rtol=1e-6, atol=1e-9), name
        else:
            assert np.array_equal(value, two[name]), name
    with h5py.File(two_store, "r") as h5:
        attrs = [h5[name.rpartition("/")[0]].attrs for name in one if name.endswith("/vectors")]
        assert attrs and all(a["nproc"] == 2 for a in attrs)


@pytest.mark.slow
def test_a_failing_rank_stops_the_job_with_its_error_and_leaves_the_store_untouched(tiny_dir, tmp_path):
    """Needs processes of its own: rank 1 raises while rank 0 waits for it in a collective, and
    torchrun must stop both."""
    store = tmp_path / "store.h5"
    args = ["--model", str(tiny_dir), "--store", str(store), "--n-train", "4"]
    first = run_runner("steerlab.cli.caa", *args, "--layers", "1")
    assert first.returncode == 0, first.stderr
    before = store.read_bytes()
    start = time.perf_counter()
    failed = subprocess.run([*TORCHRUN, "-m", "tests.failing_rank", *args, "--layers", "2"], env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert failed.returncode != 0
    assert "rank 1 fails on purpose" in failed.stderr
    assert time.perf_counter() - start < 120  # rank 0, waiting in a collective, was stopped
    assert store.read_bytes() == before
