"""Which stored vector a target uses, and the θ it adds.

A vector is either named (``METHOD/RUN/INDEX``, e.g. ``caa/L7/0``) or chosen on validation the
way the report chooses (steerlab.measure.analysis.best_of_method: the largest polarity-paired cloze
preference, or mean logit difference, among settings that keep the answer mass and, with a KL
limit, cost at most that on neutral text).
Export, generate and the cross-behaviour matrix all take their vectors from here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from steerlab.base.errors import StoreError, UserError
from steerlab.lm.generate import Setting
from steerlab.lm.site import Site
from steerlab.lm.vector import SteeringVector
from steerlab.measure.analysis import (
    Split,
    best_of_method,
    best_setting,
    methods,
    read_split,
    select_by,
    splits_in_store,
)
from steerlab.measure.scales import ScaleUnit, absolute
from steerlab.measure.scores import Score
from steerlab.store import VectorGroup, open_for_reading, read_norm, read_vector_group


@dataclass(frozen=True)
class VectorChoice:
    method: str
    run: str
    index: int
    scale: float | None  # signed L2 norm of θ after unit normalisation; None: the raw vector
    raw: bool = False  # the scale multiplies the raw vector (an eval run with RAW=1)

    @property
    def label(self) -> str:
        scale = "raw" if self.scale is None else f"{self.scale:+.4g}"
        return f"{self.method}/{self.run} #{self.index} at scale {scale}"


def parse_vector(text: str) -> tuple[str, str, int]:
    """``METHOD/RUN/INDEX`` as (method, run, index)."""
    method, _, rest = text.partition("/")
    run, _, index = rest.rpartition("/")
    if not method or not run or not index.isdigit():
        raise UserError(f"VECTOR must be METHOD/RUN/INDEX, e.g. caa/L7/0, got {text!r}")
    return method, run, int(index)


def stored_val(store: str | Path, key: str, behavior: str) -> Split:
    """The stored validation eval of ``behavior`` for model ``key``; a StoreError naming the command
    that makes it when the store has none."""
    with open_for_reading(store) as h5:
        if "val" not in splits_in_store(h5, key, behavior):
            raise StoreError(f"no validation eval of {behavior} for {key} in {store}: run "
                             f"`make eval BEHAVIOR={behavior}` first")
        return read_split(h5, key, behavior, "val")


def stored_val_choices(store: str | Path, key: str, behavior: str, kl_max: float | None,
                  only: str | None = None, by: Score = "cloze") -> tuple[list[VectorChoice], list[str]]:
    """Every method's (or only ``only``'s) setting chosen on the validation split by score
    ``by`` (``steerlab.measure.analysis.select_by``: the other where the store lacks it), and one note
    per method that has none; the random control is never chosen."""
    val = stored_val(store, key, behavior)
    by = select_by(val, by)
    picked, notes = [], []
    for method in methods(val) if only is None else [only]:
        if method == "random":
            continue
        chosen = best_of_method(method, val, kl_max, by)
        if chosen is None:
            notes.append(f"{behavior}: no {method} setting keeps the answer mass up (and KL ≤ "
                         f"{kl_max}) on val; nothing chosen")
            continue
        group, vector, s = chosen
        picked.append(VectorChoice(method, group.run, vector, group.norm(vector, s),
                                   bool(group.attrs.get("raw", 0))))
    return picked, notes


def group_val_choices(store: str | Path, key: str, behavior: str, kl_max: float | None, by: Score = "cloze",
                      methods: list[str] | None = None) -> list[VectorChoice]:
    """Every vector group's own setting chosen on val by ``by`` (the study's entries: both CAA
    positions, both ceilings, each PI group), for ``methods`` only if given; never the random
    control's; groups with no eligible setting are left out."""
    val = stored_val(store, key, behavior)
    by = select_by(val, by)
    picked = []
    for group in val.groups.values():
        if group.method == "random" or (methods is not None and group.method not in methods):
            continue
        chosen = best_setting(group, val, kl_max, by)
        if chosen is not None:
            vector, s = chosen
            picked.append(VectorChoice(group.method, group.run, vector, group.norm(vector, s),
                                       bool(group.attrs.get("raw", 0))))
    return picked


def named_choices(store: str | Path, key: str, behavior: str, vector: str, scales: list[float | None],
                  scale_unit: ScaleUnit) -> list[VectorChoice]:
    """``VECTOR=method/run/index`` at each of ``scales`` (None: the raw vector), the scales in
    ``scale_unit`` turned into L2 norms of θ: checked (the group, the index, the stored unit)
    before any model loads."""
    method, run, index = parse_vector(vector)
    group = read_vector_group(store, key, behavior, method, run)
    if not 0 <= index < len(group.vectors):
        raise UserError(f"{group.label} has vectors 0..{len(group.vectors) - 1}, not {index}")
    given = [s for s in scales if s is not None]
    if scale_unit == "kl" and given:
        absolute_scales = iter(calibrated_norms(store, key, behavior, group, index, given))
    else:
        unit = stored_unit(store, key, behavior, group.source_layer, scale_unit) if given else None
        absolute_scales = iter(absolute(given, scale_unit, unit))
    return [VectorChoice(method, run, index, None if s is None else next(absolute_scales)) for s in scales]


