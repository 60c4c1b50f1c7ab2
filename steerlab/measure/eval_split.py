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
from steerlab.measure.calibration import (
    Calibrator,
    GroupCalibration,
    calibration_arrays,
    calibration_key,
    saved_calibrations,
)
from steerlab.measure.cloze import cloze_preference
from steerlab.measure.grid import build_grid, random_directions, signed_scales
from steerlab.measure.scales import ScaleUnit, absolute
from steerlab.measure.scores import ScoreSet, question_ids, rank_work, score, usable_questions
from steerlab.measure.side_effects import ScoredText
from steerlab.questions.cloze_form import ClozeItem, cloze_token_counts
from steerlab.questions.data import Item, SplitName
from steerlab.questions.orders import Orders, n_orders
from steerlab.questions.prompts import AnswerTokens
from steerlab.store import (
    Checkpoint,
    VectorGroup,
    evals_path,
    is_current,
    now,
    open_for_reading,
    random_run,
    run_attrs,
    settings_json,
    vectors_path,
    write_eval_results,
)


def vectors_id(group: VectorGroup) -> str:
    """What an eval group records of the vectors it scored: the random control's settings, or the
    stored vectors' fingerprint."""
    return settings_json(group.settings) if group.method == "random" else group.fingerprint


def val_calibrations(store: str | Path, key: str, behavior: str, groups: list[VectorGroup],
                     targets: list[float]) -> dict[str, GroupCalibration]:
    """What an earlier SCALE_UNIT=kl val eval found for ``groups`` at ``targets``, keyed as
    ``steerlab.measure.calibration.Calibrator`` keys them: a split scored in a later run is scored at val's
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


def question_chunks(answers: list[AnswerTokens], cloze: list[ClozeItem] | None, n_orders_: int,
                    n_settings: int, batch_size: int, work: int) -> list[list[int]]:
    """The questions (indices) in the chunks eval scores and checkpoints one after another:
    sorted by length (so each chunk's batches carry little padding), ``work`` question×settings
    each, at least one pass of ``batch_size`` questions. Chunks are fixed by the questions and
    the settings alone, so a resumed eval computes exactly the numbers an uninterrupted one does."""
    n_q = len(answers) // n_orders_ if answers else len(cloze or [])
    lengths = [sum(len(answers[o * n_q + q].prefix_ids) for o in range(n_orders_)) if answers else 0
               for q in range(n_q)]
    if cloze:
        lengths = [length + len(c.prompt_ids) for length, c in zip(lengths, cloze)]
    order = sorted(range(n_q), key=lambda q: (lengths[q], q))
    size = max(batch_size, work // max(n_settings, 1))
    return [order[i:i + size] for i in range(0, n_q, size)]


def _chunk(answers: list[AnswerTokens], cloze: list[ClozeItem] | None, n_orders_: int, questions: list[int]
           ) -> tuple[list[AnswerTokens], list[ClozeItem] | None]:
    """Those questions' letter answers (order-major) and cloze items."""
    n_q = len(answers) // n_orders_ if answers else 0
    part = [answers[o * n_q + q] for o in range(n_orders_) for q in questions] if answers else []
    return part, None if cloze is None else [cloze[q] for q in questions]


def score_resumably(lm: LoadedModel, plan: SplitPlan, texts: list[ScoredText], grid, layer: int, *,
                    saved: dict[str, np.ndarray], save, batch_size: int, settings_per_pass: int,
                    checkpoint_work: int, progress) -> dict[str, np.ndarray]:
    """Every score of ``grid``'s settings at ``layer`` on the plan's questions and KL on
    ``texts``, chunk by chunk (``question_chunks``): chunks in ``saved`` (a checkpoint's arrays)
    are taken as they are, each new one is added to it and ``save``d. Returns the per-setting
    arrays: diff and mass [n_settings, n_orders, n_q], cloze [n_settings, 2, n_q], kl and top1
    [n_settings, n_texts] (those the plan asks for)."""
    answers, cloze, orders = plan.answers, plan.cloze, n_orders(plan.orders)
    m, n_q = len(grid.thetas), len(plan.question_ids)
    out: dict[str, np.ndarray] = {}
    if answers:
        out["diff"], out["mass"] = np.zeros((m, orders, n_q)), np.zeros((m, orders, n_q))
    if cloze is not None:
        out["cloze"] = np.zeros((m, 2, n_q))
    pad = lm.tokenizer.pad_token_id
    for c, questions in enumerate(question_chunks(answers, cloze, orders, m, batch_size, checkpoint_work)):
        key = f"L{layer}/q{c}"
        part_answers, part_cloze = _chunk(answers, cloze, orders, questions)
        if f"{key}/done" not in saved:
            scored = score(lm.model, part_answers, orders, [], source_layer=layer, thetas=grid.thetas, pad_id=pad,
                           batch_size=batch_size, settings_per_pass=settings_per_pass, progress=progress,
                           ranks=ranks(), cloze=part_cloze)
            for name, values in (("diff", scored.logit_diff), ("mass", scored.answer_mass), ("cloze", scored.cloze)):
                if values is not None:
                    saved[f"{key}/{name}"] = values
            saved[f"{key}/done"] = np.ones(1)
            save(saved)
        elif progress:
            progress(rank_work(m, part_answers, orders, 0, ranks(), len(part_cloze or [])))
        for name in ("diff", "mass", "cloze"):
            if name in out:
                out[name][..., questions] = saved[f"{key}/{name}"]
    if texts:
        key = f"L{layer}/kl"
        if f"{key}/done" not in saved:
            scored = score(lm.model, [], orders, texts, source_layer=layer, thetas=grid.thetas, pad_id=pad,
                           batch_size=batch_size, settings_per_pass=settings_per_pass, progress=progress,
                           ranks=ranks())
            saved[f"{key}/kl"], saved[f"{key}/top1"], saved[f"{key}/done"] = scored.kl, scored.top1, np.ones(1)
            save(saved)
        elif progress:
            progress(rank_work(m, [], orders, len(texts), ranks()))
        out["kl"], out["top1"] = saved[f"{key}/kl"], saved[f"{key}/top1"]
    return out


def split_work(plan: SplitPlan, n_settings: int, n_texts: int, batch_size: int, checkpoint_work: int) -> int:
    """The question×settings, item×settings and text×settings ``score_resumably`` reports on this
    rank for ``n_settings`` settings: what its progress bar counts to."""
    orders = n_orders(plan.orders)
    work = rank_work(n_settings, [], orders, n_texts, ranks())
    for questions in question_chunks(plan.answers, plan.cloze, orders, n_settings, batch_size, checkpoint_work):
        part_answers, part_cloze = _chunk(plan.answers, plan.cloze, orders, questions)
        work += rank_work(n_settings, part_answers, orders, 0, ranks(), len(part_cloze or []))
    return work


def split_datasets(plan: SplitPlan, texts: list[ScoredText], baseline: dict[str, np.ndarray]) -> dict:
    """The split's own datasets: question and neutral text ids, and the unsteered scores."""
    data = {"question_ids": np.array(plan.question_ids),
            "neutral_ids": np.array([text.prompt_id for text in texts], dtype=str)}
    if "diff" in baseline:
        data |= {"baseline_logit_diff": baseline["diff"].mean(0).astype(np.float32),
                 "baseline_answer_mass": baseline["mass"].mean(0).astype(np.float32),
                 "baseline_logit_diff_by_order": baseline["diff"].astype(np.float32),
                 "baseline_answer_mass_by_order": baseline["mass"].astype(np.float32)}
    if plan.cloze:
        n_tokens = cloze_token_counts(plan.cloze)
        data |= {"baseline_cloze_logprob": baseline["cloze"].astype(np.float32),
                 "baseline_cloze": cloze_preference(baseline["cloze"], n_tokens).astype(np.float32),
                 "cloze_n_tokens": n_tokens,
                 "cloze_n_chars": np.array([[c.positive_chars for c in plan.cloze],
                                            [c.negative_chars for c in plan.cloze]], dtype=np.int32),
                 "polarity": np.array([c.polarity for c in plan.cloze])}
    return data


def group_datasets(plan: SplitPlan, span, values: dict[str, np.ndarray],
                   calibration: GroupCalibration | None) -> dict:
    """One group's datasets: its scales (and with SCALE_UNIT=kl each vector's |θ| and the KL its
    search found), its scores [k, n_scales, ...] and KL, and a random group's directions."""
    g = span.group
    unit = plan.units.get(g.source_layer)
    data = {"scales": np.array(span.scales, dtype=np.float32)}
    if calibration is not None:  # the scales are KL targets, each vector's |θ| its own
        data |= {"norms": calibration.norms.astype(np.float32),
                 "calibration_kl": calibration.kl.astype(np.float32),
                 "calibration_reached": calibration.reached.astype(np.int8)}
    elif unit is not None:
        data["scale_fractions"] = np.array(span.scales, dtype=np.float64) / unit
    if "diff" in values:
        diff, mass = values["diff"], values["mass"]
        data |= {"logit_diff": diff.mean(2).astype(np.float32), "answer_mass": mass.mean(2).astype(np.float32),
                 "logit_diff_by_order": diff.astype(np.float32), "answer_mass_by_order": mass.astype(np.float32)}
    if "cloze" in values:  # [k, n_scales, 2, n_q]
        data |= {"cloze_logprob": values["cloze"].astype(np.float32),
                 "cloze": cloze_preference(values["cloze"], cloze_token_counts(plan.cloze)).astype(np.float32)}
    if "kl" in values:  # [k, n_scales, n_neutral]
        data |= {"kl": values["kl"].astype(np.float32), "top1": values["top1"].astype(np.float32)}
    if g.method == "random":
        data["vectors"] = g.vectors
    return data


def evaluate_split(store: str | Path, lm: LoadedModel, plan: SplitPlan, groups: list[VectorGroup],
                   texts: list[ScoredText], sites: dict[int, str], *, batch_size: int,
                   settings_per_pass: int, checkpoint_work: int, calibrator: Calibrator | None = None) -> None:
    """Score every group of ``plan.todo`` (and the unsteered baseline) on the plan's questions and
    KL on ``texts``, and write them to ``store`` (rank 0, one atomic update); ``groups`` are all
    of eval's groups (the baseline's layer when none is stale), ``sites`` each layer's site.
    With SCALE_UNIT=kl, ``calibrator`` finds each group's |θ| per KL target (on the val neutral
    texts, the same for every split). Work done so far is kept beside the store
    (``steerlab.store.Checkpoint``) after every chunk of ``checkpoint_work`` question×settings,
    so a killed eval rerun with the same settings and code picks up where it stopped."""
    todo, units = plan.todo, plan.units
    started, t0 = now(), time.perf_counter()
    layers = sorted({g.source_layer for g, _ in todo}) or [groups[0].source_layer]
    checkpoint = Checkpoint(store, plan.path, {"split": plan.settings, "fresh": plan.fresh, "version": plan.version,
                                               "groups": [[g.label, settings] for g, settings in todo],
                                               "texts": [t.prompt_id for t in texts], "chunks": checkpoint_work,
                                               "batch_size": batch_size})
    saved = checkpoint.load()
    save = checkpoint.save if ranks().writer else (lambda _arrays: None)
    calibrations = {}
    if plan.scale_unit == "kl":
        if calibrator is None:
            raise ValueError("SCALE_UNIT=kl needs a calibrator")
        calibrator.adopt(saved_calibrations(saved))
        calibrations = calibrator.of([g for g, _ in todo])
        saved |= calibration_arrays(calibrator)
        save(saved)
    # One θ matrix per source layer: every group's (vector, scale) settings, stacked.
    grids = {layer: build_grid([g for g, _ in todo if g.source_layer == layer],
                               plan.scales if plan.scale_unit == "kl"
                               else absolute(plan.scales, plan.scale_unit, units.get(layer)),
                               lm.d_model, plan.raw, baseline=n == 0,
                               norms={label: cal.norms for label, cal in calibrations.items()})
             for n, layer in enumerate(layers)}
    say(f"… [{plan.split}] {sum(len(g.thetas) for g in grids.values())} settings × {len(plan.question_ids)} "
        f"questions ({plan.scores}: {n_orders(plan.orders)} letter order(s)" + (", cloze" if plan.cloze else "")
        + f"), and KL on {len(texts)} neutral texts")
    total = sum(split_work(plan, len(grid.thetas), len(texts), batch_size, checkpoint_work) for grid in grids.values())
    results, baseline = [], None
    with progress_bar(total, f"eval {plan.split}", "question×setting") as bar:
        for layer, grid in grids.items():
            per_setting = score_resumably(lm, plan, texts, grid, layer, saved=saved, save=save, batch_size=batch_size,
                                          settings_per_pass=settings_per_pass, checkpoint_work=checkpoint_work,
                                          progress=bar.update)
            if grid.baseline_row is not None:
                baseline = {name: values[grid.baseline_row] for name, values in per_setting.items()}
            per_group = {name: grid.unpack(values) for name, values in per_setting.items()}
            results += [(span, {name: values[span.group.label] for name, values in per_group.items()})
                        for span in grid.spans]
    seconds = ranks().largest(time.perf_counter() - t0)
    if ranks().writer:  # rank 0 alone writes: baseline and every group in one atomic update
        settings_by_label = {g.label: settings for g, settings in todo}
        split_attrs = run_attrs(plan.settings, plan.version, started, seconds, skipped=plan.skipped,
                                orders=plan.orders, score=plan.scores, behavior=plan.behavior, nproc=ranks().size)
        written = []
        for span, values in results:
            g = span.group
            unit = units.get(g.source_layer)
            attrs = run_attrs(settings_by_label[g.label], plan.version, started, seconds, source_layer=g.source_layer,
                              site=sites[g.source_layer], sign_free=int(g.sign_free), raw=int(plan.raw),
                              orders=plan.orders, score=plan.scores, scale_unit=plan.scale_unit,
                              unit_norm=np.nan if unit is None else unit,
                              vector_group="" if g.method == "random" else vectors_path(lm.key, plan.behavior, g.method,
                                                                                         g.run),
                              nproc=ranks().size)
            written.append((g.method, g.run, group_datasets(plan, span, values, calibrations.get(g.label)), attrs))
        write_eval_results(store, lm, plan.behavior, plan.split, (split_datasets(plan, texts, baseline), split_attrs),
                           written, replace_split=plan.fresh)
        checkpoint.discard()
    say(f"{plan.path}: wrote baseline and {len(results)} groups in {seconds:.0f}s")
