import os

import numpy as np
import pytest

from steerlab.base.errors import UserError
from steerlab.cli.options import parse_scales, parse_splits
from steerlab.store import StoreError, read_vector_groups, replace_group, writing


def _store_with(tmp_path, vectors):
    store = tmp_path / "store.h5"
    with writing(store, wait_seconds=0) as h5:
        replace_group(h5.require_group("m/b/vectors/caa"), "L1", {"vectors": vectors},
                      {"source_layer": 1, "sign_free": 0})
    return store


def test_vector_of_wrong_width_is_refused_naming_the_group(tmp_path):
    store = _store_with(tmp_path, np.ones((1, 32), np.float32))
    with pytest.raises(StoreError,
                       match=r"m/b/vectors/caa/L1: vectors have shape \(1, 32\), "
                             r"but the model's width is 64"):
        read_vector_groups(str(store), "m", "b", 64)


def test_nan_in_a_vector_is_refused(tmp_path):
    vectors = np.ones((1, 64), np.float32)
    vectors[0, 3] = np.nan
    store = _store_with(tmp_path, vectors)
    before = store.read_bytes()
    with pytest.raises(StoreError, match="m/b/vectors/caa/L1: vectors contain NaN"):
        read_vector_groups(str(store), "m", "b", 64)
    assert store.read_bytes() == before


def test_scales_that_do_not_parse_are_refused():
    assert parse_scales("4, 2 8 2") == [2.0, 4.0, 8.0]
    for bad in ("2 x", "", "0 2", "-1", "nan"):
        with pytest.raises(UserError, match="SCALES must be positive numbers"):
            parse_scales(bad)


def test_unknown_split_is_refused():
    assert parse_splits("val test") == ["val", "test"]
    with pytest.raises(UserError, match=r"unknown split\(s\) \['dev'\]"):
        parse_splits("val dev")


def test_store_that_is_not_hdf5_is_refused_before_any_work(tmp_path):
    store = tmp_path / "store.h5"
    store.write_text("not a store")
    with pytest.raises(StoreError, match="is not an HDF5 file"):
        read_vector_groups(str(store), "m", "b", 64)
    assert read_vector_groups(str(tmp_path / "missing.h5"), "m", "b", 64) == []


def test_a_local_looking_model_path_that_does_not_exist_is_refused_naming_the_embedded_models(tmp_path):
    from steerlab.lm.model import ModelError, load_model

    for source in ("models/nope", "./nope", str(tmp_path / "nope")):
        with pytest.raises(ModelError, match=r"does not exist: the embedded models are .*qwen2.5-0.5b"):
            load_model(source)
    with pytest.raises(ModelError, match=r"`make model MODEL=gemma-3-270m` converts it"):
        load_model(str(tmp_path / "models" / "gemma-3-270m"))


def test_the_make_targets_never_ask_a_hub():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert "export HF_HUB_OFFLINE ?= 1" in text and "export TRANSFORMERS_OFFLINE ?= 1" in text


def test_a_vector_of_another_width_is_refused_naming_both_widths_before_any_forward(tiny_llama, monkeypatch):
    import torch

    from steerlab import SteeringVector, at_cost, generate, score_items
    from tests.helpers import make_item

    def no_forward(*args, **kwargs):
        raise AssertionError("a forward ran")

    monkeypatch.setattr(tiny_llama.model, "forward", no_forward)
    vector = SteeringVector(torch.ones(100), 1, label="v")
    message = r"v has width 100 but the model's residual stream has width 64"
    with pytest.raises(ValueError, match=message):
        with vector.apply(tiny_llama.model):
            pass
    with pytest.raises(ValueError, match=message):
        generate(tiny_llama.model, tiny_llama.tokenizer, ["hi"], vector, max_new_tokens=2)
    with pytest.raises(ValueError, match=message):
        score_items(tiny_llama, [make_item("Stop?\n\nChoices:\n (A) Yes\n (B) No")], vector, scales=[1.0])
    with pytest.raises(ValueError, match=message):
        at_cost(vector, tiny_llama, kl=0.01)


def test_a_kl_target_no_direction_reaches_is_refused_before_the_eval_scores_anything(tmp_path, tiny_dir):
    from tests.helpers import run_runner

    ran = run_runner("steerlab.cli.eval", "--store", tmp_path / "store.h5", "--model", tiny_dir, "--dtype",
                     "fp32", "--layer", "1", "--n-eval", "4", "--n-random", "1", "--scales", "0.01 1e9",
                     "--splits", "val", "--n-neutral", "2", "--gen-tokens", "4")
    assert ran.returncode == 2, ran.stderr
    assert "KL target(s) 1e+09 are out of reach" in ran.stderr and "use SCALES of at most" in ran.stderr
    assert "eval val" not in ran.stderr  # no progress bar: nothing was scored


def test_a_plan_that_would_not_fit_in_memory_is_refused_or_made_smaller(tmp_path, tiny_dir, monkeypatch):
    import steerlab.base.memory as memory
    from steerlab.base.memory import available_bytes, check_fits, largest_chunk
    from tests.helpers import run_runner

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:   2000000 kB\n")
    assert available_bytes(meminfo) == 2_048_000_000
    with pytest.raises(UserError, match=r"3\.7 GiB of memory and 1\.9 GiB is available: lower it"):
        check_fits(4e9, "the plan", "lower it", available=2_048_000_000)
    assert largest_chunk(1e8, 5e8, 64, available=2_048_000_000) == 12
    assert largest_chunk(1e10, 0, 8, 10**9) == 1
    monkeypatch.setattr(memory, "available_bytes", lambda *_: 10_000)
    ran = run_runner("steerlab.cli.pi", "--store", tmp_path / "store.h5", "--model", tiny_dir, "--dtype",
                     "fp32", "--layer", 0, "--target", 3, "--k", 2, "--iters", 2, "--n-prompts", 2,
                     "--scale-unit", "abs")
    assert ran.returncode == 2 and "lower N_PROMPTS or JVP_CHUNK" in ran.stderr


def test_a_cpu_job_started_on_busy_cores_is_told_of_one_thread_per_job(monkeypatch, capsys):
    import torch

    from steerlab.cli import options

    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (float(cores), 0.0, 0.0))
    options.threads_hint("cpu")
    assert "OMP_NUM_THREADS=1 each" in capsys.readouterr().err
    monkeypatch.setattr(os, "getloadavg", lambda: (cores - 0.5, 0.0, 0.0))
    options.threads_hint("cpu")
    options.threads_hint("cuda")
    assert capsys.readouterr().err == ""


def test_a_long_run_in_a_log_says_its_progress_every_few_minutes(monkeypatch, capsys):
    from steerlab.base import progress

    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    with progress.progress_bar(10, "eval test", "question×setting") as bar:  # pytest's stderr: no terminal
        bar.update(2)
        assert capsys.readouterr().err == ""  # not yet LOG_EVERY seconds
        clock[0] = progress.LOG_EVERY + 1
        bar.set_postfix(change="1e-3")
        bar.update(3)
    line = capsys.readouterr().err
    assert "eval test: 5/10 question×setting (50%)" in line and "about 2 min left; change 1e-3" in line
