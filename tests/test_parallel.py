"""Data parallelism under torchrun (gloo, 2 processes on the CPU): every method gives what one
process gives, on even, uneven and empty shares; `make ... NPROC=2` writes what NPROC=1 writes;
a failing rank stops the job with its error and leaves the store as it was."""
import os
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from engine.parallel import SINGLE, Ranks
from tests.test_runners import tiny_dir  # noqa: F401 (a fixture)

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


def test_every_method_on_two_ranks_equals_one_process(tmp_path):
    out = tmp_path / "agree.json"
    done = subprocess.run([*TORCHRUN, "-m", "tests.ranks_agree", str(out)], env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    diffs = __import__("json").loads(out.read_text())
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


MAKE_SETTINGS = ["DTYPE=fp64", "LAYER=1", "TARGET=3", "N_TRAIN=5", "N_PROMPTS=3", "K=2", "ITERS=3", "STEPS=3",
                 "N_EVAL=3", "SCALES=4", "N_RANDOM=1", "N_NEUTRAL=3", "GEN_TOKENS=4", "SPLITS=val",
                 "OPEN_PROMPTS=1", "NEUTRAL_PROMPTS=2", "MAX_NEW_TOKENS=4", "KL_MAX=100"]


def test_make_with_nproc_2_writes_what_nproc_1_writes(tiny_dir, tmp_path):  # noqa: F811
    """The runners' plumbing: shares, gathers, rank 0's decisions and writes (fp64, so that the
    stores' fp32 values agree to rounding; pi_caa is the pi runner, checked in ranks_agree)."""
    stores = {}
    for nproc in (1, 2):
        store = stores[nproc] = tmp_path / f"store-{nproc}.h5"
        done = subprocess.run(["make", "-s", "caa", "pi", "melbo", "eval", "generate",
                               f"MODEL={tiny_dir}", f"STORE={store}", f"RESULTS={tmp_path / str(nproc)}",
                               f"NPROC={nproc}", *MAKE_SETTINGS],
                              env=ENV, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = datasets(stores[1]), datasets(stores[2])
    assert one.keys() == two.keys() and any("/generations/" in name for name in one)
    assert any("/pi/" in name for name in one) and any("/melbo/" in name for name in one)
    for name, value in one.items():
        if name.endswith("/seconds"):  # wall time
            continue
        if value.dtype.kind in "fc":
            assert np.allclose(value, two[name], rtol=1e-6, atol=1e-9), name
        else:
            assert np.array_equal(value, two[name]), name
    with h5py.File(stores[2], "r") as h5:
        attrs = [h5[name.rpartition("/")[0]].attrs for name in one if name.endswith("/vectors")]
        assert attrs and all(a["nproc"] == 2 for a in attrs)


def test_a_failing_rank_stops_the_job_with_its_error_and_leaves_the_store_untouched(tiny_dir, tmp_path):  # noqa: F811
    store = tmp_path / "store.h5"
    args = ["--model", str(tiny_dir), "--store", str(store), "--n-train", "4"]
    first = subprocess.run([sys.executable, "-m", "runners.caa", *args, "--layers", "1"], env=ENV,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    before = store.read_bytes()
    start = time.perf_counter()
    failed = subprocess.run([*TORCHRUN, "-m", "tests.failing_rank", *args, "--layers", "2"], env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert failed.returncode != 0
    assert "rank 1 fails on purpose" in failed.stderr
    assert time.perf_counter() - start < 120  # rank 0, waiting in a collective, was stopped
    assert store.read_bytes() == before
