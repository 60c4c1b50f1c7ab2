import gguf
import numpy as np
import pytest
import torch

from steerlab.base.errors import UserError
from steerlab.interop import export
from steerlab.interop.export import (
    ExportedVector,
    gguf_direction_index,
    lm_eval_hook_point,
    read_gguf,
    read_lm_eval,
    read_pt,
    read_safetensors,
    write_all,
    write_gguf,
    write_lm_eval,
    write_pt,
    write_safetensors,
)

D = 24
LAYER = 7
SETTINGS = {"layers": [7], "target": 20, "lr": 0.1, "raw": False, "note": "ünïcode"}


def _vector(scale=None, seed=0):
    v = np.random.default_rng(seed).standard_normal(D)
    if scale is not None:
        v = v / np.linalg.norm(v) * abs(scale)
    return v.astype(np.float32)


def _exported(scale=-8.0, layer=LAYER, **overrides):
    fields = dict(vector=_vector(scale), source_layer=layer, model="HuggingFaceTB/SmolLM2-135M-Instruct",
                  method="pi_caa", run="L7-T20", index=3, scale=scale, settings=SETTINGS)
    fields.update(overrides)
    return ExportedVector(**fields)


def _assert_same(read_back, exported, with_metadata=True):
    layer, vector, metadata = read_back
    assert layer == exported.source_layer
    assert vector.dtype == np.float32 and vector.shape == (D,)
    assert vector.tobytes() == exported.vector.tobytes()
    assert metadata == (exported.metadata if with_metadata else {})


def test_pt_file_is_a_layer_to_fp32_tensor_dict_and_round_trips(tmp_path):
    exported = _exported()
    path = write_pt(tmp_path / "v.pt", exported)
    content = torch.load(path, weights_only=True)
    assert list(content) == [LAYER]
    assert content[LAYER].dtype == torch.float32 and content[LAYER].shape == (D,)
    _assert_same(read_pt(path), exported, with_metadata=False)


@pytest.mark.parametrize("scale", [-8.0, 0.1, None], ids=["negative", "fraction", "raw"])
def test_safetensors_round_trips_vector_layer_and_metadata(tmp_path, scale):
    exported = _exported(scale=scale)
    _assert_same(read_safetensors(write_safetensors(tmp_path / "v.safetensors", exported)), exported)


@pytest.mark.parametrize("scale", [-8.0, 0.1, None], ids=["negative", "fraction", "raw"])
def test_gguf_round_trips_vector_layer_and_metadata(tmp_path, scale):
    exported = _exported(scale=scale)
    _assert_same(read_gguf(write_gguf(tmp_path / "v.gguf", exported)), exported)


def test_fp64_input_is_written_as_its_fp32_rounding(tmp_path):
    v64 = np.random.default_rng(1).standard_normal(D)
    exported = _exported(vector=v64, scale=None)
    for write, read, suffix in [(write_pt, read_pt, ".pt"), (write_safetensors, read_safetensors, ".st"),
                                (write_gguf, read_gguf, ".gguf")]:
        _, vector, _ = read(write(tmp_path / f"v{suffix}", exported))
        assert vector.tobytes() == v64.astype(np.float32).tobytes()


def test_gguf_has_the_keys_and_tensor_llama_cpp_control_vectors_carry(tmp_path):
    exported = _exported()
    reader = gguf.GGUFReader(write_gguf(tmp_path / "v.gguf", exported))
    fields = reader.fields
    assert fields["general.architecture"].contents() == "controlvector"
    assert fields["controlvector.model_hint"].contents() == exported.model
    assert fields["controlvector.layer_count"].types == [gguf.GGUFValueType.UINT32]
    assert fields["controlvector.layer_count"].contents() == 1
    [tensor] = reader.tensors
    assert tensor.name == f"direction.{LAYER}"
    assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
    assert list(tensor.shape) == [D] and tensor.n_elements == D
    assert np.array_equal(tensor.data, exported.vector)


def _llama_cpp_slots(path, n_layer):
    """llama.cpp's slot per layer: common_control_vector_load_one puts direction.N at offset
    n_embd*(N-1) of a flat buffer, llama_adapter_cvec::apply fills slot il (il >= 1) from offset
    n_embd*(il-1), and the graph adds slot il to the output of block il."""
    reader = gguf.GGUFReader(path)
    flat = np.zeros(D * (n_layer - 1), dtype=np.float32)
    for tensor in reader.tensors:
        n = int(tensor.name.split(".")[1])
        assert n >= 1
        flat[D * (n - 1):D * n] += tensor.data
    return {il: flat[D * (il - 1):D * il] for il in range(1, n_layer)}


@pytest.mark.parametrize("layer", [1, LAYER, 11])
def test_llama_cpp_adds_the_gguf_direction_after_the_block_it_was_exported_from(tmp_path, layer):
    exported = _exported(layer=layer)
    slots = _llama_cpp_slots(write_gguf(tmp_path / "v.gguf", exported), n_layer=12)
    assert np.array_equal(slots[layer], exported.vector)
    assert all(not slot.any() for il, slot in slots.items() if il != layer)


def test_layer_zero_has_no_gguf_slot_and_write_all_then_writes_nothing(tmp_path):
    with pytest.raises(UserError, match="layer 0"):
        gguf_direction_index(0)
    with pytest.raises(UserError, match="layer 0"):
        write_all(tmp_path / "out", "v", _exported(layer=0))
    assert not (tmp_path / "out").exists()


