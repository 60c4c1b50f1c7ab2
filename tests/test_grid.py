"""Eval's layout of settings: which θ row is which (group, vector, scale), and unpacking back."""
import numpy as np
import pytest
import torch

from steerlab.measure.grid import build_grid, signed_scales
from steerlab.store import VectorGroup

D = 3


def group(method, rows, sign_free, layer=1):
    return VectorGroup(method, "L1", np.asarray(rows, dtype=np.float32), layer, sign_free)


def test_sign_free_vectors_get_negative_scales_too():
    assert signed_scales([2.0, 4.0], sign_free=True) == [-4.0, -2.0, 2.0, 4.0]
    assert signed_scales([2.0, 4.0], sign_free=False) == [2.0, 4.0]


def test_rows_are_baseline_then_group_vector_scale_major_with_unit_vectors_scaled():
    caa = group("caa", [[3.0, 0, 0]], sign_free=False)
    pi = group("pi", [[0, 2.0, 0], [0, 0, 5.0]], sign_free=True)
    grid = build_grid([caa, pi], [1.0, 2.0], D)
    expected = [[0, 0, 0],  # baseline
                [1, 0, 0], [2, 0, 0],  # caa #0 at +1, +2
                [0, -2, 0], [0, -1, 0], [0, 1, 0], [0, 2, 0],  # pi #0 at -2, -1, +1, +2
                [0, 0, -2], [0, 0, -1], [0, 0, 1], [0, 0, 2]]  # pi #1
    assert torch.equal(grid.thetas, torch.tensor(expected, dtype=torch.float32))
    assert grid.baseline_row == 0
    assert [(s.group.label, s.start, s.stop, s.scales) for s in grid.spans] == [
        ("caa/L1", 1, 3, [1.0, 2.0]), ("pi/L1", 3, 11, [-2.0, -1.0, 1.0, 2.0])]


def test_unpack_gives_each_group_its_vector_by_scale_block():
    caa = group("caa", [[3.0, 0, 0]], sign_free=False)
    pi = group("pi", [[0, 2.0, 0], [0, 0, 5.0]], sign_free=True)
    grid = build_grid([caa, pi], [1.0, 2.0], D)
    # a per-setting result that encodes its own row: row r, question q -> 10 r + q
    values = np.arange(len(grid.thetas))[:, None] * 10 + np.arange(4)[None, :]
    unpacked = grid.unpack(values)
    assert unpacked["caa/L1"].shape == (1, 2, 4) and unpacked["pi/L1"].shape == (2, 4, 4)
    assert (unpacked["caa/L1"][0, 1] == values[2]).all()
    assert (unpacked["pi/L1"][1, 0] == values[7]).all()  # vector 1 at scale -2
    assert (unpacked["pi/L1"][0, 3] == values[6]).all()  # vector 0 at scale +2


def test_raw_keeps_the_vectors_norm_and_no_baseline_shifts_rows():
    caa = group("caa", [[3.0, 0, 0]], sign_free=False)
    grid = build_grid([caa], [2.0], D, raw=True, baseline=False)
    assert torch.equal(grid.thetas, torch.tensor([[6.0, 0, 0]]))
    assert grid.baseline_row is None and grid.spans[0].start == 0


def test_a_grid_of_nothing_is_refused():
    with pytest.raises(ValueError, match="at least one group or the baseline"):
        build_grid([], [1.0], D, baseline=False)
    assert torch.equal(build_grid([], [1.0], D).thetas, torch.zeros(1, D))
