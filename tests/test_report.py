import h5py
import numpy as np
import pytest

from engine.analysis import read_split, row
from runners import report
from tests.helpers import KEY, PI_TEST_BEST, PI_VAL_BEST, SIGNED, add_orders, write_store


def test_summary_shows_the_val_choice_with_test_numbers_and_the_test_best_apart(tmp_path):
    store = write_store(tmp_path / "store.h5")
    with h5py.File(store, "r") as h5:
        val, test = read_split(h5, KEY, "val"), read_split(h5, KEY, "test")
    line = next(l for l in report.summary(val, test) if l.startswith("| pi |"))
    group = test.groups["pi/L7-T20"]
    vector, s = PI_VAL_BEST
    expected = row(SIGNED[s], group.logit_diff[vector, s], group.mass[vector, s], test.baseline)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1] == f"L7-T20 #{vector}" and cells[2] == f"{SIGNED[s]:+g}"
    assert cells[3] == expected.survival.fmt() and cells[4] == expected.delta.fmt(2, True)
    best_vector, best_s = PI_TEST_BEST
    assert cells[6].startswith(f"L7-T20 #{best_vector}, {SIGNED[best_s]:+g},")



def test_a_store_without_orders_is_reported_as_single_order(tmp_path):
    store = write_store(tmp_path / "store.h5")
    with h5py.File(store, "r") as h5:
        val, test = read_split(h5, KEY, "val"), read_split(h5, KEY, "test")
    assert not test.counterbalanced and test.baseline_row().letter_shift is None
    tables = "\n".join(report.method_tables(test, val))
    assert "**Single order (original).**" in tables and "letter shift" not in tables
    assert "Single order (original): numbers mix behaviour and letter preference" in "\n".join(report.summary(val, test))


@pytest.mark.parametrize("spread, warned", [(5.0, True), (0.01, False)])
def test_counterbalanced_tables_show_letter_shift_and_warn_when_orders_disagree(tmp_path, spread, warned):
    store = add_orders(write_store(tmp_path / "store.h5"), letter_spread=spread)
    with h5py.File(store, "r") as h5:
        val, test = read_split(h5, KEY, "val"), read_split(h5, KEY, "test")
    base = test.baseline_row()
    written, mirrored = test.baseline_by_order
    assert base.letter_shift.value == pytest.approx(((written - mirrored) / 2).mean(), abs=1e-6)
    assert base.consistency.value == pytest.approx(100 * np.mean((written > 0) == (mirrored > 0)))
    assert base.correlation.value == pytest.approx(np.corrcoef(written, mirrored)[0, 1], abs=1e-6)
    tables = "\n".join(report.method_tables(test, val))
    assert "| Scale | survival % | Avg logit diff (order mean) |" in tables
    assert ("no order-stable preference" in tables) is warned
    line = next(l for l in report.summary(val, test) if l.startswith("| pi |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    group = test.groups["pi/L7-T20"]
    vector, s = PI_VAL_BEST
    shift = (group.by_order[vector, s, 0] - group.by_order[vector, s, 1]) / 2
    assert cells[5].startswith(f"{shift.mean():+.2f}")
