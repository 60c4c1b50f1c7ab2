"""The cross-behaviour matrix (`make matrix`, steerlab/cli/matrix.py): each behaviour's setting of one
method chosen on its own val questions, then every chosen θ, random references and the unsteered
model on every behaviour's test questions, and the tables, datasets and page made of them.
docs/DESIGN.md, "The code"; the runner's docstring says what a cell is."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from steerlab.base.progress import progress_bar, say, say_skipped
from steerlab.lm.model import LoadedModel
from steerlab.lm.steered import SETTINGS_PER_PASS
from steerlab.measure.analysis import EvalGroup, Split, best_of_method, cloze_row_at, row_at
from steerlab.measure.analysis import select_by as available_score
from steerlab.measure.calibration import Calibrator
from steerlab.measure.choice import VectorChoice, theta_of
from steerlab.measure.cloze import cloze_preference
from steerlab.measure.grid import build_grid, random_directions
from steerlab.measure.scales import ScaleUnit, absolute
from steerlab.measure.scores import SCORES_IN, Score, ScoreSet, question_ids, score, usable_questions
from steerlab.measure.side_effects import ScoredText
from steerlab.measure.statistics import (
    Standing,
    Stat,
    against_random,
    cloze_row,
    row,
)
from steerlab.questions.cloze_form import ClozeItem, cloze_token_counts
from steerlab.questions.data import Item
from steerlab.questions.prompts import AnswerTokens
from steerlab.store import VectorGroup, random_run


@dataclass
class Questions:
    """One behaviour's questions of one split, in the forms the scores ask them in."""
    answers: list[AnswerTokens]  # letter: every question as written, then mirrored; empty without it
    cloze: list[ClozeItem] | None  # None without the cloze score
    ids: list[str]


@dataclass
class Source:
    """One behaviour's chosen setting: what its row of the matrix adds."""
    behavior: str
    choice: VectorChoice | None  # None: no setting of the method was eligible on val
    theta: np.ndarray | None
    source_layer: int
    val_delta: Stat | None = None  # the chosen setting's Δ (of the score chosen by) on its own val
    val_kl: Stat | None = None
    grid_scale: float | None = None  # the chosen scale as eval stores it: a KL target (kl), else |θ|


def questions_of(tokenizer, items: list[Item], scores: ScoreSet) -> tuple[Questions, list[str]]:
    """The ``items`` usable in every one of ``scores`` (letter in both orders), and one message per
    item left out (``steerlab.measure.scores.usable_questions``)."""
    answers, cloze, skipped = usable_questions(tokenizer, items, "both", scores)
    ids = question_ids(answers, cloze, 2)
    return Questions(answers, cloze, ids), skipped


def questions_by_split(tokenizer, items: dict[str, dict[str, list[Item]]], scores: ScoreSet
                       ) -> dict[tuple[str, str], Questions]:
    """``questions_of`` for each split's behaviours' ``items`` (split -> behaviour -> items), keyed
    (split, behaviour); each item left out is said, and a behaviour with no usable question in a
    split stops the run."""
    found = {}
    for split, by_name in items.items():
        for name, chosen in by_name.items():
            found[split, name], skipped = questions_of(tokenizer, chosen, scores)
            say_skipped(skipped, bool(found[split, name].answers or found[split, name].cloze),
                        f"no usable {split} question of {name}: every item was skipped")
    return found


def val_layer(groups: list[VectorGroup]) -> int:
    """The source layer a behaviour's row is chosen at: its first group's."""
    return groups[0].source_layer


