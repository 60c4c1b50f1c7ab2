"""One writer and one reader per kind of group: vectors, eval splits, generations, the matrix,
residual norms and neutral text."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from steerlab.base.errors import StoreError
from steerlab.store.io import open_for_reading, replace_group, writing
from steerlab.store.layout import (
    dose_path,
    evals_path,
    fisher_path,
    gradients_path,
    neutral_path,
    norms_path,
    prompting_path,
    transfer_path,
    vectors_path,
)
from steerlab.store.provenance import settings_json

QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)  # of a residual norm, stored with it


@dataclass(frozen=True)
class ResidualNorm:
    """‖h_S‖ over the real tokens of some prompts at one source layer."""
    layer: int
    median: float  # the scale unit
    mean: float
    quantiles: tuple[float, ...]  # at QUANTILES
    n_tokens: int
    n_prompts: int


def model_group(h5: h5py.File, lm) -> h5py.Group:
    group = h5.require_group(lm.key)
    group.attrs.update(source=str(lm.source), n_layers=lm.n_layers, d_model=lm.d_model,
                       dtype=lm.dtype)
    return group


def behavior_group(h5: h5py.File, lm, behavior: str) -> h5py.Group:
    return model_group(h5, lm).require_group(behavior)


@dataclass
class VectorGroup:
    """One stored group of steering vectors: /<model>/vectors/<method>/<run>."""
    method: str
    run: str
    vectors: np.ndarray  # [k, d] f32, one row per vector (PI: sorted by σ)
    source_layer: int
    sign_free: bool  # no preferred sign: evaluated at negative and positive scales
    settings: dict = field(default_factory=dict)
    target_layer: int | None = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # sigmas, trace, item ids, ...
    attrs: dict = field(default_factory=dict)  # provenance and what the method reports

    @property
    def label(self) -> str:
        return f"{self.method}/{self.run}"

    @property
    def fingerprint(self) -> str:
        """Changes whenever the vectors may have: what an eval of them depends on."""
        return str(self.attrs.get("code_version", "")) + settings_json(self.settings)


def write_vector_group(h5: h5py.File, lm, behavior: str, group: VectorGroup) -> h5py.Group:
    """Write ``group`` (settings, provenance and all) under the behaviour's node, replacing any
    old one."""
    parent = behavior_group(h5, lm, behavior).require_group(f"vectors/{group.method}")
    attrs = {**group.attrs, "source_layer": group.source_layer, "sign_free": int(group.sign_free),
             "settings": settings_json(group.settings)}
    if group.target_layer is not None:
        attrs["target_layer"] = group.target_layer
    datasets = {"vectors": np.asarray(group.vectors, dtype=np.float32), **group.arrays}
    return replace_group(parent, group.run, datasets, attrs)


def _vector_group(node: h5py.Group, method: str, run: str, d_model: int | None) -> VectorGroup:
    where = node.name.lstrip("/")
    vectors = node["vectors"][()].astype(np.float32)
    if d_model is not None and (vectors.ndim != 2 or vectors.shape[1] != d_model):
        raise StoreError(f"{where}: vectors have shape {vectors.shape}, but the model's width is "
                         f"{d_model}; was it computed for another model?")
    if not np.isfinite(vectors).all():
        raise StoreError(f"{where}: vectors contain NaN or inf; recompute with FORCE=1")
    attrs = {key: node.attrs[key] for key in node.attrs}
    settings = json.loads(attrs.pop("settings", "{}"))
    target = attrs.pop("target_layer", None)
    return VectorGroup(method, run, vectors, int(attrs.pop("source_layer")),
                       bool(attrs.pop("sign_free", 0)), settings,
                       None if target is None else int(target),
                       {name: node[name][()] for name in node if name != "vectors"}, attrs)


def read_vector_groups(store: str | Path, key: str, behavior: str, d_model: int | None = None,
                       method: str | None = None) -> list[VectorGroup]:
    """Every vector group of model ``key`` for ``behavior`` (of one method, if given); with
    ``d_model``, each is checked to have that width. A missing store or model has none."""
    if not Path(store).exists():
        return []
    with open_for_reading(store) as h5:  # refuses a file that is not HDF5, before any work
        root = vectors_path(key, behavior, method)
        if root not in h5:
            return []
        methods = [(method, h5[root])] if method else list(h5[root].items())
        return [_vector_group(node, name, run, d_model)
                for name, runs in methods for run, node in runs.items()]


def read_vector_group(store: str | Path, key: str, behavior: str, method: str, run: str,
                      d_model: int | None = None, make: str | None = None,
                      same_as: dict | None = None) -> VectorGroup:
    """One vector group; when it is missing, or was computed with settings other than ``same_as``
    (name: value, for the names that must agree), a StoreError that names the command that makes
    it (``make``, default ``make <method>``)."""
    where = vectors_path(key, behavior, method, run)
    make = make or f"make {method}"
    missing = StoreError(f"no {method} vectors at {where} in {store}: run `{make}`"
                         " (same MODEL, BEHAVIOR and STORE) first")
    if not Path(store).exists():
        raise missing
    with open_for_reading(store) as h5:
        if f"{where}/vectors" not in h5:
            raise missing
        group = _vector_group(h5[where], method, run, d_model)
    differ = [name for name, value in (same_as or {}).items() if group.settings.get(name) != value]
    if differ:
        raise StoreError(f"{where} in {store} was computed with another {', '.join(differ)}: run `{make}` "
                         "with the same settings first")
    return group


def write_eval_split(h5: h5py.File, lm, behavior: str, split: str, datasets: dict,
                     attrs: dict) -> h5py.Group:
    """/<model>/<behavior>/evals/<split>: question ids and the baseline, replacing the split's
    groups too."""
    return replace_group(behavior_group(h5, lm, behavior).require_group("evals"), split, datasets, attrs)


def write_eval_group(h5: h5py.File, lm, behavior: str, split: str, method: str, run: str,
                     datasets: dict, attrs: dict) -> h5py.Group:
    """/<model>/<behavior>/evals/<split>/<method>/<run>: one group's scores on the split."""
    return replace_group(h5.require_group(evals_path(lm.key, behavior, split, method)), run,
                         datasets, attrs)


