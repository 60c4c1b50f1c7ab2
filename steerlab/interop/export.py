"""Steering vectors as files other tools load: ``.pt``, ``.safetensors``, a llama.cpp GGUF and
lm-evaluation-harness's ``steered`` file.

Every file holds one vector θ [d] fp32 that is added to the residual stream after decoder layer S
(the output of ``model.model.layers[S]``, docs/DESIGN.md "Where θ goes"), exactly as written: a file loaded at
strength 1 reproduces the setting it came from.

- ``.pt``: ``{S: tensor}``, the form the original experiment's files used. It has no room for
  metadata, so :func:`read_pt` returns an empty dict for it.
- ``.safetensors``: one tensor named ``direction``; the layer and the settings travel as metadata
  strings (see :func:`_metadata_strings`).
- ``.lm-eval.pt``: lm-evaluation-harness's ``steered`` model (``lm_eval --model steered
  --model_args pretrained=…,steer_path=FILE``): ``{"layers.S": {"steering_vector": θ,
  "steering_coefficient": 1.0, "action": "add", "bias": None, "head_index": None}}``. Its hook
  point is a module name under ``model.base_model`` (the decoder stack), so θ after decoder layer
  S is ``layers.S``, not ``model.layers.S``; ``add`` adds θ to that block's output at every
  position, as this project does. ``make check-lm-eval`` checks it in lm-eval itself.
- ``.gguf``: a llama.cpp control vector (``--control-vector``): architecture ``controlvector``,
  ``controlvector.model_hint``, ``controlvector.layer_count`` and one f32 tensor
  ``direction.N`` with N from :func:`gguf_direction_index`. The same metadata strings as the
  safetensors file go under ``steering.*``; llama.cpp ignores keys it does not know.

Writes are all-or-nothing: a file is written under a temporary name in its folder and moved into
place with ``os.replace`` only when complete, so a failed or killed export leaves any earlier file
as it was.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from steerlab.base.errors import UserError
from steerlab.base.files import write_atomically
from steerlab.measure.choice import VectorChoice, theta_of
from steerlab.store import store_key

GGUF_ARCH = "controlvector"
GGUF_EXTRA_PREFIX = "steering."
SAFETENSORS_NAME = "direction"
RAW_SCALE = "raw"
LM_EVAL_SUFFIX = ".lm-eval.pt"
SUFFIXES = (".pt", ".safetensors", ".gguf", LM_EVAL_SUFFIX)

Metadata = dict[str, Any]  # model, method, run, index, scale, settings


@dataclass(frozen=True, eq=False)
class ExportedVector:
    """One vector to export and where it came from.

    ``vector`` is exactly what is added (already scaled). ``scale`` is the signed L2 norm it was
    scaled to after unit normalisation (docs/DESIGN.md "Scales"), or None when the stored vector is
    written unchanged (``raw``); given a scale, ‖vector‖ must equal |scale|.
    """

    vector: np.ndarray  # [d] fp32
    source_layer: int
    model: str
    method: str
    run: str
    index: int
    scale: float | None = None
    settings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        vector = np.asarray(self.vector)
        if vector.ndim != 1 or vector.size == 0:
            raise UserError(f"a steering vector must be 1-D and non-empty, got shape {vector.shape}")
        if not np.issubdtype(vector.dtype, np.floating):
            raise UserError(f"a steering vector must hold floats, got dtype {vector.dtype}")
        # fp64 input that overflows fp32 becomes inf here, so the finiteness check comes after.
        with np.errstate(over="ignore"):
            vector = np.ascontiguousarray(vector, dtype=np.float32)
        if not np.isfinite(vector).all():
            raise UserError("the steering vector has NaN or infinite entries; nothing was written")
        vector.flags.writeable = False
        object.__setattr__(self, "vector", vector)
        object.__setattr__(self, "source_layer", _non_negative_int(self.source_layer, "source layer"))
        object.__setattr__(self, "index", _non_negative_int(self.index, "vector index"))
        if self.scale is not None:
            scale = float(self.scale)
            if not math.isfinite(scale):
                raise UserError(f"scale must be finite or None (raw), got {self.scale!r}")
            norm = float(np.linalg.norm(vector.astype(np.float64)))
            if not math.isclose(norm, abs(scale), rel_tol=1e-4, abs_tol=1e-6):
                raise UserError(
                    f"the vector's norm is {norm:.6g} but scale is {scale:g}: pass the scaled vector "
                    "(what is added), or scale=None for the raw one"
                )
            object.__setattr__(self, "scale", scale)
        try:
            json.dumps(self.settings, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise UserError(f"settings must be plain JSON (str, numbers, lists, dicts): {err}") from err

    @property
    def metadata(self) -> Metadata:
        return {"model": self.model, "method": self.method, "run": self.run, "index": self.index,
                "scale": self.scale, "settings": self.settings}


def _non_negative_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise UserError(f"the {what} must be an integer >= 0, got {value!r}")
    return int(value)


def gguf_direction_index(source_layer: int) -> int:
    """N in ``direction.N`` for a vector added after ``model.model.layers[source_layer]``: N = S.

    Evidence, from llama.cpp's source (ggml-org/llama.cpp; read in the copy vendored by
    llama-cpp-python 0.3.36):

    - ``common/common.cpp``, ``common_control_vector_load_one``: parses N from ``direction.N``,
      rejects N < 0 and N == 0 ("invalid (zero) direction tensor layer index"), and adds the
      tensor into a flat buffer at offset ``n_embd * (N - 1)`` ("layer 1 at [0]").
    - ``src/llama-adapter.cpp``, ``llama_adapter_cvec::apply``: for il = 1 .. n_layer-1 fills
      ``tensors[il]`` from offset ``n_embd * (il - 1)``; ``tensors[0]`` is always null ("there's
      never a tensor for layer 0"). The two ``- 1`` cancel: ``direction.N`` lands in
      ``tensors[N]``. ``include/llama.h`` says the same of ``llama_set_adapter_cvec``: the buffer
      is "n_embd x n_layers ... starting from layer 1".
    - ``tensor_for(il)`` returns ``tensors[il]`` and ``apply_to(ctx, cur, il)`` adds it to
      ``cur``; the model graphs (``src/models/llama.cpp``, ``qwen2.cpp``, ``qwen3.cpp``) call
      ``cur = build_cvec(cur, il)`` (``build_cvec`` = ``cvec->apply_to``) inside
      ``for (il = 0; il < n_layer; ++il)`` right after the FFN residual add and before naming the
      tensor ``l_out`` and passing it to the next layer. So slot il is added to the output of
      0-indexed block il, which is HF's ``model.model.layers[il]`` output.
    - repeng (vgel/repeng ``extract.py`` ``export_gguf``) writes ``direction.{layer}`` for a
      vector its ``ControlModel`` adds to the output of ``model.model.layers[layer]``: the same
      convention.

    Layer 0 has no slot in llama.cpp, so S = 0 cannot be exported to GGUF.
    """
    layer = _non_negative_int(source_layer, "source layer")
    if layer == 0:
        raise UserError(
            "llama.cpp control vectors cannot steer after layer 0 (direction.0 is rejected by its "
            "loader); export a vector from layer 1 or later, or use the .pt/.safetensors files"
        )
    return layer


# ---- metadata as strings (safetensors metadata, GGUF steering.* keys) ---------------------------

def _metadata_strings(exported: ExportedVector) -> dict[str, str]:
    scale = RAW_SCALE if exported.scale is None else repr(exported.scale)  # repr round-trips a float
    return {"model": exported.model, "layer": str(exported.source_layer), "method": exported.method,
            "run": exported.run, "index": str(exported.index), "scale": scale,
            "settings": json.dumps(exported.settings, sort_keys=True, allow_nan=False)}


def _parse_metadata(strings: dict[str, str], where: Path) -> tuple[int, Metadata]:
    try:
        scale = strings["scale"]
        return int(strings["layer"]), {
            "model": strings["model"], "method": strings["method"], "run": strings["run"],
            "index": int(strings["index"]),
            "scale": None if scale == RAW_SCALE else float(scale),
            "settings": json.loads(strings["settings"]),
        }
    except (KeyError, ValueError) as err:
        raise UserError(f"{where} lacks this project's export metadata ({err})") from err


# ---- writers ------------------------------------------------------------------------------------

def write_pt(path: str | Path, exported: ExportedVector) -> Path:
    tensor = torch.tensor(exported.vector, dtype=torch.float32)
    return write_atomically(path, lambda tmp: torch.save({exported.source_layer: tensor}, tmp))


def lm_eval_hook_point(source_layer: int) -> str:
    """lm-eval's name for the output of decoder layer S: a module name under
    ``model.base_model`` (hf_steered resolves hook points there)."""
    return f"layers.{_non_negative_int(source_layer, 'source layer')}"


def write_lm_eval(path: str | Path, exported: ExportedVector) -> Path:
    """The ``steered`` model's file: θ added, as written, at ``layers.S`` (strength 1)."""
    config = {lm_eval_hook_point(exported.source_layer): {
        "steering_vector": torch.tensor(exported.vector, dtype=torch.float32),
        "steering_coefficient": 1.0, "action": "add", "bias": None, "head_index": None}}
    return write_atomically(path, lambda tmp: torch.save(config, tmp))


def write_safetensors(path: str | Path, exported: ExportedVector) -> Path:
    tensors = {SAFETENSORS_NAME: torch.tensor(exported.vector, dtype=torch.float32)}
    metadata = _metadata_strings(exported)
    return write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def write_gguf(path: str | Path, exported: ExportedVector) -> Path:
    index = gguf_direction_index(exported.source_layer)

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(tmp, GGUF_ARCH)  # also writes general.architecture
        try:
            writer.add_string(f"{GGUF_ARCH}.model_hint", exported.model)
            # Both llama.cpp's cvector-generator and repeng count the direction tensors in the file.
            writer.add_uint32(f"{GGUF_ARCH}.layer_count", 1)
            for key, value in _metadata_strings(exported).items():
                writer.add_string(GGUF_EXTRA_PREFIX + key, value)
            writer.add_tensor(f"direction.{index}", np.array(exported.vector, dtype=np.float32))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()

    return write_atomically(path, write)


def exported_choice(store: str | Path, model: str, behavior: str, choice: VectorChoice) -> ExportedVector:
    """What ``choice`` (a stored vector at a scale, or raw) adds, ready to write: θ, its layer and
    where it came from (the group's settings, the eval scale)."""
    theta, group = theta_of(store, store_key(model), behavior, choice)
    return ExportedVector(theta, group.source_layer, model, choice.method, choice.run, choice.index,
                          None if choice.raw else choice.scale,
                          {**group.settings, "eval_scale": choice.scale, "raw": choice.raw})


def write_all(folder: str | Path, stem: str, exported: ExportedVector) -> list[Path]:
    """``<stem>.pt``, ``<stem>.safetensors``, ``<stem>.gguf`` and ``<stem>.lm-eval.pt`` in ``folder``."""
    gguf_direction_index(exported.source_layer)  # refuse before writing anything
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    writers = (write_pt, write_safetensors, write_gguf, write_lm_eval)
    return [write(folder / f"{stem}{suffix}", exported) for write, suffix in zip(writers, SUFFIXES)]


# ---- readers (for checks and round trips) -------------------------------------------------------

def read_pt(path: str | Path) -> tuple[int, np.ndarray, Metadata]:
    path = Path(path)
    content = torch.load(path, map_location="cpu", weights_only=True)
    if not (isinstance(content, dict) and len(content) == 1):
        raise UserError(f"{path} is not a {{layer: vector}} file")
    (layer, tensor), = content.items()
    if not isinstance(layer, int) or not isinstance(tensor, torch.Tensor) or tensor.ndim != 1:
        raise UserError(f"{path} is not a {{layer: vector}} file")
    return layer, tensor.to(torch.float32).numpy(), {}


def read_lm_eval(path: str | Path) -> tuple[int, np.ndarray, Metadata]:
    """The layer and θ of a ``steered`` file with one ``add`` hook point ``layers.S``, the
    coefficient applied (no metadata: the format has no room for it)."""
    path = Path(path)
    content = torch.load(path, map_location="cpu", weights_only=True)
    wrong = UserError(f"{path} is not an lm-eval steered file with one 'layers.S' add entry")
    if not (isinstance(content, dict) and len(content) == 1):
        raise wrong
    (point, entry), = content.items()
    prefix, _, layer = str(point).partition(".")
    if (prefix != "layers" or not layer.isdigit() or not isinstance(entry, dict)
            or entry.get("action") != "add"):
        raise wrong
    vector = entry["steering_vector"].to(torch.float32) * float(entry.get("steering_coefficient", 1.0))
    return int(layer), vector.numpy(), {}


def read_safetensors(path: str | Path) -> tuple[int, np.ndarray, Metadata]:
    path = Path(path)
    with safe_open(path, framework="pt") as handle:
        if list(handle.keys()) != [SAFETENSORS_NAME]:
            raise UserError(f"{path} should hold one tensor named {SAFETENSORS_NAME!r}")
        vector = handle.get_tensor(SAFETENSORS_NAME).numpy()
        layer, metadata = _parse_metadata(handle.metadata() or {}, path)
    return layer, vector, metadata


def read_gguf(path: str | Path) -> tuple[int, np.ndarray, Metadata]:
    path = Path(path)
    reader = gguf.GGUFReader(path)
    arch = reader.get_field("general.architecture")
    if arch is None or arch.contents() != GGUF_ARCH:
        raise UserError(f"{path} is not a llama.cpp control vector (architecture {GGUF_ARCH!r})")
    strings = {key[len(GGUF_EXTRA_PREFIX):]: str(value.contents())
               for key, value in reader.fields.items() if key.startswith(GGUF_EXTRA_PREFIX)}
    layer, metadata = _parse_metadata(strings, path)
    name = f"direction.{gguf_direction_index(layer)}"
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    if list(tensors) != [name] or tensors[name].tensor_type != gguf.GGMLQuantizationType.F32:
        raise UserError(f"{path} should hold one f32 tensor {name!r}, found {list(tensors)}")
    # The reader memory-maps the file; copy so the array outlives it.
    return layer, np.array(tensors[name].data, dtype=np.float32), metadata
