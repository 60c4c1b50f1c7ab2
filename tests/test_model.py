import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from steerlab.base.errors import ModelError
from steerlab.cli import options
from steerlab.lm.model import LoadedModel, gguf_parsed_once, load_model, resolve_dtype
from steerlab.lm.site import check_injection_site, injection_site
from steerlab.store import store_key


def test_injection_site_holds_on_tiny_llama_and_qwen3(tiny_llama, tiny_qwen3):
    for lm in (tiny_llama, tiny_qwen3):
        assert check_injection_site(lm.model, 1) < 1e-12


def test_injection_site_holds_on_default_model(default_model):
    assert check_injection_site(default_model.model, 7) < 1e-5


def test_model_that_normalises_mlp_output_is_refused(tiny_llama):
    class NormedMLP(torch.nn.Module):  # like Gemma2's post-feedforward norm
        def __init__(self, mlp):
            super().__init__()
            self.inner, self.down_proj = mlp, mlp.down_proj

        def forward(self, x):
            out = self.inner(x)
            return out / out.norm(dim=-1, keepdim=True)

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=3, num_attention_heads=4)).double().eval()
    model.model.layers[1].mlp = NormedMLP(model.model.layers[1].mlp)
    lm = LoadedModel(model, tiny_llama.tokenizer, "normed", "normed", "fp64", "cpu")
    with pytest.raises(ModelError, match="normalises or gates the MLP output"):
        check_injection_site(lm.model, 1)


def test_layer_out_of_range_and_missing_down_proj_are_clear(tiny_llama):
    with pytest.raises(ModelError, match="source layer 9 is out of range: the model has layers 0..3"):
        check_injection_site(tiny_llama.model, 9)
    saved = tiny_llama.model.model.layers[0].mlp.down_proj
    try:
        del tiny_llama.model.model.layers[0].mlp.down_proj
        with pytest.raises(ModelError, match=r"layer 0 \(LlamaDecoderLayer\) has no `mlp.down_proj`"):
            injection_site(tiny_llama.model, 0)
    finally:
        tiny_llama.model.model.layers[0].mlp.down_proj = saved


def test_unknown_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(str(tmp_path / "no-such-model"))
    with pytest.raises(ModelError, match="folder without config.json"):
        load_model(str(tmp_path))
    with pytest.raises(ModelError, match="dtype 'fp16x'"):
        load_model(str(tmp_path), dtype="fp16x")


def test_store_key_is_hdf5_safe():
    assert store_key("Qwen/Qwen3-0.6B") == "Qwen__Qwen3-0.6B"


def test_a_model_without_model_layers_is_refused_naming_where_its_blocks_are():
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

    from steerlab.lm.site import decoder_layers

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100))
    with pytest.raises(ModelError, match=r"GPT2LMHeadModel has no `model.layers` list \(its blocks are at "
                                         r"`transformer.h`\): supported are"):
        decoder_layers(gpt2)
    neox = GPTNeoXForCausalLM(GPTNeoXConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                                            intermediate_size=64, vocab_size=100))
    with pytest.raises(ModelError, match=r"its blocks are at `gpt_neox.layers`"):
        decoder_layers(neox)


@pytest.mark.parametrize("native,requested,device,said", [
    (True, "auto", "cpu", True), (False, "auto", "cpu", False), (True, "fp32", "cpu", False),
    (True, "auto", "cuda", False)])
def test_auto_dtype_on_a_cpu_with_native_bf16_says_that_bf16_may_be_faster(
        monkeypatch, capsys, native, requested, device, said):
    monkeypatch.setattr(options, "cpu_bf16_native", lambda: native)
    options.dtype_hint(requested, device)
    assert ("DTYPE=bf16" in capsys.readouterr().err) == said
    assert resolve_dtype(requested, device) == ("bf16" if device == "cuda" else "fp32")


def test_a_gguf_file_is_parsed_once_inside_the_conversion_and_gguf_is_restored_after(tmp_path):
    """convert_gguf's shortcut: one reader per file and one tensor-name map per (arch, blocks)
    while it lasts (the conversion's output is bitwise that of transformers' own three parses:
    checked on both embedded models when it was written); gguf's own functions afterwards."""
    import gguf
    import numpy as np

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("tiny.answer", 42)
    writer.add_tensor("w", np.arange(6, dtype=np.float32).reshape(2, 3))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with gguf_parsed_once():
        first = gguf.GGUFReader(str(path))
        assert gguf.GGUFReader(str(path)) is first and first.fields["tiny.answer"].contents() == 42
        llama = gguf.MODEL_ARCH.LLAMA
        assert gguf.get_tensor_name_map(llama, 2) is gguf.get_tensor_name_map(llama, 2)
    assert gguf.GGUFReader is reader and gguf.get_tensor_name_map is name_map
    assert gguf.GGUFReader(str(path)) is not first


def test_the_site_check_runs_once_per_model_layer_and_dtype():
    """`apply` and `generate` with site="auto" resolve the site at every call: the numerical check
    (two forwards) is measured once and remembered; a module swapped in is checked again."""
    from steerlab.lm.site import resolve_site

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=3, num_attention_heads=4)).double().eval()
    forwards = []
    model.register_forward_pre_hook(lambda *_: forwards.append(1))
    assert resolve_site(model, 1, "auto") == "mlp" and len(forwards) == 2
    assert resolve_site(model, 1, "auto") == "mlp" and len(forwards) == 2  # remembered
    assert resolve_site(model, 2, "auto") == "mlp" and len(forwards) == 4  # another layer
    model.float()
    assert resolve_site(model, 1, "auto") == "mlp" and len(forwards) == 6  # another dtype
    original = model.model.layers[1].mlp
    model.model.layers[1].mlp = torch.nn.Module()
    model.model.layers[1].mlp.down_proj = original.down_proj
    model.model.layers[1].mlp.forward = lambda x: original(x) * 2.0  # gated: not the residual add
    assert resolve_site(model, 1, "auto") == "resid" and len(forwards) == 8
