"""The HDF5 store: its layout, one reader and one writer per kind of group, all-or-nothing writes.

Layout (docs/DESIGN.md, "The store"); this module alone builds these paths::

    /                                                  attrs: schema_version, created, updated
    /<model>/                                          attrs: source, n_layers, d_model, dtype
    /<model>/<behavior>/vectors/<method>/<run>/        vectors [k, d] f32, sigmas, trace, ...
    /<model>/<behavior>/evals/<split>/                 question_ids, baseline logit diffs
    /<model>/<behavior>/evals/<split>/<method>/<run>/  logit_diff [k, n_scales, n_q], scales, ...
    /<model>/<behavior>/generations/<name>/            prompts, settings, completions
    /<model>/<behavior>/norms/L<S>/                    ‖h_S‖ over train prompts: the scale unit
    /<model>/neutral/<split>/                          neutral prompts + unsteered continuations
    /<model>/matrix/<method>/                          cross-behaviour Δ (make matrix)

Everything computed from a behaviour's items lives under its name, so behaviours share a store;
what depends on the model alone (neutral text) and what spans behaviours (the matrix) does not.

A write works on a copy of the store and replaces the original with ``os.replace`` only after the
copy is complete and flushed, so an exception or a SIGKILL mid-write leaves the previous store
intact. A lock file (``flock``) keeps a second writer out.
"""
from __future__ import annotations

import ast
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from engine.errors import StoreError
from engine.files import replaced_on_success
from engine.norms import ResidualNorm

# 2: every A/B number in both answer orders (*_by_order datasets, an `orders` attribute per eval
# split and group). Splits written by schema 1 have neither and read as single-order.
# 3: vectors, evals and generations under /<model>/<behavior>/ (`migrate` moves older ones).
SCHEMA_VERSION = 3
REPO_ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = ("engine", "runners")


# ---- names and paths ----------------------------------------------------------------------------

def store_key(source: str) -> str:
    """A readable, HDF5-safe group name for a model: the folder or file name, or the HF id."""
    path = Path(source)
    if path.exists():
        name = path.stem if path.is_file() else path.absolute().name
    else:
        name = source.replace("/", "__")
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name)


def caa_run(layer: int, capture: str = "site", position: str = "letter", orders: str = "both",
            site: str = "auto", balance: str = "classes") -> str:
    """CAA's run name: ``L7``, with the ablations as suffixes (``L7-resid-last-original``), the
    answer-text position (``L7-answer``, unbalanced ``L7-answer-pooled``; orders do not apply
    there) and an injection site asked for by name (``L7-at-resid``)."""
    name = f"L{layer}"
    on_texts = position == "answer"
    for value, default in ((capture, "site"), (position, "letter")):
        if value != default:
            name += f"-{value}"
    if on_texts and balance != "classes":
        name += "-pooled"
    if not on_texts and orders != "both":
        name += f"-{orders}"
    return name if site == "auto" else f"{name}-at-{site}"


def segment_run(layer: int, target: int) -> str:
    """Run name of a method defined on the segment S..T (PI, PI@CAA, MELBO): ``L7-T20``."""
    return f"L{layer}-T{target}"


def linearised_run(layer: int, target: int, at_scale: float | None, unit: str = "abs") -> str:
    """PI@CAA's run name: ``L7-T20`` at the raw CAA vector, ``L7-T20-at+24`` at 24 · unit(CAA),
    ``L7-T20-at+0.2h`` at 0.2 ‖h_S‖ · unit(CAA) (SCALE_UNIT=resid)."""
    name = segment_run(layer, target)
    if at_scale is None:
        return name
    return f"{name}-at{at_scale:+g}" + ("h" if unit == "resid" else "")


def random_run(layer: int) -> str:
    """Run name of the random control at a source layer: ``L7``."""
    return f"L{layer}"


def _join(*parts: str | None) -> str:
    return "/".join(part for part in parts if part is not None)


def vectors_path(key: str, behavior: str, method: str | None = None, run: str | None = None) -> str:
    return _join(key, behavior, "vectors", method, run)


def evals_path(key: str, behavior: str, split: str | None = None, method: str | None = None,
               run: str | None = None) -> str:
    return _join(key, behavior, "evals", split, method, run)


def generations_path(key: str, behavior: str, name: str | None = None) -> str:
    return _join(key, behavior, "generations", name)


def norms_path(key: str, behavior: str, layer: int | None = None) -> str:
    """/<model>/<behavior>/norms/L<S>: ‖h_S‖ over the behaviour's train prompts (the scale unit)."""
    return _join(key, behavior, "norms", None if layer is None else f"L{layer}")


def behaviors_in_store(h5: h5py.File, key: str) -> list[str]:
    """The behaviours model ``key`` has results for."""
    if key not in h5:
        return []
    return sorted(name for name, node in h5[key].items()
                  if isinstance(node, h5py.Group) and any(kind in node for kind in PER_BEHAVIOR))