def behaviour_source(lm: LoadedModel, name: str, groups: list[VectorGroup], questions: Questions,
                  texts: list[ScoredText], *, method: str, scales: list[float], scale_unit: ScaleUnit,
                  unit_norm: float | None, select_by: Score, kl_max: float, batch_size: int,
                  store: str | Path, calibrator: Calibrator | None = None) -> Source:
    """Behaviour ``name``'s setting chosen on its own val ``questions``, as the report chooses:
    its ``method`` groups at ``val_layer(groups)`` scored at ``scales`` (in ``scale_unit``, whose
    ``unit_norm`` is the median ‖h_S‖ there, None for abs; with kl, ``calibrator`` finds each
    vector's |θ| per target), the largest ``select_by`` score among the settings with KL ≤
    ``kl_max``; θ is read from ``store``."""
    layer = val_layer(groups)
    by_layer = [g for g in groups if g.source_layer == layer]
    if len(by_layer) < len(groups):
        say(f"{name}: {method} groups at several layers; the matrix takes layer {layer}'s")
    norms = {}
    if scale_unit == "kl":
        norms = {label_: cal.norms for label_, cal in calibrator.of(by_layer).items()}
        grid = build_grid(by_layer, scales, lm.d_model, norms=norms)
    else:
        grid = build_grid(by_layer, absolute(scales, scale_unit, unit_norm), lm.d_model)
    work = len(questions.answers) + len(questions.cloze or []) + len(texts)
    with progress_bar(len(grid.thetas) * work, f"val {name}", "question×setting") as bar:
        scored = score(lm.model, questions.answers, 2, texts, source_layer=layer, thetas=grid.thetas,
                       pad_id=lm.tokenizer.pad_token_id, batch_size=batch_size,
                       settings_per_pass=SETTINGS_PER_PASS, progress=bar.update, cloze=questions.cloze)
    unpacked = {name_: grid.unpack(values) for name_, values in
                (("diff", scored.logit_diff), ("mass", scored.answer_mass), ("kl", scored.kl),
                 ("top1", scored.top1)) if values is not None}
    split = Split("val", np.array(questions.ids), None, None, {}, "both", name)
    if scored.logit_diff is not None:
        split.baseline, split.baseline_mass = scored.logit_diff[0].mean(0), scored.answer_mass[0].mean(0)
        split.baseline_by_order = scored.logit_diff[0]
    if scored.cloze is not None:
        counts = cloze_token_counts(questions.cloze)
        preference = cloze_preference(scored.cloze, counts)  # [n_settings, n_q]
        unpacked["cloze"] = grid.unpack(preference)
        split.cloze_baseline = preference[0]
        split.polarity = np.array([c.polarity for c in questions.cloze])
    for span in grid.spans:
        g = span.group
        part = {name_: values[g.label] for name_, values in unpacked.items()}
        split.groups[g.label] = EvalGroup(
            g.method, g.run, part["diff"].mean(2) if "diff" in part else None,
            part["mass"].mean(2) if "mass" in part else None, np.array(span.scales), layer, {},
            part.get("diff"), part.get("kl"), part.get("top1"), part.get("cloze"), norms=norms.get(g.label))
    by = available_score(split, select_by)
    chosen = best_of_method(method, split, kl_max, by)
    if chosen is None:
        say(f"{name}: no {method} setting keeps the answer mass up with KL ≤ {kl_max} "
            "on val; its row stays empty")
        return Source(name, None, None, layer)
    group, vector, s = chosen
    choice = VectorChoice(group.method, group.run, vector, group.norm(vector, s))
    theta, _ = theta_of(store, lm.key, name, choice)
    row = (cloze_row_at if by == "cloze" else row_at)(group, vector, s, split)
    say(f"{name}: chose {group.method}/{group.run} #{vector} at {row.scale_text} on val by {by} "
        f"(Δ {row.delta.value:+.3f}, KL {row.kl.value:.3f})")
    return Source(name, choice, theta, layer, row.delta, row.kl, float(group.scales[s]))


