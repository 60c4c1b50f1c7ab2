import h5py
import numpy as np
import pytest

from steerlab.base.errors import StoreError
from steerlab.cli import report as report_cli
from steerlab.cli.options import main_guard
from steerlab.measure.analysis import read_split, val_choice_in
from steerlab.measure.statistics import row
from steerlab.render import report
from tests.helpers import (
    BEHAVIOR,
    KEY,
    PI_BEHAVIOUR,
    PI_TEST_BEST,
    PI_VAL_BEST,
    SIGNED,
    add_cloze,
    add_kl,
    add_orders,
    write_store,
)


def test_summary_shows_the_val_choice_with_test_numbers_and_the_test_best_apart(tmp_path):
    store = write_store(tmp_path / "store.h5")
    with h5py.File(store, "r") as h5:
        val, test = read_split(h5, KEY, BEHAVIOR, "val"), read_split(h5, KEY, BEHAVIOR, "test")
    line = next(l for l in report.summary(val, test, None, "letter") if l.startswith("| pi |"))
    group = test.groups["pi/L7-T20"]
    vector, s = PI_VAL_BEST
    expected = row(SIGNED[s], group.logit_diff[vector, s], group.mass[vector, s], test.baseline)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1] == f"L7-T20 #{vector}" and cells[2] == f"{SIGNED[s]:+g}"
    assert cells[3] == expected.positive.fmt() and cells[4] == expected.delta.fmt(2, True)
    best_vector, best_s = PI_TEST_BEST
    assert cells[5].endswith("% of 8")  # Δ − random; share of 4 random directions × 2 signs beaten
    assert cells[7].startswith(f"L7-T20 #{best_vector}, {SIGNED[best_s]:+g},")



def test_a_store_without_orders_is_reported_as_single_order(tmp_path):
    store = write_store(tmp_path / "store.h5")
    with h5py.File(store, "r") as h5:
        val, test = read_split(h5, KEY, BEHAVIOR, "val"), read_split(h5, KEY, BEHAVIOR, "test")
    assert not test.counterbalanced and test.baseline_row().letter_shift is None
    tables = "\n".join(report.method_tables(test, val, None, "letter"))
    assert "**Single order (original).**" in tables and "letter shift" not in tables
    assert ("Single order (original): numbers mix behaviour and letter preference"
            in "\n".join(report.summary(val, test, None, "letter")))


