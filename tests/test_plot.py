"""Figures from a small synthetic store: every kind of group, known winners planted on val and test."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from steerlab.measure.analysis import nearest_scale, read_split, scale_rows, val_choice_in
from steerlab.render import plots as plot
from tests.helpers import (
    BEHAVIOR,
    KEY,
    PI_TEST_BEST,
    PI_VAL_BEST,
    add_cloze,
    add_kl,
    add_orders,
    add_path,
    write_store,
)


@pytest.fixture
def full_store(tmp_path):
    return add_path(add_kl(add_orders(write_store(tmp_path / "store.h5"), letter_spread=1.0)))


def test_every_figure_is_written_from_a_store_with_every_kind_of_group(full_store, tmp_path, capsys):
    written = plot.make_all(plot.load(full_store, KEY, BEHAVIOR, kl_max=0.05), tmp_path / "results", 4.0)
    names = sorted(p.name for p in written)
    assert names == sorted(["violin_scale4.png", "violin_scales.png", "dose_response.png",
                            "delta_vs_kl.png", "pi_spectrum.png", "jacobian_path.png", "caa_layers.png",
                            "melbo_traces.png", "against_random.png"])
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
    assert "skipped" not in capsys.readouterr().err


def test_store_without_pi_data_skips_the_spectrum_with_a_message(tmp_path, capsys):
    store = write_store(tmp_path / "store.h5", with_pi=False, caa_layers=(7,))
    written = plot.make_all(plot.load(store, KEY, BEHAVIOR), tmp_path / "results", 4.0)
    err = capsys.readouterr().err
    assert "skipped PI spectrum" in err and "skipped CAA layer sweep" in err
    assert {p.name for p in written} == {"violin_scale4.png", "violin_scales.png", "dose_response.png",
                                         "melbo_traces.png", "against_random.png"}


def test_dose_response_shows_the_vector_chosen_on_val_with_its_test_numbers(full_store):
    data = plot.load(full_store, KEY, BEHAVIOR)
    group, vector, rows = plot.dose_rows(data, "letter")["pi"]
    assert vector == PI_VAL_BEST[0] != PI_TEST_BEST[0]
    with h5py.File(full_store, "r") as h5:
        raw = h5[f"{KEY}/{BEHAVIOR}/evals/test/pi/L7-T20/logit_diff"][vector]
        scales = h5[f"{KEY}/{BEHAVIOR}/evals/test/pi/L7-T20/scales"][()]
    assert [r.scale for r in rows] == scales.tolist()
    np.testing.assert_allclose([r.mean_diff.value for r in rows], raw.mean(-1), rtol=1e-6)
    np.testing.assert_allclose([r.positive.value for r in rows], 100 * (raw > 0).mean(-1))
    assert rows == scale_rows(data.test.groups["pi/L7-T20"], vector, data.test)
    random_group, pooled, random_rows = plot.dose_rows(data, "letter")["random"]
    assert pooled is None and random_rows == scale_rows(random_group, None, data.test)


def test_violin_takes_the_sign_of_the_setting_chosen_on_val(full_store):
    picks = {method: (vector, sign)
             for method, _, vector, sign in plot.picks(plot.load(full_store, KEY, BEHAVIOR))}
    assert picks["pi"] == (PI_VAL_BEST[0], -1.0)
    assert picks["caa"] == (0, 1.0) and picks["random"][0] is None


def test_chosen_on_looks_up_the_nearest_stored_scale_in_the_other_split(full_store):
    with h5py.File(full_store, "a") as h5:
        # the test split was evaluated on another grid: -4 is no longer stored there, -3 is nearest
        node = h5[f"{KEY}/{BEHAVIOR}/evals/test/pi/L7-T20"]
        node["scales"][...] = np.array([-8, -3, -2, 2, 3, 8], dtype=np.float32)
        val, test = read_split(h5, KEY, BEHAVIOR, "val"), read_split(h5, KEY, BEHAVIOR, "test")
    group, vector, s = val_choice_in("pi", val, test)
    assert group is test.groups["pi/L7-T20"] and vector == PI_VAL_BEST[0] and group.scales[s] == -3
    assert nearest_scale(group, 5.0) == 4 and nearest_scale(group, -100) == 0


def test_dose_response_of_a_counterbalanced_store_gains_a_letter_shift_panel(tmp_path, monkeypatch):
    store = add_orders(write_store(tmp_path / "store.h5"), letter_spread=1.0)
    panels = {}
    monkeypatch.setattr(plot, "save", lambda fig, out, name, title: panels.setdefault(
        name, [ax.get_ylabel() for ax in fig.axes]))
    plot.fig_dose(plot.load(store, KEY, BEHAVIOR), tmp_path)
    plot.fig_dose(plot.load(write_store(tmp_path / "old.h5"), KEY, BEHAVIOR), tmp_path)
    labels = panels["dose_response.png"]
    assert len(labels) == 4 and labels[2].startswith("letter shift")


def test_delta_against_kl_is_drawn_only_when_kl_was_measured(tmp_path):
    with pytest.raises(plot.Skip, match="no KL measured"):
        plot.fig_cost(plot.load(write_store(tmp_path / "old.h5"), KEY, BEHAVIOR), tmp_path)
    store = add_kl(write_store(tmp_path / "store.h5"))
    assert plot.fig_cost(plot.load(store, KEY, BEHAVIOR, kl_max=0.05), tmp_path).name == "delta_vs_kl.png"


def test_a_store_with_cloze_scores_gains_cloze_panels_and_chooses_by_them(tmp_path, monkeypatch, capsys):
    store = add_cloze(add_path(add_kl(add_orders(write_store(tmp_path / "store.h5"), letter_spread=1.0))))
    data = plot.load(store, KEY, BEHAVIOR, kl_max=0.05)
    assert data.by == "cloze" and plot.load(store, KEY, BEHAVIOR, by="letter").by == "letter"
    assert plot.load(write_store(tmp_path / "old.h5"), KEY, BEHAVIOR).by == "letter"  # no cloze: letter
    _, vector, rows = plot.dose_rows(data, "cloze")["pi"]
    assert vector == 1 and rows[-1].delta.value > 0.2  # the planted behaviour vector
    panels = {}
    monkeypatch.setattr(plot, "save", lambda fig, out, name, title: panels.setdefault(
        name, [ax.get_ylabel() for ax in fig.axes]) or tmp_path / name)
    plot.fig_dose(data, tmp_path)
    labels = panels["dose_response.png"]
    assert len(labels) == 6 and labels[4].startswith("cloze Δ, polarity-paired")
    assert labels[5].startswith("cloze polarity shift")
    monkeypatch.undo()
    written = plot.make_all(data, tmp_path / "results", 4.0)
    assert len(written) == 9 and "skipped" not in capsys.readouterr().err


def test_the_random_figure_sets_each_val_choice_beside_both_signs_of_every_random_direction(full_store):
    from steerlab.measure.analysis import random_draws
    from steerlab.measure.study import entries

    data = plot.load(full_store, KEY, BEHAVIOR, kl_max=0.05)
    found = [e for e in entries(data.val, data.test, data.kl_max, data.by) if e.standing]
    assert found
    for entry in found:
        group = data.test.groups[entry.label]
        draws = random_draws(data.test, group.source_layer, entry.scale, "letter")
        n_dirs = data.test.groups[f"random/L{group.source_layer}"].settings_shape[0]
        assert draws.shape[0] == 2 * n_dirs  # a direction and its negative
        np.testing.assert_allclose(np.sort(entry.standing["letter"].draws), np.sort(draws.mean(1)), rtol=1e-6)