def write_eval_results(store: str | Path, lm, behavior: str, split: str, split_data: tuple[dict, dict],
                       groups: list[tuple[str, str, dict, dict]], *, replace_split: bool) -> None:
    """One eval's results in one atomic update of ``store``: the split's question ids and baseline
    (``split_data``: datasets and attributes; written when ``replace_split`` or the split is not
    stored yet) and each scored group, (method, run, datasets, attributes)."""
    with writing(store) as h5:
        if replace_split or evals_path(lm.key, behavior, split) not in h5:
            write_eval_split(h5, lm, behavior, split, *split_data)
        for method, run, datasets, attrs in groups:
            write_eval_group(h5, lm, behavior, split, method, run, datasets, attrs)


def generations_datasets(prompts: list[tuple[str, str, str]], rows: list[dict], thetas: np.ndarray,
                         texts: list[list[str]], new_tokens: list[list[int]], seconds: list[float]) -> dict:
    """The datasets of a generations group: ``prompts`` as (prompt set, id, text), one ``rows``
    record (method, run, index, scale, source_layer) and θ row [d] per setting (zeros unsteered),
    and per setting its completions, their new-token counts and its seconds."""
    return {
        "prompt_ids": np.array([prompt_id for _, prompt_id, _ in prompts]),
        "prompts": np.array([text for _, _, text in prompts]),
        "prompt_sets": np.array([kind for kind, _, _ in prompts]),
        "method": np.array([r["method"] for r in rows]),
        "run": np.array([r["run"] for r in rows]),
        "vector_index": np.array([r["index"] for r in rows], dtype=np.int64),
        "scale": np.array([r["scale"] for r in rows], dtype=np.float32),
        "source_layer": np.array([r["source_layer"] for r in rows], dtype=np.int64),
        "thetas": np.asarray(thetas, dtype=np.float32),
        "texts": np.array(texts),  # [n_settings, n_prompts]
        "new_tokens": np.array(new_tokens, dtype=np.int64),
        "seconds": np.array(seconds, dtype=np.float32),
    }


