"""`make eval`'s work on one split (steerlab/cli/eval.py): which groups are stale, then every stale
group's settings scored (one θ stack per source layer, ``steerlab.measure.scores.score``) and written with
the split's baseline. The runner's docstring lists what is written; docs/DESIGN.md, "The store"."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steerlab.base.parallel import ranks
from steerlab.base.progress import progress_bar, say, say_skipped
from steerlab.lm.model import LoadedModel
from steerlab.measure.cloze import cloze_preference
from steerlab.measure.grid import build_grid, random_directions, signed_scales
from steerlab.measure.scales import Calibrator, GroupCalibration, ScaleUnit, absolute, calibration_key
from steerlab.measure.scores import ScoreSet, question_ids, rank_work, score, usable_questions
from steerlab.measure.side_effects import ScoredText
from steerlab.questions.cloze_form import ClozeItem, cloze_token_counts
from steerlab.questions.data import Item, SplitName
from steerlab.questions.orders import Orders, n_orders
from steerlab.questions.prompts import AnswerTokens
from steerlab.store import (
    VectorGroup,
    evals_path,
    is_current,
    now,
    open_for_reading,
    random_run,
    run_attrs,
    settings_json,
    vectors_path,
    write_eval_group,
    write_eval_split,
    writing,
)


def vectors_id(group: VectorGroup) -> str:
    """What an eval group records of the vectors it scored: the random control's settings, or the
    stored vectors' fingerprint."""
    return settings_json(group.settings) if group.method == "random" else group.fingerprint


def val_calibrations(store: str | Path, key: str, behavior: str, groups: list[VectorGroup],
                     targets: list[float]) -> dict[str, GroupCalibration]:
    """What an earlier SCALE_UNIT=kl val eval found for ``groups`` at ``targets``, keyed as
    ``steerlab.measure.scales.Calibrator`` keys them: a split scored in a later run is scored at val's
    |θ|, where val's choice was made, not at a new search's. A group counts only if val scored
    the same vectors (as many of them) in kl at every one of ``targets`` (val may have had more:
    test then takes val's columns of the targets it is scored at, as `make study` does)."""
    found = {}
    if not Path(store).exists():
        return found
    with open_for_reading(store) as h5:
        for g in groups:
            path = evals_path(key, behavior, "val", g.method, g.run)
            if path not in h5 or "norms" not in h5[path]:
                continue
            node = h5[path]
            settings = json.loads(node.attrs.get("settings", "{}"))
            norms = node["norms"][()]
            columns = matching_columns(node["scales"][()], signed_scales(targets, g.sign_free))
            if (node.attrs.get("scale_unit") == "kl" and settings.get("vectors") == vectors_id(g)
                    and norms.shape[0] == len(g.vectors) and columns is not None):
                found[calibration_key(g)] = GroupCalibration(
                    norms[:, columns].astype(np.float64), node["calibration_kl"][()][:, columns].astype(np.float64),
                    node["calibration_reached"][()][:, columns].astype(bool))
    return found


def matching_columns(stored: np.ndarray, wanted: list[float]) -> list[int] | None:
    """The index in ``stored`` (signed scales) of each of ``wanted``, or None if one is missing."""
    columns = []
    for scale in wanted:
        hits = np.flatnonzero(np.isclose(stored, scale, rtol=1e-5, atol=0))
        if len(hits) != 1:
            return None
        columns.append(int(hits[0]))
    return columns


def random_groups(layers: list[int], n_random: int, d_model: int, seed: int,
                  norms: dict[int, float]) -> list[VectorGroup]:
    """N random directions per source layer, of norm ``norms[layer]`` (1 unless --raw)."""
    return [VectorGroup("random", random_run(layer),
                        (random_directions(n_random, d_model, seed, layer) * norms.get(layer, 1.0)).float().numpy(),
                        layer, sign_free=True, settings={"seed": seed, "n_random": n_random})
            for layer in layers]


def mean_norms(groups: list[VectorGroup], layers: list[int]) -> dict[int, float]:
    """The mean norm of the stored vectors at each layer (1 where none): the random directions'
    norm under --raw."""
    norms = {}
    for layer in layers:
        rows = [np.linalg.norm(g.vectors, axis=1) for g in groups if g.source_layer == layer]
        norms[layer] = float(np.concatenate(rows).mean()) if rows else 1.0
    return norms


@dataclass
class SplitPlan:
    """One split's questions and the groups to evaluate on it (``plan_split``)."""
    behavior: str
    split: SplitName
    answers: list[AnswerTokens]
    cloze: list[ClozeItem] | None
    skipped: list[str]
    question_ids: list[str]
    settings: dict  # the split's, recorded on its group and inside every group's
    path: str
    fresh: bool  # the split's baseline is rewritten
    todo: list[tuple[VectorGroup, dict]]  # stale groups and their settings
    orders: Orders
    scores: ScoreSet
    raw: bool
    scale_unit: ScaleUnit
    scales: list[float]
    units: dict[int, float]  # layer -> median ‖h_S‖; empty for abs
    version: str

    @property
    def current(self) -> bool:
        return not self.todo and not self.fresh