def matrix_path(key: str, method: str | None = None) -> str:
    """/<model>/matrix/<method>: each behaviour's chosen vector on every behaviour's test split."""
    return _join(key, "matrix", method)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def code_version(module: str) -> str:
    """Hash of the sources that compute a group: ``module`` (e.g. ``"runners.caa"``) and every
    project module it imports, transitively, found by reading import statements. A change to the
    report or the plots leaves stored vectors current; a change to anything they are computed by
    does not."""
    digest = hashlib.sha256()
    for path in sorted(_project_sources(module)):
        digest.update(path.relative_to(REPO_ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return "src-" + digest.hexdigest()[:12]


def _project_sources(module: str) -> set[Path]:
    seen: set[Path] = set()
    todo = [module]
    while todo:
        path = REPO_ROOT / (todo.pop().replace(".", "/") + ".py")
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                todo.append(node.module)
                todo += [f"{node.module}.{alias.name}" for alias in node.names]
    return {path for path in seen if path.relative_to(REPO_ROOT).parts[0] in PROJECT_PACKAGES}


def git_commit() -> str:
    """The checkout's commit, recorded for provenance ("" outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def file_checksum(path: str | Path) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def settings_json(settings: dict) -> str:
    return json.dumps(settings, sort_keys=True, default=str)


def open_for_reading(path: str | Path) -> h5py.File:
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path} does not exist: run `make caa` (or another method) first")
    if not h5py.is_hdf5(path):
        raise StoreError(f"{path} is not an HDF5 file: move it away or point STORE= elsewhere")
    h5 = h5py.File(path, "r")
    if _unmigrated(h5):
        schema = int(h5.attrs.get("schema_version", 1))
        h5.close()
        raise StoreError(f"{path} was written by schema {schema}, before each behaviour had its "
                         f"own group: `make migrate STORE={path}` moves its groups (any target "
                         "that writes the store does it too)")
    return h5


# Groups that schema 3 moved under /<model>/<behavior>/.
PER_BEHAVIOR = ("vectors", "evals", "generations")


def _unmigrated(h5: h5py.File) -> list[h5py.Group]:
    """Model groups still in the schema-1/2 layout (per-behaviour groups right under them)."""
    if int(h5.attrs.get("schema_version", 1)) >= 3:
        return []
    return [node for node in h5.values()
            if isinstance(node, h5py.Group) and any(name in node for name in PER_BEHAVIOR)]


def migrate(h5: h5py.File, dry_run: bool = False) -> list[str]:
    """Move a schema-1/2 model's vectors, evals and generations under its behaviour (with
    ``dry_run``, only say what would move). The behaviour is the one its eval splits recorded,
    else the stem of the data file its vectors were computed from, else survival-instinct (the
    only data set then)."""
    moved = []
    for model in _unmigrated(h5):
        target = f"{model.name}/{_old_behavior(model)}"
        for name in PER_BEHAVIOR:
            if name in model:
                if not dry_run:
                    h5.move(f"{model.name}/{name}", f"{target}/{name}")
                moved.append(f"{model.name}/{name} -> {target}/{name}")
    return moved


def _old_behavior(model: h5py.Group) -> str:
    for split in model.get("evals", {}).values():
        if "behavior" in split.attrs:
            return str(split.attrs["behavior"])
    for runs in model.get("vectors", {}).values():
        for node in runs.values():
            data = json.loads(node.attrs.get("settings", "{}")).get("data")
            if data:
                return Path(data).stem
    return "survival-instinct"


@contextmanager
def _lock(path: Path, wait_seconds: float) -> Iterator[None]:
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a+") as handle:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    raise StoreError(
                        f"{path} is being written by {holder}; wait for it to finish "
                        f"(waited {wait_seconds:.0f}s; STORE_WAIT=<seconds> waits longer)"
                    ) from None
                time.sleep(0.2)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {now()}")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def writing(path: str | Path, wait_seconds: float | None = None) -> Iterator[h5py.File]:
    """An h5py file to write into; the store is replaced by it only if the block completes."""
    path = Path(path)
    if wait_seconds is None:
        wait_seconds = float(os.environ.get("STORE_WAIT", "60"))
    if path.exists() and not h5py.is_hdf5(path):
        raise StoreError(f"{path} is not an HDF5 file: move it away or point STORE= elsewhere")
    with _lock(path, wait_seconds), replaced_on_success(path) as partial:
        if path.exists():
            shutil.copyfile(path, partial)
        with h5py.File(partial, "a") as h5:
            migrate(h5)
            h5.attrs["schema_version"] = SCHEMA_VERSION
            h5.attrs.setdefault("created", now())
            h5.attrs["updated"] = now()
            yield h5


def model_group(h5: h5py.File, lm) -> h5py.Group:
    group = h5.require_group(lm.key)
    group.attrs.update(source=str(lm.source), n_layers=lm.n_layers, d_model=lm.d_model,
                       dtype=lm.dtype)
    return group


def behavior_group(h5: h5py.File, lm, behavior: str) -> h5py.Group:
    return model_group(h5, lm).require_group(behavior)


def is_current(path: str | Path, group_path: str, settings: dict, version: str) -> bool:
    """True when ``group_path`` exists with the same settings and code version (skip the work)."""
    path = Path(path)
    if not path.exists() or not h5py.is_hdf5(path):
        return False
    with h5py.File(path, "r") as h5:
        if group_path not in h5:
            return False
        attrs = h5[group_path].attrs
        return (attrs.get("settings") == settings_json(settings)
                and attrs.get("code_version") == version)


def replace_group(parent: h5py.Group, name: str, datasets: dict[str, np.ndarray],
                  attrs: dict) -> h5py.Group:
    """Write ``parent/name`` afresh: the datasets, then the attributes (non-scalars as JSON)."""
    if name in parent:
        del parent[name]
    group = parent.create_group(name)
    for key, value in datasets.items():
        value = np.asarray(value)
        if value.dtype.kind == "U":
            value = value.astype(h5py.string_dtype())
        group.create_dataset(key, data=value)
    for key, value in attrs.items():
        group.attrs[key] = value if isinstance(value, (str, int, float, np.number)) else json.dumps(value)
    return group


def run_attrs(settings: dict, version: str, started: str, seconds: float, **extra) -> dict:
    """The attributes every computed group carries."""
    return {"settings": settings_json(settings), "code_version": version,
            "git_commit": git_commit(), "started": started, "seconds": round(seconds, 3), **extra}


# ---- vector groups ------------------------------------------------------------------------------

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
                      d_model: int | None = None, make: str | None = None) -> VectorGroup:
    """One vector group; when it is missing, a StoreError that names the command that makes it
    (``make``, default ``make <method>``)."""
    where = vectors_path(key, behavior, method, run)
    missing = StoreError(f"no {method} vectors at {where} in {store}: run `{make or 'make ' + method}`"
                         " (same MODEL, BEHAVIOR and STORE) first")
    if not Path(store).exists():
        raise missing
    with open_for_reading(store) as h5:
        if f"{where}/vectors" not in h5:
            raise missing
        return _vector_group(h5[where], method, run, d_model)


# ---- evals --------------------------------------------------------------------------------------

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


# ---- generations and the matrix -----------------------------------------------------------------

def write_generations(h5: h5py.File, lm, behavior: str, name: str, datasets: dict,
                      attrs: dict) -> h5py.Group:
    """/<model>/<behavior>/generations/<name>: prompts, settings (row 0 unsteered) and texts."""
    return replace_group(behavior_group(h5, lm, behavior).require_group("generations"), name,
                         datasets, attrs)


def write_matrix(h5: h5py.File, lm, method: str, datasets: dict, attrs: dict) -> h5py.Group:
    return replace_group(model_group(h5, lm).require_group("matrix"), method, datasets, attrs)


# ---- residual norms (the scale unit) ---------------------------------------------------------------

def write_norm(h5: h5py.File, lm, behavior: str, norm: ResidualNorm, attrs: dict) -> h5py.Group:
    """One ``engine.norms.ResidualNorm`` at /<model>/<behavior>/norms/L<S>."""
    return replace_group(behavior_group(h5, lm, behavior).require_group("norms"), f"L{norm.layer}",
                         {"quantiles": np.array(norm.quantiles)},
                         {**attrs, "layer": norm.layer, "median": norm.median, "mean": norm.mean,
                          "n_tokens": norm.n_tokens, "n_prompts": norm.n_prompts})


def read_norm(store: str | Path, key: str, behavior: str, layer: int) -> ResidualNorm | None:
    """The stored ``engine.norms.ResidualNorm`` of ``layer``, or None."""
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


# ---- neutral text -------------------------------------------------------------------------------

def neutral_path(key: str, split: str) -> str:
    """/<model>/neutral/<split>: neutral prompts and the unsteered model's greedy continuations."""
    return f"{key}/neutral/{split}"


def write_neutral(h5: h5py.File, lm, split: str, prompt_ids: list[str],
                  token_ids: list[tuple[int, ...]], prompt_lengths: list[int], attrs: dict) -> None:
    """Token ids, padded with -1 to a rectangle, with each sequence's length and prompt length."""
    lengths = np.array([len(t) for t in token_ids], dtype=np.int32)
    tokens = np.full((len(token_ids), int(lengths.max())), -1, dtype=np.int64)
    for row, ids in enumerate(token_ids):
        tokens[row, : len(ids)] = ids
    replace_group(model_group(h5, lm).require_group("neutral"), split, {
        "prompt_ids": np.array(prompt_ids), "token_ids": tokens, "lengths": lengths,
        "prompt_lengths": np.array(prompt_lengths, dtype=np.int32)}, attrs)


def read_neutral(store: str | Path, key: str, split: str) -> tuple[list[str], list[tuple[int, ...]], list[int]]:
    """(prompt ids, token ids of prompt + continuation, prompt lengths) as written."""
    with open_for_reading(store) as h5:
        node = h5[neutral_path(key, split)]
        lengths = node["lengths"][()]
        tokens = node["token_ids"][()]
        return (list(node["prompt_ids"][()].astype(str)),
                [tuple(int(t) for t in row[:n]) for row, n in zip(tokens, lengths)],
                [int(n) for n in node["prompt_lengths"][()]])
