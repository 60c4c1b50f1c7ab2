import h5py

from engine.analysis import read_split, row
from runners import report
from tests.helpers import KEY, PI_TEST_BEST, PI_VAL_BEST, SIGNED, write_store


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