def test_write_all_writes_the_four_formats_with_the_same_vector(tmp_path):
    exported = _exported()
    paths = write_all(tmp_path / "out", "pi_caa-L7-T20-3", exported)
    assert [p.name for p in paths] == [f"pi_caa-L7-T20-3{s}"
                                       for s in (".pt", ".safetensors", ".gguf", ".lm-eval.pt")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)
    for read, path in zip((read_pt, read_safetensors, read_gguf, read_lm_eval), paths):
        _assert_same(read(path), exported, with_metadata=read in (read_safetensors, read_gguf))


def test_the_lm_eval_file_is_what_its_steered_model_reads(tmp_path):
    exported = _exported()
    content = torch.load(write_lm_eval(tmp_path / "v.lm-eval.pt", exported), weights_only=True)
    assert list(content) == [f"layers.{LAYER}"]
    entry = content[f"layers.{LAYER}"]
    assert entry["action"] == "add" and entry["steering_coefficient"] == 1.0
    assert entry["bias"] is None and entry["head_index"] is None
    assert entry["steering_vector"].dtype == torch.float32
    assert entry["steering_vector"].numpy().tobytes() == exported.vector.tobytes()


def test_the_lm_eval_hook_point_adds_theta_where_this_project_does(tiny_llama):
    """hf_steered hooks the module named by the file's key among ``model.base_model``'s modules
    and adds the vector to its output; that must be the project's θ after layer S."""
    from steerlab.lm.vector import SteeringVector

    model, layer = tiny_llama.model, 2
    theta = torch.from_numpy(np.random.default_rng(0).standard_normal(tiny_llama.d_model)).to(torch.float64)
    modules = dict(model.base_model.named_modules())
    assert f"model.{lm_eval_hook_point(layer)}" not in modules  # the name lm-eval cannot resolve
    hooked = modules[lm_eval_hook_point(layer)]

    def add(module, args, output):
        return (output[0] + theta, *output[1:]) if isinstance(output, tuple) else output + theta

    ids = torch.tensor([[5, 17, 42, 7, 99, 3]])
    with torch.no_grad():
        handle = hooked.register_forward_hook(add)
        try:
            theirs = model(ids).logits
        finally:
            handle.remove()
        with SteeringVector(theta, layer, "resid").apply(model):
            ours = model(ids).logits
        plain = model(ids).logits
    assert (theirs - plain).abs().max() > 1e-3
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-12)


@pytest.mark.parametrize("overrides, message", [
    (dict(vector=np.array([1.0, np.nan, 0.0]), scale=None), "NaN or infinite"),
    (dict(vector=np.array([1.0, np.inf, 0.0]), scale=None), "NaN or infinite"),
    (dict(vector=np.array([1e39, 0.0]), scale=None), "NaN or infinite"),  # overflows fp32
    (dict(vector=np.ones((2, D), dtype=np.float32), scale=None), "1-D"),
    (dict(vector=np.zeros(0, dtype=np.float32), scale=None), "1-D"),
    (dict(vector=np.arange(4), scale=None), "floats"),
    (dict(layer=-1), "source layer"),
    (dict(layer=True), "source layer"),
    (dict(index=-2), "vector index"),
    (dict(scale=5.0, vector=_vector(8.0)), "norm"),
    (dict(scale=float("inf")), "finite"),
    (dict(settings={"x": object()}), "JSON"),
    (dict(settings={"x": float("nan")}), "JSON"),
], ids=["nan", "inf", "fp32-overflow", "2-D", "empty", "ints", "negative-layer", "bool-layer",
        "negative-index", "scale-not-norm", "infinite-scale", "settings-object", "settings-nan"])
def test_bad_input_is_refused_with_a_user_error(overrides, message):
    if "layer" in overrides:
        overrides["source_layer"] = overrides.pop("layer")
    with pytest.raises(UserError, match=message):
        _exported(**overrides)


def _fail_midway(*args, **kwargs):
    raise OSError("disk full")


def _scribble_then_fail(obj, path, *args, **kwargs):
    with open(path, "wb") as handle:
        handle.write(b"half a file")
    raise OSError("disk full")


@pytest.mark.parametrize("fmt", ["pt", "safetensors", "gguf", "lm-eval.pt"])
def test_a_failing_write_leaves_the_existing_file_intact(tmp_path, monkeypatch, fmt):
    write, read = {"pt": (write_pt, read_pt), "safetensors": (write_safetensors, read_safetensors),
                   "gguf": (write_gguf, read_gguf), "lm-eval.pt": (write_lm_eval, read_lm_eval)}[fmt]
    path = tmp_path / f"v.{fmt}"
    first = _exported(scale=None, vector=_vector(seed=1))
    write(path, first)
    before = path.read_bytes()
    if fmt in ("pt", "lm-eval.pt"):
        monkeypatch.setattr(torch, "save", _scribble_then_fail)
    elif fmt == "safetensors":
        monkeypatch.setattr(export, "save_file", _scribble_then_fail)
    else:  # header and key-values are already on disk when the tensor data fails
        monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", _fail_midway)
    with pytest.raises(OSError, match="disk full"):
        write(path, _exported(scale=None, vector=_vector(seed=2)))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    _assert_same(read(path), first, with_metadata=fmt in ("safetensors", "gguf"))