def calibrated_norms(store: str | Path, key: str, behavior: str, group: VectorGroup, index: int,
                     targets: list[float]) -> list[float]:
    """The signed |θ| at which vector ``index`` of ``group`` cost each of ``targets`` (signed KL
    targets, SCALE_UNIT=kl): the search is eval's, so the targets must be ones its val eval used."""
    there = None
    with open_for_reading(store) as h5:
        if "val" in splits_in_store(h5, key, behavior):
            there = read_split(h5, key, behavior, "val").groups.get(group.label)
    if there is None or there.norms is None:
        raise UserError(f"no SCALE_UNIT=kl eval of {group.label} on val for {key}, {behavior} in {store}: "
                        "a KL target's |θ| is found by `make eval` (SCALE_UNIT=kl); or give the scale with "
                        "SCALE_UNIT=resid or abs")
    if index >= len(there.norms):
        raise UserError(f"the val eval of {group.label} calibrated vectors 0..{len(there.norms) - 1}, not "
                        f"{index}: `make eval EVAL_K={index + 1}` (SCALE_UNIT=kl) finds the |θ| of the first "
                        f"{index + 1}")
    out = []
    for target in targets:
        at = np.nonzero(np.isclose(there.scales, target, rtol=1e-4, atol=1e-9))[0]
        if len(at) == 0:
            raise UserError(f"{group.label} was calibrated on val at KL targets "
                            f"{', '.join(f'{s:+g}' for s in there.scales)}, not {target:+g}: use one "
                            "of those, or `make eval SCALES=...` with it")
        out.append(there.norm(index, int(at[0])))
    return out


def steered_choices(store: str | Path, key: str, behavior: str, *, vector: str | None,
                    scales: list[float], scale_unit: ScaleUnit, kl_max: float | None, select_by: Score
                    ) -> tuple[list[VectorChoice], list[str]]:
    """What generation compares with the unsteered model, and notes to say: ``vector``
    (METHOD/RUN/INDEX) at each of ``scales`` in ``scale_unit``, or without it every method's
    choice on val (as the report chooses: KL at most ``kl_max``, by ``select_by``). Raises when
    val chose nothing, since there would be nothing to compare."""
    if vector is not None:
        return named_choices(store, key, behavior, vector, scales, scale_unit), []
    picks, notes = stored_val_choices(store, key, behavior, kl_max, by=select_by)
    if not picks:
        raise UserError("no method has a setting chosen on val; name one with VECTOR=method/run/index")
    return picks, notes


def stored_unit(store: str | Path, key: str, behavior: str, layer: int,
                scale_unit: ScaleUnit) -> float | None:
    """The stored scale unit (median ‖h_S‖) of ``layer``, for targets that turn scales into L2
    norms before (or without) loading a model; None with SCALE_UNIT=abs."""
    if scale_unit == "abs":
        return None
    norm = read_norm(store, key, behavior, layer)
    if norm is None:
        raise UserError(f"no ‖h_S‖ of layer {layer} for {key}, {behavior} in {store}: scales in "
                        "units of it need it measured (`make eval` does) or SCALE_UNIT=abs")
    return norm.median


def theta_of(store: str | Path, key: str, behavior: str, choice: VectorChoice
             ) -> tuple[np.ndarray, VectorGroup]:
    """θ [d] f32 that ``choice`` adds, and the stored group it comes from. A vector of norm 0
    cannot be scaled and is refused."""
    group = read_vector_group(store, key, behavior, choice.method, choice.run)
    if not 0 <= choice.index < len(group.vectors):
        raise UserError(f"{group.label} has vectors 0..{len(group.vectors) - 1}, not {choice.index}")
    vector = group.vectors[choice.index].astype(np.float64)
    if choice.scale is not None:
        norm = np.linalg.norm(vector)
        if not choice.raw and norm == 0:
            raise StoreError(f"{group.label} #{choice.index} cannot be scaled to "
                             f"{choice.scale:+g}: its norm is 0")
        vector = choice.scale * (vector if choice.raw else vector / norm)
    return vector.astype(np.float32), group


def generation_settings(store: str | Path, key: str, behavior: str, *, vector: str | None,
                        scales: list[float], scale_unit: ScaleUnit, kl_max: float | None, select_by: Score,
                        site: Site) -> tuple[list[Setting], list[str]]:
    """``steered_choices`` as rows of a comparison of completions (θ read, scaled and checked now,
    before any model loads), and the notes to say."""
    picks, notes = steered_choices(store, key, behavior, vector=vector, scales=scales, scale_unit=scale_unit,
                                   kl_max=kl_max, select_by=select_by)
    settings = []
    for pick in picks:
        theta, group = theta_of(store, key, behavior, pick)
        vector_added = SteeringVector(torch.from_numpy(theta), group.source_layer, site, pick.label)
        settings.append(Setting(pick.method, pick.run, pick.index, pick.scale, vector_added))
    return settings, notes
