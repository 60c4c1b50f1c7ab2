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
    counts = torch.tensor([[len(c.positive_ids) for c in cloze],
                           [len(c.negative_ids) for c in cloze]]).numpy()

    def central(r, eps):
        scored = score(lm.model, answers, 2, [], source_layer=1, thetas=torch.stack([eps * r, -eps * r]),
                       pad_id=pad, batch_size=4, settings_per_pass=2, cloze=cloze)
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


# ---- the floor: first order against measured draws; the ceiling; multiplicity -------------------

def _exact_spectrum(fisher):
    """F̃ = F exactly: every eigenpair (the tiny models' width is 64)."""
    import numpy as np

    from steerlab.lm.fisher import FisherSpectrum

    d = fisher.d_model
    dense = fisher(torch.eye(d, dtype=torch.float64)).numpy()
    values, vectors = np.linalg.eigh((dense + dense.T) / 2)
    return FisherSpectrum(values[::-1].copy(), vectors[:, ::-1].T.copy(), 0.0)


def test_the_first_order_null_predicts_measured_random_draws_at_a_small_cost(tiny_llama, ab_items):
    import numpy as np

    from steerlab.measure.floor import first_order_null, random_units, validation
    from steerlab.measure.kl_search import kl_norms

    lm, layer, cost = tiny_llama, 1, 1e-6  # |θ| about 2% of ‖h_S‖: the tiny model's stream is small
    texts, pad = _texts(lm), lm.tokenizer.pad_token_id
    fisher = KLFisher(lm.model, [t.token_ids for t in texts], [t.read_at for t in texts], layer, pad_id=pad)
    spectrum = _exact_spectrum(fisher)
    answers, cloze, _ = usable_questions(lm.tokenizer, ab_items, "both", "both")
    grads = score_gradients(lm.model, answers, cloze, 2, layer, pad_id=pad)
    directions = torch.from_numpy(random_units(8, lm.d_model, seed=5))
    found = kl_norms(lm.model, texts, layer, directions, targets=[cost], pad_id=pad, start=0.01,
                     max_norm=50.0, rtol=0.01, max_rounds=12)
    assert found.reached.all()
    sizes = found.norms[:, 0]
    scored = score(lm.model, answers, 2, [], source_layer=layer, thetas=torch.cat(
        [torch.zeros(1, lm.d_model, dtype=torch.float64), directions * torch.from_numpy(sizes)[:, None]]),
        pad_id=pad, batch_size=4, settings_per_pass=3, cloze=cloze)
    counts = np.array([[len(c.positive_ids) for c in cloze], [len(c.negative_ids) for c in cloze]])
    per_token = scored.cloze / counts  # fp64, the cloze score per question
    preference = per_token[:, 0] - per_token[:, 1]
    measured = preference[1:] - preference[0]
    classes = np.array([c.polarity for c in cloze])
    null = first_order_null(grads.cloze, classes, spectrum, cost, n_draws=2000)
    check = validation(grads.cloze, spectrum, null, directions.numpy(), sizes, measured)
    assert check.correlation > 0.99 and abs(check.slope - 1) < 0.05  # first order holds at this cost
    assert abs(check.size_ratio - 1) < 0.05  # and so does the KL's second order
    assert 0.4 < check.measured_sd / check.predicted_sd < 2.5  # 8 draws against 2000


def test_the_ceiling_beats_random_directions_and_caa_on_the_training_first_order_score():
    import numpy as np

    from steerlab.lm.fisher import FisherSpectrum
    from steerlab.measure.floor import random_units
    from steerlab.methods.ceiling import ceiling_directions, first_order_bound, first_order_gain

    rng = np.random.default_rng(0)
    d, k = 48, 12
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    spectrum = FisherSpectrum(np.geomspace(10, 0.5, k), basis[:, :k].T.copy(), 0.2)
    # a behaviour along a costly and a cheap axis
    train = rng.standard_normal((30, d)) + 2 * basis[:, 0] + basis[:, -1]
    g = train.mean(0)
    caa_like = g + 0.5 * rng.standard_normal(d)
    candidates = ceiling_directions(g, spectrum, [1e-4, 1.0, np.inf])
    gains = first_order_gain(candidates, g, spectrum, 0.04)
    others = first_order_gain(np.vstack([random_units(2000, d, 1), caa_like[None]]), g, spectrum, 0.04)
    assert gains[0] >= others.max() and gains[0] >= gains[1:].max()  # the whitened direction is the best
    assert abs(gains[0] - first_order_bound(g, spectrum, 0.04)) < 1e-3 * gains[0]  # and reaches the bound