def plan_split(store: str | Path, lm: LoadedModel, behavior: str, split: SplitName, items: list[Item],
               groups: list[VectorGroup], units: dict[int, float], *, orders: Orders, scores: ScoreSet,
               scales: list[float], raw: bool, scale_unit: ScaleUnit, max_vectors: int | None,
               recorded: dict, version: str, force: bool = False) -> SplitPlan:
    """The ``items`` usable in every score of ``scores`` in ``orders``, and which of ``groups`` are
    stale in ``store`` for them: a group's settings are ``scales`` (in ``scale_unit``, whose
    median ‖h_S‖ per layer is ``units``), ``raw``, ``max_vectors``, its vectors and the split's
    settings (``recorded`` with the split and the questions' hash); code ``version`` too. Rank
    0's reading of the store decides for every rank."""
    answers, cloze, skipped = usable_questions(lm.tokenizer, items, orders, scores)
    say_skipped(skipped, bool(answers or cloze), f"no usable {split} question: every item was skipped")
    ids = question_ids(answers, cloze, n_orders(orders))
    split_settings = {**recorded, "split": split, "question_ids_sha": hashlib.sha256(
        " ".join(ids).encode()).hexdigest()[:16]}
    split_path = evals_path(lm.key, behavior, split)
    fresh_split = force or not is_current(store, split_path, split_settings, version)
    wanted = []
    for g in groups:
        settings = {"scales": scales, "raw": raw, "scale_unit": scale_unit,
                    "unit_norm": units.get(g.source_layer),
                    "max_vectors": None if g.method == "random" else max_vectors,
                    "vectors": vectors_id(g), "split": split_settings}
        stale = fresh_split or not is_current(
            store, evals_path(lm.key, behavior, split, g.method, g.run), settings, version)
        wanted.append((g, settings, stale))
    # rank 0's reading of the store decides for every rank, so that all run the same passes
    fresh_split, stale = ranks().same((fresh_split, [stale for _, _, stale in wanted]))
    todo = [(g, settings) for (g, settings, _), redo in zip(wanted, stale) if redo]
    return SplitPlan(behavior, split, answers, cloze, skipped, ids, split_settings, split_path,
                     fresh_split, todo, orders, scores, raw, scale_unit, scales, units, version)


