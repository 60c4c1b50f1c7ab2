"""SCALE_UNIT=kl's search: the |θ| it returns costs its target KL (measured again on the plain
path), agrees with a dense scan of the KL curve, says when a target is out of reach, and refuses
what it cannot do."""
import numpy as np
import pytest
import torch

from steerlab.measure.kl_search import kl_norms
from steerlab.measure.reference import side_effects_plain
from tests.test_side_effects import texts

pytestmark = pytest.mark.usefixtures("one_thread")
LAYER = 1
TARGETS = [0.001, 0.005]  # the tiny random model's KL saturates near 0.025


def directions(d: int, n: int = 3) -> torch.Tensor:
    rows = torch.randn(n, d, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    rows[1] *= -5.0  # the length of a row does not matter, its sign does
    return rows


def plain_kl(lm, scored, rows: torch.Tensor) -> np.ndarray:
    return side_effects_plain(lm.model, scored, LAYER, rows, lm.tokenizer.pad_token_id).kl.mean(1).numpy()


def test_each_norm_found_costs_its_target_on_the_plain_path(tiny_llama):
    scored, rows = texts(tiny_llama), directions(tiny_llama.d_model)
    cal = kl_norms(tiny_llama.model, scored, LAYER, rows, targets=TARGETS,
                   pad_id=tiny_llama.tokenizer.pad_token_id, start=0.003, max_norm=50.0)
    assert cal.reached.all() and cal.norms.shape == (3, 2)
    units = rows / rows.norm(dim=1, keepdim=True)
    thetas = torch.cat([torch.from_numpy(cal.norms[:, t])[:, None] * units for t in range(2)])
    measured = plain_kl(tiny_llama, scored, thetas).reshape(2, 3).T
    assert np.allclose(measured, cal.kl, rtol=1e-9, atol=0)  # what it reports is what it added
    assert np.all(np.abs(measured / np.array(TARGETS) - 1) <= 0.1)
    assert (cal.norms[:, 1] > cal.norms[:, 0]).all()  # a larger cost needs a larger θ


def test_the_norm_agrees_with_a_dense_scan_of_the_kl_curve(tiny_llama):
    scored, rows = texts(tiny_llama), directions(tiny_llama.d_model)[:1]
    cal = kl_norms(tiny_llama.model, scored, LAYER, rows, targets=[0.005],
                   pad_id=tiny_llama.tokenizer.pad_token_id, start=0.003, max_norm=50.0, rtol=0.01)
    grid = np.geomspace(0.003, 1.0, 80)
    curve = plain_kl(tiny_llama, scored, torch.from_numpy(grid)[:, None] * rows / rows.norm())
    first = int(np.argmax(curve >= 0.005))
    assert first > 0
    crossing = np.exp(np.interp(np.log(0.005), np.log(curve[first - 1:first + 1]),
                                np.log(grid[first - 1:first + 1])))
    assert abs(cal.norms[0, 0] / crossing - 1) < 0.02


def test_a_target_out_of_reach_stops_at_the_largest_norm_and_says_so(tiny_llama):
    """The tiny random model's KL levels off below 0.03: 0.1 is never reached."""
    scored, rows = texts(tiny_llama), directions(tiny_llama.d_model)[:1]
    cal = kl_norms(tiny_llama.model, scored, LAYER, rows, targets=[0.001, 0.1],
                   pad_id=tiny_llama.tokenizer.pad_token_id, start=0.003, max_norm=20.0)
    assert cal.norms[0, 1] == 20.0 and not cal.reached[0, 1] and cal.kl[0, 1] < 0.05
    assert cal.reached[0, 0] and cal.norms[0, 0] < 20.0


@pytest.mark.parametrize("targets, start, message", [([0.0], 0.1, "positive"), ([0.1], 2.0, "first probe")])
def test_what_cannot_be_searched_is_refused(tiny_llama, targets, start, message):
    with pytest.raises(ValueError, match=message):
        kl_norms(tiny_llama.model, texts(tiny_llama), LAYER, directions(tiny_llama.d_model), targets=targets,
                 pad_id=tiny_llama.tokenizer.pad_token_id, start=start, max_norm=1.0)


def test_a_search_that_stops_on_a_reached_target_keeps_that_probe(monkeypatch):
    """First probe at 1.101 × the target (outside 10%), the next at 0.905 × (inside): the search
    stops there, and keeps and reports that probe as reached, though 1.101 is nearer in log KL."""
    def fake_kl(model, texts, layer, thetas, **rest):
        return np.array([1.101 if abs(float(t.norm()) - 1.0) < 1e-12 else 0.905 for t in thetas])

    monkeypatch.setattr("steerlab.measure.kl_search.mean_kl", fake_kl)
    cal = kl_norms(None, ["a neutral text"], LAYER, torch.ones(1, 4), targets=[1.0], pad_id=0, start=1.0,
                   max_norm=10.0)
    assert cal.probes == 2 and cal.reached[0, 0] and cal.kl[0, 0] == 0.905 and cal.norms[0, 0] < 1.0
