"""The runners as a user calls them: exit status, messages, and what lands in the store."""
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from engine.model import store_key
from tests.conftest import tiny_model

ENV = {**os.environ, "PYTHONPATH": os.getcwd(), "STORE_WAIT": "0"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smol_tokenizer):
    folder = tmp_path_factory.mktemp("tiny-llama")
    lm = tiny_model("llama", smol_tokenizer, dtype=__import__("torch").float32)
    lm.model.save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return folder


def run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True,
                          text=True, env=ENV, cwd=os.getcwd(), timeout=300)


def test_caa_runner_writes_vector_with_its_settings_then_skips(tiny_dir, tmp_path):
    store = tmp_path / "store.h5"
    first = run("runners.caa", "--model", tiny_dir, "--store", store, "--layers", "1 2", "--n-train", 6)
    assert first.returncode == 0, first.stderr
    with h5py.File(store, "r") as h5:
        vectors = h5[f"{store_key(str(tiny_dir))}/vectors/caa"]
        group = vectors["L2"]
        settings = json.loads(group.attrs["settings"])
        assert group["vectors"].shape == (1, 64) and group["item_ids"].shape == (6,)
        assert settings["source_layer"] == 2 and settings["capture"] == "mlp"
        assert settings["position"] == "letter" and settings["dtype"] == "fp32"
        assert group.attrs["code_version"].startswith("src-") and group.attrs["seconds"] > 0
        assert "L1" in vectors
    again = run("runners.caa", "--model", tiny_dir, "--store", store, "--layers", "1 2", "--n-train", 6)
    assert again.returncode == 0 and again.stderr.count("up to date") == 2


def test_caa_runner_refuses_layer_out_of_range_and_leaves_store_untouched(tiny_dir, tmp_path):
    store = tmp_path / "store.h5"
    assert run("runners.caa", "--model", tiny_dir, "--store", store, "--layers", 1, "--n-train", 2).returncode == 0
    before = store.read_bytes()
    bad = run("runners.caa", "--model", tiny_dir, "--store", store, "--layers", "2 9", "--n-train", 2)
    assert bad.returncode == 2
    assert "source layer 9 is out of range" in bad.stderr and "Traceback" not in bad.stderr
    assert store.read_bytes() == before


def test_caa_runner_reports_unknown_model_and_bad_data_file(tmp_path):
    bad_model = run("runners.caa", "--model", tmp_path / "nope", "--store", tmp_path / "s.h5")
    assert bad_model.returncode == 2 and "neither an existing folder" in bad_model.stderr
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": 1}\n')
    bad_data = run("runners.caa", "--data", data, "--store", tmp_path / "s.h5")
    assert bad_data.returncode == 2 and "d.jsonl:1: missing or non-string field" in bad_data.stderr
    assert not (tmp_path / "s.h5").exists()


def test_eval_with_no_vectors_runs_baseline_and_random_control_and_says_so(tiny_dir, tmp_path):
    store = tmp_path / "store.h5"
    done = run("runners.eval", "--model", tiny_dir, "--store", store, "--n-eval", 3, "--n-random", 2,
               "--scales", "1 4", "--splits", "val", "--layer", 1)
    assert done.returncode == 0, done.stderr
    assert "no vectors for" in done.stderr and "baseline and random controls only" in done.stderr
    with h5py.File(store, "r") as h5:
        split = h5[f"{store_key(str(tiny_dir))}/evals/val"]
        assert split["baseline_logit_diff"].shape == (3,)
        random = split["random/L1"]
        assert random["logit_diff"].shape == (2, 4, 3) and list(random["scales"][()]) == [-4, -1, 1, 4]
        assert np.isfinite(random["answer_mass"][()]).all()


def test_eval_max_vectors_trims_method_groups_but_not_the_random_control(tiny_dir, tmp_path):
    store = tmp_path / "store.h5"
    assert run("runners.caa", "--model", tiny_dir, "--store", store, "--layers", 1, "--n-train", 2).returncode == 0
    done = run("runners.eval", "--model", tiny_dir, "--store", store, "--n-eval", 2, "--n-random", 3,
               "--scales", "2", "--splits", "val", "--max-vectors", 1)
    assert done.returncode == 0, done.stderr
    with h5py.File(store, "r") as h5:
        split = h5[f"{store_key(str(tiny_dir))}/evals/val"]
        assert split["caa/L1/logit_diff"].shape == (1, 1, 2)
        assert split["random/L1/logit_diff"].shape == (3, 2, 2)