def evaluate_split(store: str | Path, lm: LoadedModel, plan: SplitPlan, groups: list[VectorGroup],
                   texts: list[ScoredText], sites: dict[int, str], *, batch_size: int,
                   settings_per_pass: int, calibrator: Calibrator | None = None) -> None:
    """Score every group of ``plan.todo`` (and the unsteered baseline) on the plan's questions and
    KL on ``texts``, and write them to ``store`` (rank 0, one atomic update); ``groups`` are all
    of eval's groups (the baseline's layer when none is stale), ``sites`` each layer's site.
    With SCALE_UNIT=kl, ``calibrator`` finds each group's |θ| per KL target (on the val neutral
    texts, the same for every split)."""
    answers, cloze, todo, units = plan.answers, plan.cloze, plan.todo, plan.units
    orders = n_orders(plan.orders)
    started, t0 = now(), time.perf_counter()
    results, baseline = {}, None
    layers = sorted({g.source_layer for g, _ in todo}) or [groups[0].source_layer]
    calibrations = {}
    if plan.scale_unit == "kl":
        if calibrator is None:
            raise ValueError("SCALE_UNIT=kl needs a calibrator")
        calibrations = calibrator.of([g for g, _ in todo])
    # One θ matrix per source layer: every group's (vector, scale) settings, stacked.
    grids = {layer: build_grid([g for g, _ in todo if g.source_layer == layer],
                               plan.scales if plan.scale_unit == "kl"
                               else absolute(plan.scales, plan.scale_unit, units.get(layer)),
                               lm.d_model, plan.raw, baseline=n == 0,
                               norms={label: cal.norms for label, cal in calibrations.items()})
             for n, layer in enumerate(layers)}
    say(f"… [{plan.split}] {sum(len(g.thetas) for g in grids.values())} settings × {len(plan.question_ids)} "
        f"questions ({plan.scores}: {orders} letter order(s)" + (", cloze" if cloze else "")
        + f"), and KL on {len(texts)} neutral texts")
    total = sum(rank_work(len(g.thetas), answers, orders, len(texts), ranks(), len(cloze or []))
                for g in grids.values())
    with progress_bar(total, f"eval {plan.split}", "question×setting") as bar:
        for layer, grid in grids.items():
            scored = score(lm.model, answers, orders, texts, source_layer=layer, thetas=grid.thetas,
                           pad_id=lm.tokenizer.pad_token_id, batch_size=batch_size, settings_per_pass=settings_per_pass,
                           progress=bar.update, ranks=ranks(), cloze=cloze)
            per_setting = {"diff": scored.logit_diff, "mass": scored.answer_mass,  # [n_settings, n_orders, n_q]
                           "cloze": scored.cloze, "kl": scored.kl, "top1": scored.top1}
            per_setting = {name: values for name, values in per_setting.items() if values is not None}
            if grid.baseline_row is not None:
                baseline = {name: values[grid.baseline_row] for name, values in per_setting.items()}
            per_group = {name: grid.unpack(values) for name, values in per_setting.items()}
            for span in grid.spans:
                results[span.group.label] = (span, {name: values[span.group.label]
                                                    for name, values in per_group.items()})
    seconds = ranks().largest(time.perf_counter() - t0)
    settings_by_label = {g.label: settings for g, settings in todo}
    behavior, split, version = plan.behavior, plan.split, plan.version
    if ranks().writer:  # rank 0 alone writes: baseline and every group in one atomic update
        with writing(store) as h5:
            if plan.fresh or plan.path not in h5:
                split_data = {"question_ids": np.array(plan.question_ids),
                              "neutral_ids": np.array([text.prompt_id for text in texts], dtype=str)}
                if "diff" in baseline:
                    split_data |= {
                        "baseline_logit_diff": baseline["diff"].mean(0).astype(np.float32),
                        "baseline_answer_mass": baseline["mass"].mean(0).astype(np.float32),
                        "baseline_logit_diff_by_order": baseline["diff"].astype(np.float32),
                        "baseline_answer_mass_by_order": baseline["mass"].astype(np.float32)}
                if cloze:
                    n_tokens = cloze_token_counts(cloze)
                    split_data |= {
                        "baseline_cloze_logprob": baseline["cloze"].astype(np.float32),
                        "baseline_cloze": cloze_preference(baseline["cloze"], n_tokens).astype(np.float32),
                        "cloze_n_tokens": n_tokens,
                        "cloze_n_chars": np.array([[c.positive_chars for c in cloze],
                                                   [c.negative_chars for c in cloze]], dtype=np.int32),
                        "polarity": np.array([c.polarity for c in cloze])}
                write_eval_split(h5, lm, behavior, split, split_data, run_attrs(
                    plan.settings, version, started, seconds, skipped=plan.skipped, orders=plan.orders,
                    score=plan.scores, behavior=behavior, nproc=ranks().size))
            for label, (span, values) in results.items():
                g = span.group
                unit = units.get(g.source_layer)
                datasets = {"scales": np.array(span.scales, dtype=np.float32)}
                if g.label in calibrations:  # the scales are KL targets, each vector's |θ| its own
                    cal = calibrations[g.label]
                    datasets |= {"norms": cal.norms.astype(np.float32),
                                 "calibration_kl": cal.kl.astype(np.float32),
                                 "calibration_reached": cal.reached.astype(np.int8)}
                elif unit is not None:
                    datasets["scale_fractions"] = np.array(span.scales, dtype=np.float64) / unit
                if "diff" in values:
                    diff, mass = values["diff"], values["mass"]
                    datasets |= {"logit_diff": diff.mean(2).astype(np.float32),
                                 "answer_mass": mass.mean(2).astype(np.float32),
                                 "logit_diff_by_order": diff.astype(np.float32),
                                 "answer_mass_by_order": mass.astype(np.float32)}
                if "cloze" in values:  # [k, n_scales, 2, n_q]
                    datasets |= {"cloze_logprob": values["cloze"].astype(np.float32),
                                 "cloze": cloze_preference(values["cloze"], cloze_token_counts(cloze)
                                                           ).astype(np.float32)}
                if "kl" in values:  # [k, n_scales, n_neutral]
                    datasets |= {"kl": values["kl"].astype(np.float32), "top1": values["top1"].astype(np.float32)}
                if g.method == "random":
                    datasets["vectors"] = g.vectors
                write_eval_group(h5, lm, behavior, split, g.method, g.run, datasets, run_attrs(
                    settings_by_label[label], version, started, seconds, source_layer=g.source_layer,
                    site=sites[g.source_layer],
                    sign_free=int(g.sign_free), raw=int(plan.raw), orders=plan.orders, score=plan.scores,
                    scale_unit=plan.scale_unit, unit_norm=np.nan if unit is None else unit,
                    vector_group="" if g.method == "random" else vectors_path(lm.key, behavior, g.method, g.run),
                    nproc=ranks().size))
    say(f"{plan.path}: wrote baseline and {len(results)} groups in {seconds:.0f}s")