def write_generations(h5: h5py.File, lm, behavior: str, name: str, datasets: dict,
                      attrs: dict) -> h5py.Group:
    """/<model>/<behavior>/generations/<name>: prompts, settings (row 0 unsteered) and texts."""
    return replace_group(behavior_group(h5, lm, behavior).require_group("generations"), name,
                         datasets, attrs)


def write_prompting(h5: h5py.File, lm, behavior: str, split: str, datasets: dict, attrs: dict) -> h5py.Group:
    """/<model>/<behavior>/prompting/<split>: the prompting baseline's scores and KL, replacing the
    split's old ones."""
    behavior_group(h5, lm, behavior)
    parent, _, name = prompting_path(lm.key, behavior, split).rpartition("/")
    return replace_group(h5.require_group(parent), name, datasets, attrs)


def write_matrix(h5: h5py.File, lm, method: str, datasets: dict, attrs: dict) -> h5py.Group:
    return replace_group(model_group(h5, lm).require_group("matrix"), method, datasets, attrs)


def write_norm(h5: h5py.File, lm, behavior: str, norm: ResidualNorm, attrs: dict) -> h5py.Group:
    """One ``ResidualNorm`` (``steerlab.measure.scales.residual_norm``) at /<model>/<behavior>/norms/L<S>."""
    return replace_group(behavior_group(h5, lm, behavior).require_group("norms"), f"L{norm.layer}",
                         {"quantiles": np.array(norm.quantiles)},
                         {**attrs, "layer": norm.layer, "median": norm.median, "mean": norm.mean,
                          "n_tokens": norm.n_tokens, "n_prompts": norm.n_prompts})


def read_norm(store: str | Path, key: str, behavior: str, layer: int) -> ResidualNorm | None:
    """The stored ``ResidualNorm`` of ``layer``, or None."""
    if not Path(store).exists():
        return None
    with open_for_reading(store) as h5:
        where = norms_path(key, behavior, layer)
        if where not in h5:
            return None
        node = h5[where]
        return ResidualNorm(int(node.attrs["layer"]), float(node.attrs["median"]), float(node.attrs["mean"]),
                            tuple(float(q) for q in node["quantiles"][()]), int(node.attrs["n_tokens"]),
                            int(node.attrs["n_prompts"]))


def write_neutral(h5: h5py.File, lm, split: str, prompt_ids: list[str],
                  *, token_ids: list[tuple[int, ...]], prompt_lengths: list[int], attrs: dict) -> None:
    """Token ids, padded with -1 to a rectangle, with each sequence's length and prompt length."""
    lengths = np.array([len(t) for t in token_ids], dtype=np.int32)
    tokens = np.full((len(token_ids), int(lengths.max())), -1, dtype=np.int64)
    for row, ids in enumerate(token_ids):
        tokens[row, : len(ids)] = ids
    replace_group(model_group(h5, lm).require_group("neutral"), split, {
        "prompt_ids": np.array(prompt_ids), "token_ids": tokens, "lengths": lengths,
        "prompt_lengths": np.array(prompt_lengths, dtype=np.int32)}, attrs)


def read_neutral(store: str | Path, key: str,
                 split: str) -> tuple[list[str], list[tuple[int, ...]], list[int]]:
    """(prompt ids, token ids of prompt + continuation, prompt lengths) as written."""
    with open_for_reading(store) as h5:
        node = h5[neutral_path(key, split)]
        lengths = node["lengths"][()]
        tokens = node["token_ids"][()]
        return (list(node["prompt_ids"][()].astype(str)),
                [tuple(int(t) for t in row[:n]) for row, n in zip(tokens, lengths)],
                [int(n) for n in node["prompt_lengths"][()]])


