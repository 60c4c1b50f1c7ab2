"""The store's layout: every group's path and every run's name, built here and nowhere else
(docs/DESIGN.md, "The store"; the tree is drawn in steerlab/store/__init__.py)."""
from __future__ import annotations

import re
from pathlib import Path

import h5py

# 2: every A/B number in both answer orders (*_by_order datasets, an `orders` attribute per eval
# split and group). Splits written by schema 1 have neither and read as single-order.
# 3: vectors, evals and generations under /<model>/<behavior>/ (`migrate` moves older ones).

SCHEMA_VERSION = 3


PER_BEHAVIOR = ("vectors", "evals", "generations", "prompting")


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


def linearised_run(layer: int, target: int, at_scale: float | None, unit: str = "abs", *, letter: bool = False
                   ) -> str:
    """PI@CAA's run name: ``L7-T20`` at the raw CAA vector, ``L7-T20-at+24`` at 24 · unit(CAA),
    ``L7-T20-at+0.2h`` at 0.2 ‖h_S‖ · unit(CAA) (SCALE_UNIT=resid), ``L7-T20-at+0.04kl`` where
    CAA costs 0.04 nats per token (SCALE_UNIT=kl); ending ``-letter`` with ``letter`` (the CAA
    vector read at the answer letter)."""
    name = segment_run(layer, target)
    if at_scale is not None:
        name += f"-at{at_scale:+g}" + AT_SUFFIXES.get(unit, "")
    return name + (LETTER_SUFFIX if letter else "")


AT_SUFFIXES = {"resid": "h", "kl": "kl"}  # a linearised run's scale unit, as its name ends (abs: none)
LETTER_SUFFIX = "-letter"  # a linearised run at the CAA vector read at the answer letter


def linearised_point(run: str) -> tuple[str, str] | None:
    """The point a ``linearised_run`` name was taken at: (signed scale as written, its unit), or
    None for a run at the raw CAA vector."""
    if "-at" not in run:
        return None
    point = run.split("-at", 1)[1].removesuffix(LETTER_SUFFIX)
    for unit, suffix in AT_SUFFIXES.items():
        if point.endswith(suffix):
            return point.removesuffix(suffix), unit
    return point, "abs"


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


def generations_name(vector: tuple[str, str, int] | None, sample: bool, seed: int) -> str:
    """``val`` (each method's val choice) or ``caa-L7-0`` (the vector (method, run, index)), then
    ``-sample-s<seed>`` if sampled."""
    name = "val" if vector is None else "-".join(map(str, vector))
    return name + (f"-sample-s{seed}" if sample else "")


def prompting_path(key: str, behavior: str, split: str | None = None) -> str:
    """/<model>/<behavior>/prompting/<split>: the prompting baseline (the unsteered model asked
    for the behaviour, and for its opposite, in its system turn) on the split's questions."""
    return _join(key, behavior, "prompting", split)


def norms_path(key: str, behavior: str, layer: int | None = None) -> str:
    """/<model>/<behavior>/norms/L<S>: ‖h_S‖ over the behaviour's train prompts (the scale unit)."""
    return _join(key, behavior, "norms", None if layer is None else f"L{layer}")


def neutral_path(key: str, split: str) -> str:
    """/<model>/neutral/<split>: neutral prompts and the unsteered model's greedy continuations."""
    return f"{key}/neutral/{split}"


def fisher_path(key: str, layer: int) -> str:
    """/<model>/fisher/L<S>: the KL's Fisher at θ = 0 on the val neutral texts (top eigenpairs and
    the level of the rest)."""
    return f"{key}/fisher/L{layer}"


def gradients_path(key: str, behavior: str, split: str, layer: int) -> str:
    """/<model>/<behavior>/gradients/<split>/L<S>: each question's gradient of both scores at θ = 0."""
    return f"{key}/{behavior}/gradients/{split}/L{layer}"


def dose_path(key: str, behavior: str, split: str) -> str:
    """/<model>/<behavior>/dose/<split>: the val choices (and random directions) at a ladder of KL costs."""
    return f"{key}/{behavior}/dose/{split}"


def transfer_path(key: str, behavior: str, other: str | None = None) -> str:
    """/<model>/<behavior>/transfer/<other>: the behaviour's chosen vectors on another's test questions."""
    return _join(key, behavior, "transfer", other)


def matrix_path(key: str, method: str | None = None) -> str:
    """/<model>/matrix/<method>: each behaviour's chosen vector on every behaviour's test split."""
    return _join(key, "matrix", method)


def behaviors_in_store(h5: h5py.File, key: str) -> list[str]:
    """The behaviours model ``key`` has results for."""
    if key not in h5:
        return []
    return sorted(name for name, node in h5[key].items()
                  if isinstance(node, h5py.Group) and any(kind in node for kind in PER_BEHAVIOR))
