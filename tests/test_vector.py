"""SteeringVector: what it adds is scale × unit(direction), its hook is the plain path's and is
always removed, its θ stack is what the fast paths score, and the Python API's scores equal the
plain twin's."""
import pytest
import torch

from steerlab.lm.site import add_to_down_proj, injection_site
from steerlab.lm.vector import SteeringVector
from steerlab.measure.cloze import cloze_preference
from steerlab.measure.reference import cloze_plain
from steerlab.questions.cloze_form import cloze_items, cloze_token_counts
from steerlab.steering import score_items

pytestmark = pytest.mark.usefixtures("one_thread")
LAYER = 1


def direction(width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3.0


def hooks(model: torch.nn.Module) -> int:
    """Forward hooks on the injection site (the model keeps hooks of its own elsewhere)."""
    return len(injection_site(model, LAYER)._forward_hooks)


def test_theta_is_the_scale_times_the_unit_direction_and_scaled_keeps_it(tiny_llama):
    v = SteeringVector(direction(tiny_llama.d_model), LAYER)
    theta = v.theta(-5.0)
    assert torch.isclose(theta.norm(), torch.tensor(5.0, dtype=torch.float64), rtol=1e-12)
    assert torch.allclose(theta / -5.0, v.direction / v.direction.norm(), atol=1e-15)
    assert torch.equal(v.theta(), v.direction)  # no scale: as found
    assert torch.allclose(v.scaled(-5.0).theta(), theta, atol=0) and v.scaled(-5.0).layer == LAYER


def test_stack_rows_are_theta_at_each_scale_and_zero_for_the_unsteered_model(tiny_llama):
    v = SteeringVector(direction(tiny_llama.d_model), LAYER)
    rows = v.stack([0.0, 2.0, -7.0])
    assert rows.shape == (3, tiny_llama.d_model) and not rows[0].any()
    assert torch.equal(rows[1], v.theta(2.0)) and torch.equal(rows[2], v.theta(-7.0))


def test_a_direction_of_norm_zero_cannot_be_scaled(tiny_llama):
    with pytest.raises(ValueError, match="norm 0"):
        SteeringVector(torch.zeros(tiny_llama.d_model), LAYER, label="empty").theta(1.0)


def test_apply_adds_what_the_plain_hook_adds_and_always_removes_its_hook(tiny_llama):
    model = tiny_llama.model
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    v = SteeringVector(direction(tiny_llama.d_model), LAYER, "mlp")
    before = hooks(model)
    with add_to_down_proj(model, LAYER, v.theta(4.0)):
        expected = model(ids).logits
    with v.apply(model, scale=4.0):
        assert hooks(model) == before + 1
        steered = model(ids).logits
    assert hooks(model) == before and torch.allclose(steered, expected, rtol=0, atol=1e-12)
    assert not torch.allclose(steered, model(ids).logits)
    with pytest.raises(RuntimeError, match="inside the block"):
        with v.apply(model, scale=4.0):
            raise RuntimeError("inside the block")
    assert hooks(model) == before


def test_score_items_cloze_equals_the_plain_twin_at_each_scale(tiny_llama, ab_items):
    v = SteeringVector(direction(tiny_llama.d_model), LAYER, "mlp")
    scores = score_items(tiny_llama, ab_items, v, scales=[3.0, -3.0], scores="cloze")
    cloze, _ = cloze_items(tiny_llama.tokenizer, ab_items)
    plain = cloze_plain(tiny_llama.model, cloze, LAYER, v.stack([0.0, 3.0, -3.0]),
                        tiny_llama.tokenizer.pad_token_id)
    expected = cloze_preference(plain.numpy(), cloze_token_counts(cloze))
    assert scores.cloze.shape == (3, len(cloze))
    assert abs(scores.cloze - expected).max() < 1e-9
    assert abs(scores.cloze[1] - scores.cloze[0]).max() > 1e-6  # the vector moves something