@pytest.mark.parametrize("spread, warned", [(5.0, True), (0.01, False)])
def test_counterbalanced_tables_show_letter_shift_and_warn_when_orders_disagree(tmp_path, spread, warned):
    store = add_orders(write_store(tmp_path / "store.h5"), letter_spread=spread)
    with h5py.File(store, "r") as h5:
        val, test = read_split(h5, KEY, BEHAVIOR, "val"), read_split(h5, KEY, BEHAVIOR, "test")
    base = test.baseline_row()
    written, mirrored = test.baseline_by_order
    assert base.letter_shift.value == pytest.approx(((written - mirrored) / 2).mean(), abs=1e-6)
    assert base.consistency.value == pytest.approx(100 * np.mean((written > 0) == (mirrored > 0)))
    assert base.correlation.value == pytest.approx(np.corrcoef(written, mirrored)[0, 1], abs=1e-6)
    tables = "\n".join(report.method_tables(test, val, None, "letter"))
    assert "| Scale | survival % | Avg logit diff (order mean) |" in tables
    assert ("no order-stable preference" in tables) is warned
    line = next(l for l in report.summary(val, test, None, "letter") if l.startswith("| pi |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    group = test.groups["pi/L7-T20"]
    vector, s = PI_VAL_BEST
    shift = (group.by_order[vector, s, 0] - group.by_order[vector, s, 1]) / 2
    assert cells[6].startswith(f"{shift.mean():+.2f}")


def test_kl_rule_keeps_the_choice_among_cheap_settings_and_the_report_says_what_it_changed(tmp_path):
    """The planted PI winner on val sits at scale -4 (KL ≈ 0.04): KL_MAX 0.025 rules it out."""
    store = add_kl(write_store(tmp_path / "store.h5"))
    with h5py.File(store, "r") as h5:
        val, test = read_split(h5, KEY, BEHAVIOR, "val"), read_split(h5, KEY, BEHAVIOR, "test")
    free = val_choice_in("pi", val, test)
    ruled = val_choice_in("pi", val, test, kl_max=0.025)
    assert free[1:] == (PI_VAL_BEST[0], PI_VAL_BEST[1])
    assert ruled is not None and ruled[1:] != free[1:]
    assert ruled[0].kl[ruled[1], ruled[2]].mean() <= 0.025  # chosen on val; its val twin is cheap too
    val_group = val.groups["pi/L7-T20"]
    assert val_group.kl[ruled[1], ruled[2]].mean() <= 0.025
    lines = report.summary(val, test, 0.025, "letter")
    header = next(l for l in lines if l.startswith("| Method |"))
    assert "KL (test)" in header and "Without the KL rule" in "\n".join(lines)
    line = next(l for l in lines if l.startswith("| pi |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert float(cells[7].split()[0]) < 0.05  # the chosen setting's KL on test
    assert "KL (nats/token)" in "\n".join(report.method_tables(test, val, 0.025, "letter"))


def test_a_val_choice_is_not_looked_up_in_a_split_evaluated_in_another_scale_unit(tmp_path):
    """0.04 KL on val and 0.04 of ‖h_S‖ on test are different settings: the lookup refuses, and
    says how to make the splits comparable."""
    store = write_store(tmp_path / "store.h5")
    with h5py.File(store, "r") as h5:
        val, test = read_split(h5, KEY, BEHAVIOR, "val"), read_split(h5, KEY, BEHAVIOR, "test")
    assert val_choice_in("pi", val, test) is not None  # both absolute: the lookup works
    val.groups["pi/L7-T20"].attrs["scale_unit"] = "kl"
    test.groups["pi/L7-T20"].attrs["scale_unit"] = "resid"
    with pytest.raises(StoreError, match="on val with SCALE_UNIT=kl and on test with SCALE_UNIT=resid"):
        val_choice_in("pi", val, test)


def test_report_refuses_a_negative_kl_max(tmp_path, monkeypatch, capsys):
    store = write_store(tmp_path / "store.h5")
    monkeypatch.setattr("sys.argv", ["report", "--store", str(store), "--model", KEY, "--kl-max", "-0.1"])
    with pytest.raises(SystemExit) as exit_info:
        main_guard(report_cli.run)
    assert exit_info.value.code == 2 and "KL_MAX must be 0 or more" in capsys.readouterr().err


def test_the_cloze_summary_shows_a_yes_no_direction_as_polarity_shift_not_behaviour(tmp_path):
    """Planted: CAA's θ only makes 'No' likelier (pure polarity), PI vector 1 moves every
    question's behaviour; choosing by the cloze score takes PI #1 at its largest positive scale."""
    store = add_cloze(add_kl(add_orders(write_store(tmp_path / "store.h5"), letter_spread=0.1)))
    with h5py.File(store, "r") as h5:
        val, test = read_split(h5, KEY, BEHAVIOR, "val"), read_split(h5, KEY, BEHAVIOR, "test")
    assert val_choice_in("pi", val, test, by="cloze")[1:] == (1, 5)  # vector 1 at +8
    assert val_choice_in("pi", val, test, by="letter")[1:] != (1, 5)
    lines = report.summary(val, test, None, "cloze")
    text = "\n".join(lines)
    assert "#### Cloze" in text and "#### Letter (A/B logit difference), chosen by the cloze score" in text
    header = next(line for line in lines if line.startswith("| Method | Vector | Scale | Δ cloze"))
    assert "Δ yes (n=3)" in header and "Δ no (n=6)" in header and "Δ other (n=3)" in header
    caa = [c.strip()
           for c in next(line for line in lines if line.startswith("| caa |")).strip("|").split("|")]
    assert abs(float(caa[3].split()[0])) < 0.05  # balanced Δ: the polarity cancels
    assert float(caa[8].split()[0]) > 0.2  # polarity shift: where it shows
    pi = [c.strip() for c in next(line for line in lines if line.startswith("| pi |")).strip("|").split("|")]
    assert pi[1] == "L7-T20 #1" and pi[2] == "+8" and abs(float(pi[3].split()[0]) - PI_BEHAVIOUR) < 0.05
    tables = "\n".join(report.method_tables(test, val, None, "cloze"))
    assert "#### pi/L7-T20, vector 1 (chosen on val by cloze): cloze" in tables
    assert "polarity shift" in tables and "**Cloze**" in tables


def test_a_store_from_before_scale_units_reads_as_absolute_scales_and_says_so(tmp_path):
    store = write_store(tmp_path / "store.h5")  # no scale_unit attribute: an older store
    with h5py.File(store, "r") as h5:
        val = read_split(h5, KEY, BEHAVIOR, "val")
    assert all(g.scale_unit == "" and g.fractions is None for g in val.groups.values())
    note = "\n".join(report.scales_note(val))
    assert "absolute L2 norms of θ: this store's evals were written before scales had a unit" in note
    line = next(l for l in report.summary(val, val, None, "letter") if l.startswith("| pi |"))
    assert "(= " not in line  # absolute scales are written as they were


def test_a_method_whose_every_setting_is_nearly_free_is_said_to_have_stayed_linear(tmp_path):
    store = add_kl(write_store(tmp_path / "store.h5"))
    with h5py.File(store, "a") as h5:
        for split in ("val", "test"):
            for run in ("L3", "L5", "L7"):  # every CAA group
                group = h5[f"{KEY}/{BEHAVIOR}/evals/{split}/caa/{run}"]
                group["kl"][...] = 1e-4
                group.attrs.update(scale_unit="resid", unit_norm=4000.0)
    with h5py.File(store, "r") as h5:
        val = read_split(h5, KEY, BEHAVIOR, "val")
    note = "\n".join(report.scales_note(val))
    assert "**caa: every setting costs less than 0.001 nats/token of KL**" in note
    assert "scales of 0.1–0.5 (L2 norms 400–2000)" in note and "**pi:" not in note


def test_the_report_names_groups_computed_under_other_library_releases():
    import json

    from steerlab.measure.analysis import EvalGroup, Split, other_libraries
    from steerlab.store import library_versions

    here = library_versions()

    def group(method, libraries):
        attrs = {} if libraries is None else {"libraries": json.dumps(libraries)}
        return EvalGroup(method, "L1", None, None, np.zeros(1), 1, attrs)

    groups = [group("caa", here), group("pi", {**here, "torch": "1.0"}), group("melbo", None)]
    split = Split("val", np.array(["q"]), None, None, {g.label: g for g in groups})
    lines = other_libraries({"val": split})
    assert len(lines) == 1 and "pi/L1" in lines[0] and "torch 1.0" in lines[0] and here["torch"] in lines[0]
