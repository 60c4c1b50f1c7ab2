"""Eval's calibrations under SCALE_UNIT=kl: each vector group's signed |θ| per KL target, in eval's
layout, found by the KL search (``steerlab.measure.kl_search``) once per group however many
splits use it (``Calibrator``), keyed by what they depend on (``calibration_key``), and kept in
an eval's checkpoint (``calibration_arrays``, ``saved_calibrations``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from steerlab.base.progress import say
from steerlab.lm.steered import QUESTIONS_PER_PASS, SETTINGS_PER_PASS
from steerlab.measure.grid import signed_scales
from steerlab.measure.kl_search import MAX_UNITS, UNIT_START, kl_norms, out_of_reach
from steerlab.measure.side_effects import ScoredText
from steerlab.store import VectorGroup


@dataclass
class GroupCalibration:
    """One vector group's calibration, in eval's layout: [k, n_signed] with the signed targets
    of ``steerlab.measure.grid.signed_scales`` (a sign-free group's −t is −v at cost t)."""
    norms: np.ndarray  # signed |θ|: the sign of the scale
    kl: np.ndarray
    reached: np.ndarray


@dataclass
class Calibrator:
    """The calibrations of eval's groups at ``targets`` (nats per token) on ``texts`` (the val
    neutral texts), each group's computed once however many splits use it. ``units`` is the
    median ‖h_S‖ per source layer: the first probe is UNIT_START of it, the largest MAX_UNITS."""
    model: torch.nn.Module
    texts: list[ScoredText]
    pad_id: int
    units: dict[int, float]
    targets: list[float]
    batch_size: int = QUESTIONS_PER_PASS
    settings_per_pass: int = SETTINGS_PER_PASS
    done: dict[str, GroupCalibration] = field(default_factory=dict)

    def adopt(self, found: dict[str, GroupCalibration]) -> None:
        """Take calibrations found before (keyed by ``key``), e.g. a stored val eval's, for the
        groups this one has not searched itself."""
        for name, calibration in found.items():
            self.done.setdefault(name, calibration)

    def of(self, groups: list[VectorGroup]) -> dict[str, GroupCalibration]:
        """Each group's calibration by label; the new ones searched together, a layer at a time.
        A group is known by its vectors, not its name (behaviours share run names)."""
        new = {calibration_key(g): g for g in groups if calibration_key(g) not in self.done}
        for layer in sorted({g.source_layer for g in new.values()}):
            here = [g for g in new.values() if g.source_layer == layer]
            rows, where = [], []  # every (group, vector, sign) as one signed direction
            for g in here:
                for v, vector in enumerate(np.asarray(g.vectors, dtype=np.float64)):
                    for sign in ((-1.0, 1.0) if g.sign_free else (1.0,)):
                        where.append((calibration_key(g), v, sign))
                        rows.append(sign * torch.from_numpy(vector))
            unit = self.units[layer]
            found = kl_norms(self.model, self.texts, layer, torch.stack(rows), targets=self.targets,
                             pad_id=self.pad_id, start=UNIT_START * unit, max_norm=MAX_UNITS * unit,
                             batch_size=self.batch_size, settings_per_pass=self.settings_per_pass)
            say(f"  KL calibration at layer {layer}: {len(rows)} directions × {len(self.targets)} targets "
                f"in {found.probes} probes; {int(found.reached.sum())} of {found.reached.size} reached")
            out_of_reach(found, self.targets, MAX_UNITS * unit)
            for g in here:
                shape = (len(g.vectors), len(signed_scales(self.targets, g.sign_free)))
                self.done[calibration_key(g)] = GroupCalibration(np.zeros(shape), np.zeros(shape),
                                                                 np.zeros(shape, bool))
            m = len(self.targets)
            for row, (name, v, sign) in enumerate(where):
                cal = self.done[name]
                # signed layout: −t_m .. −t_1, t_1 .. t_m for sign-free groups, t_1 .. t_m otherwise
                columns = (range(m - 1, -1, -1) if sign < 0
                           else range(cal.norms.shape[1] - m, cal.norms.shape[1]))
                for target, column in enumerate(columns):
                    # as the store keeps it (float32): a split scored in a later run takes val's |θ|
                    # from the store, and gets exactly the θ an uninterrupted run used
                    cal.norms[v, column] = np.float32(sign * found.norms[row, target])
                    cal.kl[v, column] = found.kl[row, target]
                    cal.reached[v, column] = found.reached[row, target]
        return {g.label: self.done[calibration_key(g)] for g in groups}


def calibration_key(group: VectorGroup) -> str:
    """What a calibration depends on of a group: its layer, sign-freedom and vectors."""
    digest = hashlib.sha256(np.ascontiguousarray(group.vectors, dtype=np.float32).tobytes()).hexdigest()[:16]
    return f"{group.label}@L{group.source_layer}{'±' if group.sign_free else '+'}{digest}"


def calibration_arrays(calibrator: Calibrator) -> dict[str, np.ndarray]:
    """Every calibration ``calibrator`` holds, as arrays a checkpoint keeps (``saved_calibrations``
    reads them back)."""
    arrays = {}
    for n, (key, cal) in enumerate(sorted(calibrator.done.items())):
        arrays |= {f"cal/{n}/key": np.array(key), f"cal/{n}/norms": cal.norms, f"cal/{n}/kl": cal.kl,
                   f"cal/{n}/reached": cal.reached}
    return arrays


def saved_calibrations(saved: dict[str, np.ndarray]) -> dict[str, GroupCalibration]:
    """The calibrations among a checkpoint's arrays (``calibration_arrays``), by calibration key."""
    found, n = {}, 0
    while f"cal/{n}/key" in saved:
        found[str(saved[f"cal/{n}/key"])] = GroupCalibration(saved[f"cal/{n}/norms"], saved[f"cal/{n}/kl"],
                                                             saved[f"cal/{n}/reached"].astype(bool))
        n += 1
    return found