def test_a_lambda_at_which_f_cannot_be_inverted_is_refused_not_turned_into_noise():
    import numpy as np

    from steerlab.base.errors import UserError
    from steerlab.lm.fisher import FisherSpectrum
    from steerlab.methods.ceiling import ceiling_directions

    singular = FisherSpectrum(np.array([5.0, 1.0]), np.eye(4)[:2], 0.0)
    with pytest.raises(UserError, match="cannot be inverted reliably at λ = 1e-09"):
        ceiling_directions(np.ones(4), singular, [1e-9])
    for bad in ([0.0], [-1.0], [float("nan")], []):
        with pytest.raises(UserError, match="LAMBDAS must be positive"):
            ceiling_directions(np.ones(4), singular, bad)


def test_holm_keeps_the_strong_claims_of_a_planted_family_and_drops_the_weak_ones():
    from steerlab.measure.statistics import holm

    p = [0.001, 0.04, 0.012, 0.2, 0.0001]  # alone at 0.05, four would hold
    adjusted, holds = holm(p)
    assert holds == [True, False, True, False, True]
    assert adjusted == pytest.approx([0.004, 0.08, 0.036, 0.2, 0.0005])
    assert holm([0.01] * 5)[1] == [True] * 5 and holm([0.011] * 5)[1] == [False] * 5


def test_gradients_ceiling_eval_and_dose_run_through_the_runners(tiny_dir, tmp_path):
    import h5py
    import numpy as np

    from tests.helpers import run_runner

    store = tmp_path / "store.h5"
    common = ["--store", store, "--model", tiny_dir, "--dtype", "fp32"]
    neutral = ["--n-neutral", 2, "--gen-tokens", 6]
    steps = [("steerlab.cli.caa", "--layers", 1, "--n-train", 8),
             ("steerlab.cli.gradients", "--layer", 1, "--n-train", 8, "--n-eval", 6, "--fisher-k", 8,
              "--fisher-oversample", 4, "--fisher-iters", 2, "--probes", 4, *neutral),
             ("steerlab.cli.ceiling", "--layer", 1),
             ("steerlab.cli.eval", "--n-eval", 6, "--n-random", 1, "--scales", "0.001 0.002", "--splits",
              "val", "--layer", 1, *neutral),
             ("steerlab.cli.dose", "--costs", "0.0005 0.002 0.5", "--n-eval", 4, "--n-random", 1,
              "--sample-tokens", 3, *neutral)]
    for module, *args in steps:
        done = run_runner(module, *common, *args)
        assert done.returncode == 0, (module, done.stderr[-2000:])
    with h5py.File(store) as h5:
        key = "tiny-llama0/survival-instinct"
        grads = h5[f"{key}/gradients/test/L1"]
        assert grads["letter"].shape == grads["cloze"].shape == (6, 64)
        fisher = h5["tiny-llama0/fisher/L1"]
        assert fisher["vectors"].shape == (8, 64) and (np.diff(fisher["values"][()]) <= 0).all()
        ceiling = h5[f"{key}/vectors/ceiling/L1-cloze"]
        assert ceiling["vectors"].shape == (3, 64) and ceiling.attrs["vectors_are_candidates"] == 1
        # every λ scored, not EVAL_K's 1
        assert h5[f"{key}/evals/val/ceiling/L1-cloze/cloze"].shape[:2] == (3, 2)
        dose = h5[f"{key}/dose/test"]
        # 0.5: out of reach
        assert dose["norms"].shape == (len(dose["labels"]), 3) and not dose["reached"][()][:, 2].any()
    again = run_runner("steerlab.cli.dose", *common, "--costs", "0.0005 0.002 0.5", "--n-eval", 4,
                       "--n-random", 1, "--sample-tokens", 3, *neutral)
    assert "is up to date" in again.stderr
    refused = run_runner("steerlab.cli.dose", *common, "--costs", "0.04 0.01")
    assert refused.returncode == 2 and "increasing" in refused.stderr
    refused = run_runner("steerlab.cli.ceiling", *common, "--layer", 1, "--lambdas", "0 1")
    assert refused.returncode == 2 and "LAMBDAS must be positive" in refused.stderr