def write_fisher(h5: h5py.File, lm, layer: int, datasets: dict, attrs: dict) -> h5py.Group:
    """/<model>/fisher/L<S>: values [k], vectors [k, d], residual (the level of the rest)."""
    model_group(h5, lm)
    parent, _, name = fisher_path(lm.key, layer).rpartition("/")
    return replace_group(h5.require_group(parent), name, datasets, attrs)


def read_fisher(store: str | Path, key: str, layer: int) -> dict[str, np.ndarray] | None:
    """The stored Fisher approximation at ``layer`` as arrays (values, vectors, residual), or None."""
    if not Path(store).is_file():
        return None
    with open_for_reading(store) as h5:
        path = fisher_path(key, layer)
        if path not in h5:
            return None
        return {name: h5[path][name][()] for name in h5[path]}


def write_gradients(h5: h5py.File, lm, behavior: str, split: str, layer: int, datasets: dict,
                    attrs: dict) -> h5py.Group:
    """/<model>/<behavior>/gradients/<split>/L<S>: question_ids, letter and cloze [n_q, d], polarity."""
    parent, _, name = gradients_path(lm.key, behavior, split, layer).rpartition("/")
    behavior_group(h5, lm, behavior)
    return replace_group(h5.require_group(parent), name, datasets, attrs)


def read_gradients(store: str | Path, key: str, behavior: str, split: str, layer: int
                   ) -> dict[str, np.ndarray] | None:
    """The stored gradients of ``split``'s questions at ``layer`` as arrays, or None."""
    if not Path(store).is_file():
        return None
    with open_for_reading(store) as h5:
        path = gradients_path(key, behavior, split, layer)
        if path not in h5:
            return None
        return {name: _values(dataset) for name, dataset in h5[path].items()}


def write_dose(h5: h5py.File, lm, behavior: str, split: str, datasets: dict, attrs: dict) -> h5py.Group:
    """/<model>/<behavior>/dose/<split>: directions, costs and every measurement of the ladder."""
    parent, _, name = dose_path(lm.key, behavior, split).rpartition("/")
    behavior_group(h5, lm, behavior)
    return replace_group(h5.require_group(parent), name, datasets, attrs)


def read_dose(store: str | Path, key: str, behavior: str, split: str) -> tuple[dict, dict] | None:
    """The stored ladder's datasets (strings as str) and attributes, or None."""
    if not Path(store).is_file():
        return None
    with open_for_reading(store) as h5:
        path = dose_path(key, behavior, split)
        if path not in h5:
            return None
        node = h5[path]
        return {name: _values(dataset) for name, dataset in node.items()}, dict(node.attrs)


def write_transfer(h5: h5py.File, lm, behavior: str, other: str, datasets: dict, attrs: dict) -> h5py.Group:
    """/<model>/<behavior>/transfer/<other>: the settings' scores on another behaviour's questions."""
    behavior_group(h5, lm, behavior)
    return replace_group(h5.require_group(transfer_path(lm.key, behavior)), other, datasets, attrs)


def read_transfers(store: str | Path, key: str, behavior: str) -> dict[str, dict[str, np.ndarray]]:
    """Every stored transfer of ``behavior``'s choices, by the behaviour asked (strings as str)."""
    if not Path(store).is_file():
        return {}
    with open_for_reading(store) as h5:
        path = transfer_path(key, behavior)
        if path not in h5:
            return {}
        return {other: {name: _values(dataset) for name, dataset in node.items()}
                for other, node in h5[path].items()}


def _values(dataset: h5py.Dataset) -> np.ndarray:
    """A dataset's values, strings (stored as UTF-8) as str."""
    if dataset.dtype.kind in "OS":
        return np.array(dataset.asstr()[()], dtype=str)
    return dataset[()]
