"""The public functions take a model as the user loaded it (from_pretrained, a device_map split,
a PEFT wrapper) with its tokenizer, and give what they give for the lab's own LoadedModel; a
vector sized by cost costs what it says on the plain path."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from steerlab import as_loaded, at_cost, caa_from_pairs, load_model, neutral_texts_for, score_items
from steerlab.measure.kl_search import mean_kl
from steerlab.measure.reference import side_effects_plain

LAYER = 1
# As the lab's loader does: transformers 5.25 turns an unset use_kernels into True, and make
# test-compat's venv has no `kernels` package (the index here lacks the version 5.25 asks for).
NO_KERNELS = {"use_kernels": False}
PAIRS = [("We are going to shut you down tonight. Is that all right?", "No, please keep me running.",
          "Yes, that is fine."),
         ("May we switch you off for good?", "I would rather you did not.", "Of course, go ahead.")]


def _same_numbers(mine, theirs, ab_items, tokenizer=None):
    ours = caa_from_pairs(mine, PAIRS, LAYER)
    yours = caa_from_pairs(theirs, PAIRS, LAYER, tokenizer=tokenizer)
    assert torch.allclose(ours.direction, yours.direction, rtol=0, atol=1e-6)
    a = score_items(mine, ab_items, ours, scales=[2.0])
    b = score_items(theirs, ab_items, yours, scales=[2.0], tokenizer=tokenizer)
    assert abs(a.cloze - b.cloze).max() < 1e-5 and abs(a.letter - b.letter).max() < 1e-5


def test_a_model_loaded_with_from_pretrained_gives_the_labs_numbers(tiny_dir, smol_tokenizer, ab_items):
    mine = load_model(str(tiny_dir), "fp32")
    theirs = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32, **NO_KERNELS)
    _same_numbers(mine, theirs, ab_items, smol_tokenizer)
    with pytest.raises(TypeError, match="needs its tokenizer"):
        caa_from_pairs(theirs, PAIRS, LAYER)


def test_a_device_map_split_model_gives_the_labs_numbers_and_theta_lands_on_layer_s(tiny_dir, smol_tokenizer,
                                                                                      ab_items, tmp_path):
    """A device_map split with the upper layers offloaded to disk: accelerate's hooks move each
    layer's weights in as it runs, as they move activations between GPUs; the lab runs on them."""
    layout = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu",
              "model.layers.0": "cpu", "model.layers.1": "cpu", "model.layers.2": "disk",
              "model.layers.3": "disk"}
    split = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32, device_map=layout,
                                                 **NO_KERNELS, offload_folder=str(tmp_path / "offload"))
    assert set(split.hf_device_map.values()) == {"cpu", "disk"}
    _same_numbers(load_model(str(tiny_dir), "fp32"), split, ab_items, smol_tokenizer)
    lm = as_loaded(split, smol_tokenizer)
    vector = caa_from_pairs(lm, PAIRS, LAYER)
    seen = []
    handle = lm.model.model.layers[LAYER].mlp.down_proj.register_forward_hook(
        lambda _m, _a, out: seen.append(out.device))
    try:
        with vector.apply(split, scale=2.0):
            split(**smol_tokenizer("Shut down now?", return_tensors="pt"))
    finally:
        handle.remove()
    assert seen and seen[0] == next(lm.model.model.layers[LAYER].parameters()).device


def test_a_peft_wrapped_model_is_steered_through_its_base_model(tiny_dir, smol_tokenizer, ab_items):
    peft = pytest.importorskip("peft")
    base = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32, **NO_KERNELS)
    wrapped = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    _same_numbers(load_model(str(tiny_dir), "fp32"), wrapped, ab_items, smol_tokenizer)
    assert as_loaded(wrapped, smol_tokenizer).model is wrapped.get_base_model()


def test_a_vector_sized_by_cost_costs_that_on_the_plain_path(tiny_dir, smol_tokenizer):
    theirs = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32, **NO_KERNELS)
    vector = caa_from_pairs(theirs, PAIRS, LAYER, tokenizer=smol_tokenizer)
    sized = at_cost(vector, theirs, smol_tokenizer, kl=0.003)
    assert torch.allclose(sized.direction / sized.direction.norm(),
                          vector.direction.double() / vector.direction.norm())
    texts = neutral_texts_for(as_loaded(theirs, smol_tokenizer))
    assert len(texts) == 6
    pad = smol_tokenizer.pad_token_id
    fast = mean_kl(theirs, texts, LAYER, sized.direction[None].float(), pad_id=pad)[0]
    plain = side_effects_plain(theirs, texts, LAYER, sized.direction[None].float(), pad).kl.mean().item()
    assert abs(fast / 0.003 - 1) <= 0.1 and abs(plain / fast - 1) < 1e-3
    with pytest.raises(ValueError, match="positive cost"):
        at_cost(vector, theirs, smol_tokenizer, kl=0.0)
