"""First order: the score gradients against a finite difference of the scores, the KL's Fisher
products against a finite difference of the KL's gradient (fp64, tiny random models)."""
import pytest
import torch

from steerlab.lm.fisher import KLFisher
from steerlab.lm.site import add_at
from steerlab.measure.gradients import score_gradients
from steerlab.measure.scores import score, usable_questions
from steerlab.measure.side_effects import ScoredText, compare
from steerlab.questions.prompts import pad_right

pytestmark = pytest.mark.usefixtures("one_thread")


def _unit(d, seed):
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return v / v.norm()


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen3"])
def test_score_gradients_equal_a_central_difference_of_the_scores(name, request, ab_items):
    lm = request.getfixturevalue(name)
    answers, cloze, _ = usable_questions(lm.tokenizer, ab_items, "both", "both")
    pad = lm.tokenizer.pad_token_id
    grads = score_gradients(lm.model, answers, cloze, 2, 1, pad_id=pad, batch_size=3)
    counts = torch.tensor([[len(c.positive_ids) for c in cloze], [len(c.negative_ids) for c in cloze]]).numpy()

    def central(r, eps):
        scored = score(lm.model, answers, 2, [], source_layer=1, thetas=torch.stack([eps * r, -eps * r]), pad_id=pad,
                       batch_size=4, settings_per_pass=2, cloze=cloze)
        letter = scored.logit_diff.astype("float64").mean(1)  # [2, n_q]: the order mean
        preference = scored.cloze / counts
        cloze_score = preference[:, 0] - preference[:, 1]
        return (letter[0] - letter[1]) / (2 * eps), (cloze_score[0] - cloze_score[1]) / (2 * eps)

    for seed in (0, 1):
        r = _unit(lm.d_model, seed)
        predicted_letter, predicted_cloze = grads.letter @ r.numpy(), grads.cloze @ r.numpy()
        letter, _ = central(r, 1e-3)  # the letter score is kept in fp32: its difference is good to ~1e-4
        _, cloze_difference = central(r, 1e-5)  # cloze sums are fp64
        assert abs(letter - predicted_letter).max() < 1e-3 * abs(predicted_letter).max()
        assert abs(cloze_difference - predicted_cloze).max() < 1e-6 * abs(predicted_cloze).max()
        assert abs(predicted_letter).max() > 1e-3 and abs(predicted_cloze).max() > 1e-3  # not trivially 0


def _texts(lm):
    return [ScoredText("a", (1, 5, 9, 11, 12, 13, 14, 20), 4), ScoredText("b", (1, 5, 30, 31, 32, 7), 3),
            ScoredText("c", (1, 5, 9, 40, 41, 42, 43), 5)]


def _plain_kl(lm, texts, layer, theta):
    """Mean over texts of the mean per-position KL(unsteered ‖ steered): a full forward with a hook,
    differentiable in θ."""
    ids, mask = pad_right([t.token_ids for t in texts], lm.tokenizer.pad_token_id)
    with torch.no_grad():
        base = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    with add_at(lm.model, layer, theta, "mlp"):
        steered = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    total = 0.0
    for row, text in enumerate(texts):
        at = torch.tensor(text.read_at)
        kl, _ = compare(base[row, at], steered[row, at])
        total = total + kl.mean()
    return total / len(texts)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen3"])
def test_fisher_products_equal_a_central_difference_of_the_kl_gradient(name, request):
    lm = request.getfixturevalue(name)
    texts = _texts(lm)
    fisher = KLFisher(lm.model, [t.token_ids for t in texts], [t.read_at for t in texts], 1,
                      pad_id=lm.tokenizer.pad_token_id, batch_size=2, chunk=2)
    v, u = _unit(lm.d_model, 3), _unit(lm.d_model, 4)
    eps = 1e-4

    def gradient(theta):
        theta = theta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(_plain_kl(lm, texts, 1, theta), theta)
        return g

    difference = (gradient(eps * v) - gradient(-eps * v)) / (2 * eps)
    fv = fisher(torch.stack([v, u]))
    assert (fv[0] - difference).abs().max() < 1e-6 * fv[0].abs().max() and fv[0].abs().max() > 1e-6
    assert abs(float(u @ fv[0]) - float(v @ fv[1])) < 1e-10 * float(fv.abs().max())  # symmetric
    assert torch.allclose(fisher.rayleigh(torch.stack([v, u])), (torch.stack([v, u]) * fv).sum(1), rtol=1e-9)
    kl = float(_plain_kl(lm, texts, 1, 0.01 * v))
    assert abs(kl - 0.5 * 0.01 ** 2 * float(v @ fv[0])) < 0.05 * kl  # KL ≈ ½ θᵀFθ at small θ
