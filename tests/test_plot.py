"""Figures from a small synthetic store: every kind of group, known winners planted on val and test."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from engine.analysis import chosen_on, nearest_scale, read_split, scale_rows
from runners import plot

KEY = "tiny"
N_Q = 12
SIGNED = [-8.0, -4.0, -2.0, 2.0, 4.0, 8.0]
POSITIVE = [2.0, 4.0, 8.0]
# planted: on val the best PI vector is #2 at scale -4; on test #0 at +4 would win (must not be shown)
PI_VAL_BEST, PI_TEST_BEST = (2, SIGNED.index(-4.0)), (0, SIGNED.index(4.0))


def eval_group(node, rng, name, k, scales, sign_free, layer, shift=0.0):
    diff = rng.normal(-1.0, 0.5, (k, len(scales), N_Q)) + shift * np.asarray(scales)[None, :, None] / 8
    mass = np.full(diff.shape, 0.8) - 0.05 * np.abs(np.asarray(scales))[None, :, None]
    group = node.create_group(name)
    group["logit_diff"], group["answer_mass"] = diff.astype(np.float32), mass.astype(np.float32)
    group["scales"] = np.array(scales, dtype=np.float32)
    group.attrs.update(source_layer=layer, sign_free=int(sign_free))
    return group


def write_store(path, with_pi=True, caa_layers=(3, 5, 7)):
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as h5:
        for split in ("val", "test"):
            node = h5.create_group(f"{KEY}/evals/{split}")
            node["question_ids"] = np.array([f"q{i}" for i in range(N_Q)]).astype("S")
            node["baseline_logit_diff"] = rng.normal(-1.0, 0.5, N_Q).astype(np.float32)
            node["baseline_answer_mass"] = np.full(N_Q, 0.8, dtype=np.float32)
            for layer in caa_layers:
                eval_group(node, rng, f"caa/L{layer}", 1, POSITIVE, False, layer, shift=layer / 3)
                eval_group(node, rng, f"random/L{layer}", 4, SIGNED, True, layer)
            methods = ["melbo"] + (["pi", "pi_caa"] if with_pi else [])
            for method in methods:
                eval_group(node, rng, f"{method}/L7-T20", 3, SIGNED, True, 7)
            if with_pi:
                planted = PI_VAL_BEST if split == "val" else PI_TEST_BEST
                node["pi/L7-T20/logit_diff"][planted] += 5.0
        vectors = h5.create_group(f"{KEY}/vectors")
        for method in (["pi", "pi_caa"] if with_pi else []):
            group = vectors.create_group(f"{method}/L7-T20")
            group["vectors"] = rng.normal(size=(3, 8)).astype(np.float32)
            group.attrs.update(source_layer=7, target_layer=20, sign_free=1)
            group["sigmas"] = np.array([9.0, 3.0, 1.0], dtype=np.float32)
            rate = 3.0 if method == "pi" else 1.5
            group["sigmas"][...] *= rate / 3
            group["trace"] = np.logspace(0, -rate, 10)[:, None] ** np.array([1.0, 0.7, 0.4])
        melbo = vectors.create_group("melbo/L7-T20")
        melbo["vectors"] = rng.normal(size=(3, 8)).astype(np.float32)
        melbo.attrs.update(source_layer=7, target_layer=20, sign_free=0)
        melbo["trace"] = np.cumsum(rng.random((20, 3)), 0).astype(np.float32)
    return path


@pytest.fixture
def full_store(tmp_path):
    return write_store(tmp_path / "store.h5")


def test_every_figure_is_written_from_a_store_with_every_kind_of_group(full_store, tmp_path, capsys):
    written = plot.make_all(plot.load(full_store, KEY), tmp_path / "results", 4.0)
    names = sorted(p.name for p in written)
    assert names == sorted(["violin_scale4.png", "violin_scales.png", "dose_response.png",
                            "pi_spectrum.png", "caa_layers.png", "melbo_traces.png"])
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
    assert "skipped" not in capsys.readouterr().err


def test_store_without_pi_data_skips_the_spectrum_with_a_message(tmp_path, capsys):
    store = write_store(tmp_path / "store.h5", with_pi=False, caa_layers=(7,))
    written = plot.make_all(plot.load(store, KEY), tmp_path / "results", 4.0)
    err = capsys.readouterr().err
    assert "skipped PI spectrum" in err and "skipped CAA layer sweep" in err
    assert {p.name for p in written} == {"violin_scale4.png", "violin_scales.png", "dose_response.png",
                                         "melbo_traces.png"}


def test_dose_response_shows_the_vector_chosen_on_val_with_its_test_numbers(full_store):
    data = plot.load(full_store, KEY)
    group, vector, rows = plot.dose_rows(data)["pi"]
    assert vector == PI_VAL_BEST[0] != PI_TEST_BEST[0]
    with h5py.File(full_store, "r") as h5:
        raw = h5[f"{KEY}/evals/test/pi/L7-T20/logit_diff"][vector]
        scales = h5[f"{KEY}/evals/test/pi/L7-T20/scales"][()]
    assert [r.scale for r in rows] == scales.tolist()
    np.testing.assert_allclose([r.mean_diff.value for r in rows], raw.mean(-1), rtol=1e-6)
    np.testing.assert_allclose([r.survival.value for r in rows], 100 * (raw > 0).mean(-1))
    assert rows == scale_rows(data.test.groups["pi/L7-T20"], vector, data.test)
    random_group, pooled, random_rows = plot.dose_rows(data)["random"]
    assert pooled is None and random_rows == scale_rows(random_group, None, data.test)


def test_violin_takes_the_sign_of_the_setting_chosen_on_val(full_store):
    picks = {method: (vector, sign) for method, _, vector, sign in plot.picks(plot.load(full_store, KEY))}
    assert picks["pi"] == (PI_VAL_BEST[0], -1.0)
    assert picks["caa"] == (0, 1.0) and picks["random"][0] is None


def test_chosen_on_looks_up_the_nearest_stored_scale_in_the_other_split(full_store):
    with h5py.File(full_store, "a") as h5:
        # the test split was evaluated on another grid: -4 is no longer stored there, -3 is nearest
        node = h5[f"{KEY}/evals/test/pi/L7-T20"]
        node["scales"][...] = np.array([-8, -3, -2, 2, 3, 8], dtype=np.float32)
        val, test = read_split(h5, KEY, "val"), read_split(h5, KEY, "test")
    group, vector, s = chosen_on("pi", val, test)
    assert group is test.groups["pi/L7-T20"] and vector == PI_VAL_BEST[0] and group.scales[s] == -3
    assert nearest_scale(group, 5.0) == 4 and nearest_scale(group, -100) == 0