@dataclass
class Table:
    """Test-split numbers of one score: rows are the chosen θ of each behaviour and the random
    references, columns the behaviours whose questions are asked. Per question: letter keeps
    [2 orders, n_q] logit differences (and answer masses), cloze [n_q] preferences in nats per
    token with each question's polarity class."""
    score: Score  # letter or cloze
    targets: list[str]
    question_ids: dict[str, list[str]]
    random_scales: list[float]
    baseline: dict[str, np.ndarray] = field(default_factory=dict)  # target -> per question
    baseline_mass: dict[str, np.ndarray] = field(default_factory=dict)  # letter: [2, n_q]
    chosen: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # source -> target -> ...
    chosen_mass: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    # scale -> target -> [n_random, ...]
    random: dict[float, dict[str, np.ndarray]] = field(default_factory=dict)
    polarity: dict[str, np.ndarray] = field(default_factory=dict)  # cloze: target -> [n_q]

    def delta(self, values: np.ndarray, target: str):
        """(Δ, its shift) of one row's per-question values on ``target``: the order-mean Δ and the
        letter shift, or the polarity-paired cloze Δ and the polarity shift."""
        base = self.baseline[target]
        if self.score == "cloze":
            r = cloze_row(0.0, values, base, self.polarity[target])
            return r.delta, r.polarity_shift
        mean = values.mean(-2)  # over the orders
        r = row(0.0, mean, np.zeros_like(mean), base.mean(0), values)
        return r.delta, r.letter_shift

    def per_question_delta(self, values: np.ndarray, target: str) -> np.ndarray:
        """[..., n_q] Δ per question of one row's (or rows') values on ``target``: the cloze
        preference minus unsteered, or the order-mean logit difference minus unsteered's."""
        base = self.baseline[target]
        if self.score == "cloze":
            return values - base
        return values.mean(-2) - base.mean(0)

    def cell(self, source: str, target: str):
        return self.delta(self.chosen[source][target], target)

    def standing(self, source: str, target: str, scale: float) -> Standing:
        """``source``'s Δ on ``target`` against the random directions at its (absolute) ``scale``:
        Δ − their mean with a paired interval, and the share of them it beats."""
        draws = self.per_question_delta(self.random[scale][target], target)
        return against_random(self.per_question_delta(self.chosen[source][target], target), draws,
                              self.polarity[target] if self.score == "cloze" else None)

    def random_cell(self, scale: float, target: str):
        return self.delta(self.random[scale][target], target)

    def datasets(self, sources: list[Source]) -> dict[str, np.ndarray]:
        prefix = "" if self.score == "letter" else "cloze_"
        shift = "letter_shift" if self.score == "letter" else "polarity_shift"
        names = [s.behavior for s in sources if s.choice is not None]
        cells = {(s, t): self.cell(s, t) for s in names for t in self.targets}
        randoms = {(r, t): self.random_cell(r, t) for r in self.random_scales for t in self.targets}

        def grid(pick) -> np.ndarray:
            return np.array([[pick(*cells[s, t]) for t in self.targets] for s in names],
                            np.float32).reshape(len(names), len(self.targets))

        def random_grid(pick) -> np.ndarray:
            return np.array([[pick(*randoms[r, t]) for t in self.targets] for r in self.random_scales],
                            np.float32).reshape(len(self.random_scales), len(self.targets))

        def value(stat_):
            return np.nan if stat_ is None else stat_.value

        chosen_sources = [s for s in sources if s.choice is not None]
        standings = {(s.behavior, t): self.standing(s.behavior, t, abs(s.grid_scale))
                     for s in chosen_sources for t in self.targets}

        def standing_grid(pick) -> np.ndarray:
            return np.array([[pick(standings[s, t]) for t in self.targets] for s in names],
                            np.float32).reshape(len(names), len(self.targets))

        out = {f"{prefix}delta": grid(lambda d, _: d.value), f"{prefix}delta_low": grid(lambda d, _: d.low),
               f"{prefix}delta_high": grid(lambda d, _: d.high),
               f"{prefix}{shift}": grid(lambda _, x: value(x)),
               f"{prefix}random_delta": random_grid(lambda d, _: d.value),
               f"{prefix}random_delta_low": random_grid(lambda d, _: d.low),
               f"{prefix}random_delta_high": random_grid(lambda d, _: d.high),
               f"{prefix}beyond_random": standing_grid(lambda st: st.beyond.value),
               f"{prefix}beyond_random_low": standing_grid(lambda st: st.beyond.low),
               f"{prefix}beyond_random_high": standing_grid(lambda st: st.beyond.high),
               f"{prefix}random_share_beaten": standing_grid(lambda st: st.share_beaten)}
        for t in self.targets:  # every per-question number, per target behaviour
            n_q = len(self.question_ids[t])
            empty = np.zeros((0, *self.baseline[t].shape), np.float32)
            chosen = np.stack([self.chosen[s][t] for s in names]) if names else empty
            random = np.stack([self.random[r][t] for r in self.random_scales])
            if self.score == "letter":
                base = row(0.0, self.baseline[t].mean(0), self.baseline_mass[t].mean(0),
                           self.baseline[t].mean(0), self.baseline[t])
                out |= {f"questions/{t}/baseline_by_order": self.baseline[t].astype(np.float32),
                        f"questions/{t}/chosen_by_order": chosen.astype(np.float32),
                        f"questions/{t}/random_by_order": random.astype(np.float32),
                        f"questions/{t}/baseline_consistency": np.array(
                            [base.consistency.value, base.consistency.low, base.consistency.high],
                            np.float32)}
            else:
                out |= {f"questions/{t}/cloze_baseline": self.baseline[t].astype(np.float32),
                        f"questions/{t}/cloze_chosen": chosen.astype(np.float32).reshape(len(names), n_q),
                        f"questions/{t}/cloze_random": random.astype(np.float32),
                        f"questions/{t}/polarity": self.polarity[t]}
        return out


