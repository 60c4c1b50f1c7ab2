"""`make eval`'s work on one split (steerlab/cli/eval.py): which groups are stale, then every stale
group's settings scored (one θ stack per source layer, ``steerlab.measure.scores.score``) and written with
the split's baseline. The runner's docstring lists what is written; docs/DESIGN.md, "The store"."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
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
from steerlab.measure.grid import Grid, Span, build_grid, random_directions, signed_scales
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
                    norms[:, columns].astype(np.float64),
                    node["calibration_kl"][()][:, columns].astype(np.float64),
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
                        (random_directions(n_random, d_model, seed, layer)
                         * norms.get(layer, 1.0)).float().numpy(),
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


@dataclass(frozen=True)
class ScaleGrid:
    """The sizes every vector of an eval is added at: ``scales`` in ``unit`` (KL targets, fractions
    of the median ‖h_S‖ or L2 norms; sign-free groups get their negatives too), of each vector made
    a unit vector or, with ``raw``, as stored. ``unit_norms``: the median ‖h_S‖ per source layer
    (empty for abs)."""
    scales: list[float]
    unit: ScaleUnit
    raw: bool = False
    unit_norms: dict[int, float] = field(default_factory=dict)

    def at(self, layer: int) -> list[float]:
        """What ``build_grid`` sizes the vectors of ``layer`` by: the KL targets themselves (each
        group's |θ| then comes from its calibration), or the L2 norms the scales mean there."""
        return (self.scales if self.unit == "kl"
                else absolute(self.scales, self.unit, self.unit_norms.get(layer)))


@dataclass(frozen=True)
class EvalSettings:
    """What every split of one eval is scored with and records: the letter ``orders`` and the
    ``scores`` asked for, the scale ``grid``, how many of a method's vectors are scored
    (``max_vectors``), the runner's ``arguments`` each split records (not those that only say which
    groups or how fast) and its code ``version``."""
    orders: Orders
    scores: ScoreSet
    grid: ScaleGrid
    max_vectors: int | None
    arguments: dict
    version: str

    def split_settings(self, split: SplitName, ids: list[str]) -> dict:
        """What a split's group records, and every group's inside its own: the arguments, the split
        and its questions' hash."""
        return {**self.arguments, "split": split, "question_ids_sha": hashlib.sha256(
            " ".join(ids).encode()).hexdigest()[:16]}

    def group_settings(self, group: VectorGroup, split_settings: dict) -> dict:
        """What one group records of a split (``split_settings``), and is skipped on."""
        return {"scales": self.grid.scales, "raw": self.grid.raw, "scale_unit": self.grid.unit,
                "unit_norm": self.grid.unit_norms.get(group.source_layer),
                "max_vectors": None if group.method == "random" else self.max_vectors,
                "vectors": vectors_id(group), "split": split_settings}


@dataclass
class SplitQuestions:
    """A split's questions usable in every score asked for (``usable_questions``)."""
    answers: list[AnswerTokens]  # the letter prompts, order-major (empty without the letter score)
    cloze: list[ClozeItem] | None  # the cloze forms (None without the cloze score)
    skipped: list[str]  # what was left out, and why
    ids: list[str]

    def chunk(self, orders: int, questions: list[int]) -> tuple[list[AnswerTokens], list[ClozeItem] | None]:
        """Those questions' (indices) letter answers in ``orders`` orders (order-major) and cloze items."""
        n_q = len(self.answers) // orders if self.answers else 0
        part = [self.answers[o * n_q + q] for o in range(orders) for q in questions] if self.answers else []
        return part, None if self.cloze is None else [self.cloze[q] for q in questions]


@dataclass(frozen=True)
class EvalSplit:
    """One split of an eval as the store holds it: the behaviour, the split, its group's ``path``
    and what that group records (``EvalSettings.split_settings``), inside every group's too."""
    behavior: str
    name: SplitName
    path: str
    recorded: dict


@dataclass(frozen=True)
class Batching:
    """How an eval's work is cut: questions per pass, θ settings per pass, and question×settings
    between two saves of its checkpoint."""
    batch_size: int
    settings_per_pass: int
    checkpoint_work: int


@dataclass
class SplitPlan:
    """One split's eval (``plan_split``): where it goes, its questions, what they are scored
    with, and what is stale."""
    split: EvalSplit
    questions: SplitQuestions
    settings: EvalSettings
    fresh: bool  # the split's baseline is rewritten
    todo: list[tuple[VectorGroup, dict]]  # stale groups and their settings

    @property
    def current(self) -> bool:
        return not self.todo and not self.fresh


def plan_split(store: str | Path, lm: LoadedModel, behavior: str, split: SplitName, items: list[Item],
               groups: list[VectorGroup], settings: EvalSettings, *, force: bool = False) -> SplitPlan:
    """The ``items`` usable in every score of ``settings`` in its orders, and which of ``groups``
    are stale in ``store`` for them (``stale_groups``)."""
    questions = split_questions(lm, split, items, settings)
    where = EvalSplit(behavior, split, evals_path(lm.key, behavior, split),
                      settings.split_settings(split, questions.ids))
    fresh, todo = stale_groups(store, lm.key, where, groups, settings, force)
    return SplitPlan(where, questions, settings, fresh, todo)


def split_questions(lm: LoadedModel, split: SplitName, items: list[Item],
                    settings: EvalSettings) -> SplitQuestions:
    """The ``items`` usable in every score of ``settings`` in its orders, what was skipped said."""
    answers, cloze, skipped = usable_questions(lm.tokenizer, items, settings.orders, settings.scores)
    say_skipped(skipped, bool(answers or cloze), f"no usable {split} question: every item was skipped")
    return SplitQuestions(answers, cloze, skipped, question_ids(answers, cloze, n_orders(settings.orders)))


def stale_groups(store: str | Path, key: str, split: EvalSplit, groups: list[VectorGroup],
                 settings: EvalSettings, force: bool) -> tuple[bool, list[tuple[VectorGroup, dict]]]:
    """Whether the split's baseline is rewritten (``force``, or its settings or code ``version``
    changed), and the groups to score with their settings (``EvalSettings.group_settings``): all
    of them with a fresh split, else those whose settings or code changed. Rank 0's reading of the
    store decides for every rank."""
    fresh_split = force or not is_current(store, split.path, split.recorded, settings.version)
    wanted = []
    for g in groups:
        group_settings = settings.group_settings(g, split.recorded)
        stale = fresh_split or not is_current(
            store, evals_path(key, split.behavior, split.name, g.method, g.run), group_settings,
            settings.version)
        wanted.append((g, group_settings, stale))
    # rank 0's reading of the store decides for every rank, so that all run the same passes
    fresh_split, stale = ranks().same((fresh_split, [stale for _, _, stale in wanted]))
    return fresh_split, [(g, group_settings) for (g, group_settings, _), redo in zip(wanted, stale) if redo]


def question_chunks(questions: SplitQuestions, n_orders_: int, n_settings: int, batch_size: int,
                    work: int) -> list[list[int]]:
    """The questions (indices) in the chunks eval scores and checkpoints one after another:
    sorted by length (so each chunk's batches carry little padding), ``work`` question×settings
    each, at least one pass of ``batch_size`` questions. Chunks are fixed by the questions and
    the settings alone, so a resumed eval computes exactly the numbers an uninterrupted one does."""
    answers, cloze = questions.answers, questions.cloze
    n_q = len(answers) // n_orders_ if answers else len(cloze or [])
    lengths = [sum(len(answers[o * n_q + q].prefix_ids) for o in range(n_orders_)) if answers else 0
               for q in range(n_q)]
    if cloze:
        lengths = [length + len(c.prompt_ids) for length, c in zip(lengths, cloze)]
    order = sorted(range(n_q), key=lambda q: (lengths[q], q))
    size = max(batch_size, work // max(n_settings, 1))
    return [order[i:i + size] for i in range(0, n_q, size)]


def score_resumably(lm: LoadedModel, plan: SplitPlan, texts: list[ScoredText], grid: Grid, layer: int, *,
                    saved: dict[str, np.ndarray], save, batching: Batching,
                    progress) -> dict[str, np.ndarray]:
    """Every score of ``grid``'s settings at ``layer`` on the plan's questions and KL on
    ``texts``, chunk by chunk (``question_chunks``): chunks in ``saved`` (a checkpoint's arrays)
    are taken as they are, each new one is added to it and ``save``d. Returns the per-setting
    arrays: diff and mass [n_settings, n_orders, n_q], cloze [n_settings, 2, n_q], kl and top1
    [n_settings, n_texts] (those the plan asks for)."""
    questions, orders = plan.questions, n_orders(plan.settings.orders)
    m, n_q = len(grid.thetas), len(questions.ids)
    batch_size, settings_per_pass = batching.batch_size, batching.settings_per_pass
    out: dict[str, np.ndarray] = {}
    if questions.answers:
        out["diff"], out["mass"] = np.zeros((m, orders, n_q)), np.zeros((m, orders, n_q))
    if questions.cloze is not None:
        out["cloze"] = np.zeros((m, 2, n_q))
    pad = lm.tokenizer.pad_token_id
    for c, chunk in enumerate(question_chunks(questions, orders, m, batch_size, batching.checkpoint_work)):
        key = f"L{layer}/q{c}"
        part_answers, part_cloze = questions.chunk(orders, chunk)
        if f"{key}/done" not in saved:
            scored = score(lm.model, part_answers, orders, [], source_layer=layer, thetas=grid.thetas,
                           pad_id=pad, batch_size=batch_size, settings_per_pass=settings_per_pass,
                           progress=progress, ranks=ranks(), cloze=part_cloze)
            for name, values in (("diff", scored.logit_diff), ("mass", scored.answer_mass),
                                 ("cloze", scored.cloze)):
                if values is not None:
                    saved[f"{key}/{name}"] = values
            saved[f"{key}/done"] = np.ones(1)
            save(saved)
        elif progress:
            progress(rank_work(m, part_answers, orders, 0, ranks(), len(part_cloze or [])))
        for name in ("diff", "mass", "cloze"):
            if name in out:
                out[name][..., chunk] = saved[f"{key}/{name}"]
    if texts:
        key = f"L{layer}/kl"
        if f"{key}/done" not in saved:
            scored = score(lm.model, [], orders, texts, source_layer=layer, thetas=grid.thetas, pad_id=pad,
                           batch_size=batch_size, settings_per_pass=settings_per_pass, progress=progress,
                           ranks=ranks())
            saved[f"{key}/kl"], saved[f"{key}/top1"], saved[f"{key}/done"] = (
                scored.kl, scored.top1, np.ones(1))
            save(saved)
        elif progress:
            progress(rank_work(m, [], orders, len(texts), ranks()))
        out["kl"], out["top1"] = saved[f"{key}/kl"], saved[f"{key}/top1"]
    return out


def split_work(plan: SplitPlan, n_settings: int, n_texts: int, batching: Batching) -> int:
    """The question×settings, item×settings and text×settings ``score_resumably`` reports on this
    rank for ``n_settings`` settings: what its progress bar counts to."""
    orders = n_orders(plan.settings.orders)
    work = rank_work(n_settings, [], orders, n_texts, ranks())
    for chunk in question_chunks(plan.questions, orders, n_settings, batching.batch_size,
                                 batching.checkpoint_work):
        part_answers, part_cloze = plan.questions.chunk(orders, chunk)
        work += rank_work(n_settings, part_answers, orders, 0, ranks(), len(part_cloze or []))
    return work


def split_datasets(plan: SplitPlan, texts: list[ScoredText], baseline: dict[str, np.ndarray]) -> dict:
    """The split's own datasets: question and neutral text ids, and the unsteered scores."""
    cloze = plan.questions.cloze
    data = {"question_ids": np.array(plan.questions.ids),
            "neutral_ids": np.array([text.prompt_id for text in texts], dtype=str)}
    if "diff" in baseline:
        data |= {"baseline_logit_diff": baseline["diff"].mean(0).astype(np.float32),
                 "baseline_answer_mass": baseline["mass"].mean(0).astype(np.float32),
                 "baseline_logit_diff_by_order": baseline["diff"].astype(np.float32),
                 "baseline_answer_mass_by_order": baseline["mass"].astype(np.float32)}
    if cloze:
        n_tokens = cloze_token_counts(cloze)
        data |= {"baseline_cloze_logprob": baseline["cloze"].astype(np.float32),
                 "baseline_cloze": cloze_preference(baseline["cloze"], n_tokens).astype(np.float32),
                 "cloze_n_tokens": n_tokens,
                 "cloze_n_chars": np.array([[c.positive_chars for c in cloze],
                                            [c.negative_chars for c in cloze]], dtype=np.int32),
                 "polarity": np.array([c.polarity for c in cloze])}
    return data


def group_datasets(plan: SplitPlan, span: Span, values: dict[str, np.ndarray],
                   calibration: GroupCalibration | None) -> dict:
    """One group's datasets: its scales (and with SCALE_UNIT=kl each vector's |θ| and the KL its
    search found), its scores [k, n_scales, ...] and KL, and a random group's directions."""
    g = span.group
    unit = plan.settings.grid.unit_norms.get(g.source_layer)
    data = {"scales": np.array(span.scales, dtype=np.float32)}
    if calibration is not None:  # the scales are KL targets, each vector's |θ| its own
        data |= {"norms": calibration.norms.astype(np.float32),
                 "calibration_kl": calibration.kl.astype(np.float32),
                 "calibration_reached": calibration.reached.astype(np.int8)}
    elif unit is not None:
        data["scale_fractions"] = np.array(span.scales, dtype=np.float64) / unit
    if "diff" in values:
        diff, mass = values["diff"], values["mass"]
        data |= {"logit_diff": diff.mean(2).astype(np.float32),
                 "answer_mass": mass.mean(2).astype(np.float32),
                 "logit_diff_by_order": diff.astype(np.float32),
                 "answer_mass_by_order": mass.astype(np.float32)}
    if "cloze" in values:  # [k, n_scales, 2, n_q]
        data |= {"cloze_logprob": values["cloze"].astype(np.float32),
                 "cloze": cloze_preference(values["cloze"],
                                           cloze_token_counts(plan.questions.cloze)).astype(np.float32)}
    if "kl" in values:  # [k, n_scales, n_neutral]
        data |= {"kl": values["kl"].astype(np.float32), "top1": values["top1"].astype(np.float32)}
    if g.method == "random":
        data["vectors"] = g.vectors
    return data


def split_checkpoint(store: str | Path, plan: SplitPlan, texts: list[ScoredText],
                     batching: Batching) -> Checkpoint:
    """Where the split's partial work is kept beside the store, named by everything it depends on:
    the split's settings, whether it is fresh, the code, each stale group and its settings, the
    neutral texts, the chunks' size and the batch size."""
    return Checkpoint(store, plan.split.path, {"split": plan.split.recorded, "fresh": plan.fresh,
                                               "version": plan.settings.version,
                                               "groups": [[g.label, settings] for g, settings in plan.todo],
                                               "texts": [t.prompt_id for t in texts],
                                               "chunks": batching.checkpoint_work,
                                               "batch_size": batching.batch_size})


def calibrate(plan: SplitPlan, calibrator: Calibrator | None, saved: dict[str, np.ndarray],
              save) -> dict[str, GroupCalibration]:
    """With SCALE_UNIT=kl, each stale group's |θ| per KL target by label (none otherwise): taken
    from ``saved`` (a checkpoint's arrays) where a killed run found it, else searched by
    ``calibrator``; every calibration is then added to ``saved`` and ``save``d."""
    if plan.settings.grid.unit != "kl":
        return {}
    if calibrator is None:
        raise ValueError("SCALE_UNIT=kl needs a calibrator")
    calibrator.adopt(saved_calibrations(saved))
    calibrations = calibrator.of([g for g, _ in plan.todo])
    saved |= calibration_arrays(calibrator)
    save(saved)
    return calibrations


def split_grids(plan: SplitPlan, groups: list[VectorGroup], width: int,
                calibrations: dict[str, GroupCalibration]) -> dict[int, Grid]:
    """One θ matrix per source layer of the stale groups (the first of ``groups``' layers when none
    is stale): every group's (vector, scale) settings, stacked, the unsteered baseline first in the
    first layer's."""
    layers = sorted({g.source_layer for g, _ in plan.todo}) or [groups[0].source_layer]
    grid = plan.settings.grid
    return {layer: build_grid([g for g, _ in plan.todo if g.source_layer == layer], grid.at(layer), width,
                              grid.raw, baseline=n == 0,
                              norms={label: cal.norms for label, cal in calibrations.items()})
            for n, layer in enumerate(layers)}


def score_split(lm: LoadedModel, plan: SplitPlan, texts: list[ScoredText], grids: dict[int, Grid], *,
                saved: dict[str, np.ndarray], save, batching: Batching
                ) -> tuple[list[tuple[Span, dict[str, np.ndarray]]], dict[str, np.ndarray] | None]:
    """Every layer's ``grids`` scored (``score_resumably``) under one progress bar: each group's
    values [k, n_scales, ...] by score, with where it sat in its grid, and the baseline's."""
    total = sum(split_work(plan, len(grid.thetas), len(texts), batching) for grid in grids.values())
    results, baseline = [], None
    with progress_bar(total, f"eval {plan.split.name}", "question×setting") as bar:
        for layer, grid in grids.items():
            per_setting = score_resumably(lm, plan, texts, grid, layer, saved=saved, save=save,
                                          batching=batching, progress=bar.update)
            if grid.baseline_row is not None:
                baseline = {name: values[grid.baseline_row] for name, values in per_setting.items()}
            per_group = {name: grid.unpack(values) for name, values in per_setting.items()}
            results += [(span, {name: values[span.group.label] for name, values in per_group.items()})
                        for span in grid.spans]
    return results, baseline


def group_attrs(lm: LoadedModel, plan: SplitPlan, group: VectorGroup, settings: dict, site: str, started: str,
                seconds: float) -> dict:
    """What one group's eval records beside its datasets: its settings and provenance, how its
    settings were made (layer, site, sign, unit) and the vector group it scored."""
    grid = plan.settings.grid
    unit = grid.unit_norms.get(group.source_layer)
    return run_attrs(settings, plan.settings.version, started, seconds, source_layer=group.source_layer,
                     site=site, sign_free=int(group.sign_free), raw=int(grid.raw),
                     orders=plan.settings.orders, score=plan.settings.scores, scale_unit=grid.unit,
                     unit_norm=np.nan if unit is None else unit,
                     vector_group=("" if group.method == "random"
                                   else vectors_path(lm.key, plan.split.behavior, group.method, group.run)),
                     nproc=ranks().size)


def write_split(store: str | Path, lm: LoadedModel, plan: SplitPlan, texts: list[ScoredText],
                sites: dict[int, str], scored: tuple[list, dict[str, np.ndarray] | None],
                calibrations: dict[str, GroupCalibration], started: str, seconds: float) -> None:
    """The split's baseline and every group ``scored`` (``score_split``), written to ``store`` in
    one atomic update."""
    results, baseline = scored
    settings_by_label = {g.label: settings for g, settings in plan.todo}
    split_attrs = run_attrs(plan.split.recorded, plan.settings.version, started, seconds,
                            skipped=plan.questions.skipped, orders=plan.settings.orders,
                            score=plan.settings.scores, behavior=plan.split.behavior, nproc=ranks().size)
    written = []
    for span, values in results:
        g = span.group
        attrs = group_attrs(lm, plan, g, settings_by_label[g.label], sites[g.source_layer], started, seconds)
        written.append((g.method, g.run, group_datasets(plan, span, values, calibrations.get(g.label)),
                        attrs))
    split = (split_datasets(plan, texts, baseline), split_attrs)
    write_eval_results(store, lm, plan.split.behavior, plan.split.name, split, written,
                       replace_split=plan.fresh)


def evaluate_split(store: str | Path, lm: LoadedModel, plan: SplitPlan, groups: list[VectorGroup],
                   texts: list[ScoredText], sites: dict[int, str], batching: Batching,
                   calibrator: Calibrator | None = None) -> None:
    """Score every group of ``plan.todo`` (and the unsteered baseline) on the plan's questions and
    KL on ``texts``, and write them to ``store`` (rank 0, one atomic update); ``groups`` are all
    of eval's groups (the baseline's layer when none is stale), ``sites`` each layer's site.
    With SCALE_UNIT=kl, ``calibrator`` finds each group's |θ| per KL target (on the val neutral
    texts, the same for every split). Work done so far is kept beside the store
    (``steerlab.store.Checkpoint``) after every chunk of ``batching.checkpoint_work``
    question×settings, so a killed eval rerun with the same settings and code picks up where it
    stopped."""
    started, t0 = now(), time.perf_counter()
    checkpoint = split_checkpoint(store, plan, texts, batching)
    saved = checkpoint.load()
    save = checkpoint.save if ranks().writer else (lambda _arrays: None)
    calibrations = calibrate(plan, calibrator, saved, save)
    grids = split_grids(plan, groups, lm.d_model, calibrations)
    questions = plan.questions
    say(f"… [{plan.split.name}] {sum(len(g.thetas) for g in grids.values())} settings × {len(questions.ids)} "
        f"questions ({plan.settings.scores}: {n_orders(plan.settings.orders)} letter order(s)"
        + (", cloze" if questions.cloze else "") + f"), and KL on {len(texts)} neutral texts")
    scored = score_split(lm, plan, texts, grids, saved=saved, save=save, batching=batching)
    seconds = ranks().largest(time.perf_counter() - t0)
    if ranks().writer:  # rank 0 alone writes: baseline and every group in one atomic update
        write_split(store, lm, plan, texts, sites, scored, calibrations, started, seconds)
        checkpoint.discard()
    say(f"{plan.split.path}: wrote baseline and {len(scored[0])} groups in {seconds:.0f}s")
