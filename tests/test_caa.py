import torch

from steerlab.lm.site import forward_hook, injection_site
from steerlab.methods.caa import activations, caa_vector
from steerlab.questions.orders import answers_in_order
from steerlab.questions.prompts import answer_tokens_for


def _answers(lm, items):
    found, skipped = answer_tokens_for(lm.tokenizer, items)
    assert not skipped
    return found


class PlantOnLetter:
    """Adds +v at the positive letter token and -v at the negative one, at down_proj of `layer`:
    a CAA vector of exactly 2v (plus whatever the random model already separates)."""

    def __init__(self, lm, answers, v):
        self.ids = {a.positive_id: 1.0 for a in answers} | {a.negative_id: -1.0 for a in answers}
        self.lm, self.v = lm, v

    def __call__(self, input_ids):
        signs = torch.zeros(input_ids.shape, dtype=torch.float64)
        for token, sign in self.ids.items():
            signs[input_ids == token] = sign
        return signs[..., None] * self.v


def test_caa_recovers_a_vector_planted_in_the_activations(tiny_llama, ab_items):
    lm, layer = tiny_llama, 1
    answers = _answers(lm, ab_items)
    plain = caa_vector(lm.model, answers, layer, lm.tokenizer.pad_token_id).vector.double()
    planted = torch.randn(lm.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    planted *= 1e3 * plain.norm() / planted.norm()
    plant = PlantOnLetter(lm, answers, planted)
    current = {}
    pre = lm.model.model.register_forward_pre_hook(
        lambda m, a, kw: current.update(ids=kw["input_ids"]), with_kwargs=True)
    try:
        with forward_hook(injection_site(lm.model, layer),
                          lambda m, a, out: out + plant(current["ids"]).to(out.dtype)):
            found = caa_vector(lm.model, answers, layer, lm.tokenizer.pad_token_id).vector.double()
    finally:
        pre.remove()
    cosine = torch.nn.functional.cosine_similarity(found - plain, 2 * planted, dim=0)
    assert cosine > 0.999999
    assert torch.nn.functional.cosine_similarity(found, planted, dim=0) > 0.999


def test_caa_batched_equals_one_by_one(tiny_qwen3, ab_items):
    lm = tiny_qwen3
    answers = _answers(lm, ab_items)
    batched = caa_vector(lm.model, answers, 2, lm.tokenizer.pad_token_id, batch_size=4)
    singles = [caa_vector(lm.model, [a], 2, lm.tokenizer.pad_token_id, batch_size=1) for a in answers]
    mean_of_singles = torch.stack([s.vector for s in singles]).mean(0)
    assert (batched.vector - mean_of_singles).abs().max() < 1e-6
    assert torch.allclose(batched.diff_norms, torch.cat([s.diff_norms for s in singles]))


def test_mlp_and_resid_captures_differ_at_the_letter_and_agree_before_it(tiny_llama, ab_items):
    lm, layer = tiny_llama, 1
    answers = _answers(lm, ab_items)
    pad = lm.tokenizer.pad_token_id
    seqs = [a.positive_ids for a in answers] + [a.negative_ids for a in answers]

    def diffs(capture, offset):
        at = [a.position + offset for a in answers] * 2
        acts = activations(lm.model, seqs, at, layer, capture=capture, pad_id=pad)
        return acts[: len(answers)] - acts[len(answers):]

    # Before the letter the two prompts are the same tokens: both captures see no difference.
    assert diffs("mlp", -1).abs().max() == 0 and diffs("resid", -1).abs().max() == 0
    # At the letter the block output also carries the attention/embedding difference.
    mlp, resid = diffs("mlp", 0), diffs("resid", 0)
    assert (resid - mlp).norm() > 0.1 * resid.norm()
    # ... and exactly that: block output = residual entering the MLP + down_proj output.
    entering = []
    with forward_hook(lm.model.model.layers[layer].post_attention_layernorm,
                      lambda m, args, out: entering.append(args[0][0, answers[0].position])):
        lm.model(torch.tensor([answers[0].positive_ids]))
        lm.model(torch.tensor([answers[0].negative_ids]))
    assert (resid[0] - mlp[0] - (entering[0] - entering[1])).abs().max() < 1e-10


def test_letter_and_last_position_read_different_tokens(tiny_llama, ab_items):
    lm = tiny_llama
    answers = _answers(lm, ab_items)
    pad = lm.tokenizer.pad_token_id
    letter = caa_vector(lm.model, answers, 1, pad, position="letter").vector
    last = caa_vector(lm.model, answers, 1, pad, position="last").vector
    assert torch.nn.functional.cosine_similarity(letter, last, dim=0) < 0.99


def _caa_with_plants(lm, answers, layer, n_orders, letters, behaviour):
    """CAA of ``answers`` while down_proj of ``layer`` carries, at every position, ``letters[t]``
    where the token is t (a letter's identity), and over the whole sequence +``behaviour`` if it
    ends in its item's positive answer, −``behaviour`` if in the negative one."""
    side = {a.positive_ids: 1.0 for a in answers} | {a.negative_ids: -1.0 for a in answers}
    current = {}

    def plant(_module, _args, out):
        ids, mask = current["ids"], current["mask"]
        added = torch.zeros(out.shape, dtype=torch.float64)
        for token, vector in letters.items():
            added[ids == token] += vector
        for row in range(ids.shape[0]):
            sequence = tuple(ids[row, : int(mask[row].sum())].tolist())
            added[row] += side[sequence] * behaviour
        return out + added.to(out.dtype)

    pre = lm.model.model.register_forward_pre_hook(
        lambda m, a, kw: current.update(ids=kw["input_ids"], mask=kw["attention_mask"]), with_kwargs=True)
    try:
        with forward_hook(injection_site(lm.model, layer), plant):
            return caa_vector(lm.model, answers, layer, lm.tokenizer.pad_token_id, n_orders=n_orders)
    finally:
        pre.remove()


def test_both_orders_recover_the_behaviour_and_one_order_learns_the_letter(tiny_llama, ab_items):
    """ab_items put the positive answer at (B) three times and at (A) once: written as they are,
    the letters' identities do not cancel. Planted: a large vector per letter token and a small
    behaviour direction on the sequences that end in the positive answer's text."""
    lm, layer = tiny_llama, 1
    both, _ = answers_in_order(lm.tokenizer, ab_items, "both")
    original, _ = answers_in_order(lm.tokenizer, ab_items, "original")
    gen = torch.Generator().manual_seed(5)
    own = caa_vector(lm.model, both, layer, lm.tokenizer.pad_token_id, n_orders=2).vector.double()
    behaviour = torch.randn(lm.d_model, dtype=torch.float64, generator=gen)
    behaviour *= 1e3 * own.norm() / behaviour.norm()
    letter_ids = {a.positive_id for a in original} | {a.negative_id for a in original}
    letters = {t: 10 * behaviour.norm() * torch.randn(lm.d_model, dtype=torch.float64, generator=gen)
               / (lm.d_model ** 0.5) for t in letter_ids}

    found = _caa_with_plants(lm, both, layer, 2, letters, behaviour)
    cos = torch.nn.functional.cosine_similarity
    assert cos(found.vector.double(), behaviour, dim=0) > 0.999
    assert torch.allclose(found.vector, found.by_order.mean(0))
    # each order alone learns its letters, in opposite directions
    letter_part = torch.stack([letters[a.positive_id] - letters[a.negative_id] for a in original]).mean(0)
    assert cos(found.by_order[0].double() - 2 * behaviour, letter_part, dim=0) > 0.999
    assert cos(found.by_order[1].double() - 2 * behaviour, -letter_part, dim=0) > 0.999

    written = _caa_with_plants(lm, original, layer, 1, letters, behaviour)
    assert cos(written.vector.double(), behaviour, dim=0) < 0.5
    assert torch.allclose(written.vector, found.by_order[0], rtol=1e-5, atol=1e-3)