@dataclass
class TestRun:
    """Everything measured on the test split: a table per score, and each row's KL."""
    tables: dict[str, Table]
    kl: dict[str, np.ndarray]  # source -> [n_neutral] on the test neutral prompts
    random_kl: dict[float, np.ndarray]  # scale -> [n_random, n_neutral]


def common_datasets(sources: list[Source], measured: TestRun) -> dict[str, np.ndarray]:
    """What every score's table shares: the choices, their θ, val numbers and test KL."""
    table = next(iter(measured.tables.values()))
    chosen = [s for s in sources if s.choice is not None]
    return {
        "sources": np.array([s.behavior for s in sources]),
        "targets": np.array(table.targets),
        "chosen_method": np.array([s.choice.method if s.choice else "" for s in sources]),
        "chosen_run": np.array([s.choice.run if s.choice else "" for s in sources]),
        "chosen_index": np.array([s.choice.index if s.choice else -1 for s in sources]),
        "chosen_scale": np.array([s.choice.scale if s.choice else np.nan for s in sources], np.float32),
        "chosen_grid_scale": np.array([s.grid_scale if s.choice else np.nan for s in sources], np.float32),
        "chosen_layer": np.array([s.source_layer for s in sources]),
        "thetas": np.stack([s.theta if s.theta is not None else np.full_like(chosen[0].theta, np.nan)
                            for s in sources]) if chosen else np.zeros((0, 0), np.float32),
        "val_delta": np.array([s.val_delta.value if s.val_delta else np.nan for s in sources], np.float32),
        "val_kl": np.array([s.val_kl.value if s.val_kl else np.nan for s in sources], np.float32),
        "rows": np.array([s.behavior for s in chosen]),
        "test_kl": np.array([measured.kl[s.behavior].mean() for s in chosen], np.float32),
        "random_scales": np.array(table.random_scales, np.float32),
        "random_kl": np.array([measured.random_kl[r].mean() for r in table.random_scales], np.float32),
    } | {f"questions/{t}/question_ids": np.array(table.question_ids[t]) for t in table.targets}


def evaluate_on_test(lm: LoadedModel, sources: list[Source], questions: dict[str, Questions],
                     texts: list[ScoredText], *, scores: ScoreSet, scales: list[float], n_random: int,
                     seed: int, batch_size: int, calibrator: Calibrator | None = None) -> TestRun:
    """Every chosen θ, ``n_random`` random directions (``seed``) at each chosen scale (none chosen:
    the smallest of ``scales``) and the unsteered model on every behaviour's test ``questions``
    (behaviour -> its questions, the columns in order), in each of ``scores`` (letter, cloze or
    both): one ``score`` per source layer over all behaviours' questions at once. With
    ``calibrator`` (SCALE_UNIT=kl) the chosen scales are KL targets and each random direction is
    added at its own |θ| for each: the references cost what the chosen rows cost."""
    targets = list(questions)
    kinds = SCORES_IN[scores]
    letter_blocks, cloze_blocks, asked, asked_cloze = {}, {}, [], []
    for name in targets:  # each letter block is order-major on its own: originals, then mirrors
        q = questions[name]
        letter_blocks[name] = slice(len(asked), len(asked) + len(q.answers))
        asked += q.answers
        cloze_blocks[name] = slice(len(asked_cloze), len(asked_cloze) + len(q.cloze or []))
        asked_cloze += q.cloze or []
    chosen = [s for s in sources if s.choice is not None]
    in_kl = calibrator is not None
    random_scales = sorted({abs(s.grid_scale) for s in chosen}) or [min(scales)]
    ids = {t: questions[t].ids for t in targets}
    tables = {score_name: Table(score_name, targets, ids, random_scales) for score_name in kinds}
    if "cloze" in tables:
        tables["cloze"].polarity = {t: np.array([c.polarity for c in questions[t].cloze])
                                    for t in targets}
    measured = TestRun(tables, {}, {})
    counts = cloze_token_counts(asked_cloze) if asked_cloze else None
    layers = sorted({s.source_layer for s in sources})
    for n, layer in enumerate(layers):
        here = [s for s in chosen if s.source_layer == layer]
        directions = random_directions(n_random, lm.d_model, seed, layer)  # eval's control's
        rows = [torch.zeros(lm.d_model)] + [torch.from_numpy(s.theta) for s in here]
        if in_kl:  # each direction at the |θ| that costs each chosen target
            randoms = VectorGroup("random", random_run(layer), directions.float().numpy(), layer,
                                  sign_free=False)
            sizes = calibrator.of([randoms])[randoms.label].norms  # [n_random, len(calibrator.targets)]
            at = [int(np.argmin(np.abs(np.array(calibrator.targets) - r))) for r in random_scales]
            rows += [(sizes[i, column] * d).float() for column in at for i, d in enumerate(directions)]
        else:
            rows += [(r * d).float() for r in random_scales for d in directions]
        thetas = torch.stack(rows)
        total = len(thetas) * (len(asked) + len(asked_cloze) + len(texts))
        say(f"… [test] layer {layer}: {len(thetas)} settings × {len(ids)} behaviours' questions "
            f"({scores}), and KL on {len(texts)} neutral texts")
        with progress_bar(total, f"test, layer {layer}", "question×setting") as bar:
            scored = score(lm.model, asked, 1, texts, source_layer=layer, thetas=thetas,
                           pad_id=lm.tokenizer.pad_token_id, batch_size=batch_size,
                           settings_per_pass=SETTINGS_PER_PASS, progress=bar.update,
                           cloze=asked_cloze if "cloze" in tables else None)
        per_target = {}
        for t in targets:
            if "letter" in tables:
                block = letter_blocks[t]
                per_target["letter", t] = (scored.logit_diff[:, 0, block].reshape(len(thetas), 2, -1),
                                           scored.answer_mass[:, 0, block].reshape(len(thetas), 2, -1))
            if "cloze" in tables:
                block = cloze_blocks[t]
                per_target["cloze", t] = (cloze_preference(scored.cloze[:, :, block], counts[:, block]), None)
        for (score_name, t), (values, mass) in per_target.items():
            table = tables[score_name]
            if n == 0:
                table.baseline[t] = values[0]
                if mass is not None:
                    table.baseline_mass[t] = mass[0]
            for i, s in enumerate(here, start=1):
                table.chosen.setdefault(s.behavior, {})[t] = values[i]
            first = 1 + len(here)
            for j, r in enumerate(random_scales):
                table.random.setdefault(r, {})[t] = values[first + j * n_random: first + (j + 1) * n_random]
        for i, s in enumerate(here, start=1):
            measured.kl[s.behavior] = scored.kl[i]
        for j, r in enumerate(random_scales):  # last layer's if several
            measured.random_kl[r] = scored.kl[1 + len(here) + j * n_random:
                                              1 + len(here) + (j + 1) * n_random]
    return measured


def cross_behaviour(lm: LoadedModel, groups: dict[str, list[VectorGroup]],
                    questions: dict[tuple[str, str], Questions], texts: dict[str, list[ScoredText]], *,
                    method: str, scales: list[float], scale_unit: ScaleUnit, units: dict[str, float | None],
                    select_by: Score, kl_max: float, scores: ScoreSet, n_random: int, seed: int,
                    batch_size: int, store: str | Path) -> tuple[list[Source], TestRun]:
    """The matrix: each behaviour's setting chosen on its val questions (``behaviour_source``; its
    ``groups``, ``units`` its median ‖h_S‖ at ``val_layer``, None for abs), then every choice,
    random directions and the unsteered model on every behaviour's test questions
    (``evaluate_on_test``). ``questions`` and ``texts`` are keyed by split as ``questions_by_split``
    and the neutral texts of "val" and "test". With SCALE_UNIT=kl one calibrator, on the val texts,
    sizes every vector and random direction."""
    calibrator = (Calibrator(lm.model, texts["val"], lm.tokenizer.pad_token_id, {}, scales, batch_size)
                  if scale_unit == "kl" else None)
    sources = []
    for name, found in groups.items():
        if calibrator is not None:  # the search's first probe and ceiling: the first behaviour's ‖h_S‖
            calibrator.units.setdefault(val_layer(found), units[name])
        sources.append(behaviour_source(
            lm, name, found, questions["val", name], texts["val"], method=method, scales=scales,
            scale_unit=scale_unit, unit_norm=units[name], select_by=select_by, kl_max=kl_max,
            batch_size=batch_size, store=store, calibrator=calibrator))
    measured = evaluate_on_test(lm, sources, {name: questions["test", name] for name in groups},
                                texts["test"], scores=scores, scales=scales, n_random=n_random, seed=seed,
                                batch_size=batch_size, calibrator=calibrator)
    return sources, measured


def matrix_datasets(sources: list[Source], measured: TestRun) -> dict[str, np.ndarray]:
    """Every dataset of /<model>/matrix/<method>: the shared ones and each score's table's."""
    datasets = common_datasets(sources, measured)
    for table in measured.tables.values():
        datasets |= table.datasets(sources)
    return datasets
