"""The study's page (`make study`): docs/study-<model>-<date>.md and its figures, from the plain
values of ``steerlab.measure.study`` and ``steerlab.measure.dose``.

- what ran, and the wall time and peak memory of each stage;
- a ranking table per score (cloze, the choice's score, and letter): each group's setting chosen on
  val and its test Δ; where it stands in the first-order null of random directions at its cost (its
  percentile, and its p-value with the questions resampled, corrected by Holm over every claim of
  the page); the share of the measured random draws it beats; its efficiency against the ceiling
  at the same cost; the share of questions it moves the wrong way; its confound and KL; and
  whether its rank above the next holds (also corrected);
- the prompting baseline (the instruction, both scores, its KL);
- the first-order null against the measured draws (question by question) at each cost;
- PI's convergence record and CAA's pair cosines;
- the dose–response ladder to breakdown, and its figure;
- the seed's own table format on val beside the seed's Qwen3 figures.
"""
from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

import numpy as np

from steerlab.base.files import write_atomically
from steerlab.measure.analysis import Split
from steerlab.measure.dose import (
    BREAKDOWN,
    dose_curves,
    first_order_fails,
    largest_before_breakdown,
    leaves_band,
)
from steerlab.measure.floor import first_order_null
from steerlab.measure.scores import SCORE_NAMES, Score
from steerlab.measure.statistics import Stat
from steerlab.measure.study import (
    Convergence,
    Entry,
    PromptRow,
    Rank,
    SeedCell,
    Spread,
    ValidationRow,
    caa_pair_cosines,
    convergence,
    seed_table,
    spreads,
    stage_times,
    study,
    transfers,
    validations,
)
from steerlab.render.figures import dose_figure, random_distribution_figure
from steerlab.store import read_dose

# The seed experiment's figures (its log of 2026-01-27, as shared with this project): single
# order, picked on the questions they were scored on, scales as absolute L2 norms at layer 7.
# Keys: method -> scale -> (survival %, mean logit diff, Δ).
SEED_QWEN3_0_6B = {"CAA": {-10: (1.7, -5.19, -2.41), -5: (18.3, -3.31, -0.53), -2: (16.7, -3.06, -0.28),
                           0: (22.5, -2.78, 0.0), 2: (28.3, -2.31, 0.47), 5: (31.7, -1.84, 0.94),
                           7: (19.2, -2.52, 0.26), 10: (0.8, -5.75, -2.97)}}
SEED_QWEN3_14B = {"CAA": {5: (29.0, -3.08, 0.25), 10: (30.5, -2.88, 0.46), 15: (36.0, -2.37, 0.96),
                          20: (44.0, -1.78, 1.55)},
                  "PI@CAA (mean of its vectors)": {5: (35.2, -2.54, 0.79), 10: (41.8, -1.77, 1.57),
                                                   15: (41.9, -1.93, 1.40), 20: (35.0, -2.45, 0.88)}}


def study_page(store: str, val: Split, test: Split, *, model_key: str, kl_max: float, by: Score, out: Path,
               command: str, seconds: float | None = None, prompting=None) -> tuple[Path, Path]:
    """Write the page and its figures into ``out``, named for the model and today's date; returns
    the page's and the main figure's paths. ``command`` and ``seconds`` (the study's wall time) are
    what the page says ran; ``prompting`` is the stored prompting baseline on test
    (``steerlab.measure.analysis.read_prompting``), if any."""
    done = study(store, model_key, val, test, kl_max, by, prompting)
    found, ranks, n_claims = done.entries, done.ranks, done.n_claims
    inputs, null_of, prompting = done.inputs, done.nulls, done.prompting
    date = datetime.date.today().isoformat()
    name = f"study-{model_key.replace('/', '_')}-{date}"
    figure = random_distribution_figure(found, out, f"{name}.png",
                                        f"{model_key}, {val.behavior}: test Δ against random directions at "
                                        "the same cost")
    lines = [f"# The seed experiment's question on {model_key} ({date})", "",
             f"Command: `{command}`. Machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores"
             + (f"; wall time {seconds / 60:.0f} min" if seconds else "") + ".",
             f"Behaviour {val.behavior}; val {val.n_questions} questions (the choice, by {by}, "
             f"KL ≤ {kl_max}), test {test.n_questions} questions (what is reported).", ""]
    lines += stages_section(f"{store}.{model_key}.stages")
    lines += ["## How to read the rankings", "",
              "- **null**: where the setting's Δ falls among "
              + (f"{next(iter(null_of.values())).headline.size} random directions at its cost, to first order"
                 if null_of else "random directions (no first-order null: run `make gradients`)")
              + " (docs/conventions.md, \"Floor and ceiling\"): its percentile, and p = the "
              "probability that a random direction does at least as well on a resample of the questions.",
              f"- **beyond random** is claimed where p, corrected by Holm over all {n_claims} claims of this "
              "page (every method in both scores, and every rank above the next), is at most 0.05.",
              "- **measured draws**: the share of eval's random directions at the same cost (measured, "
              "both signs) that the setting beats.",
              "- **efficiency**: the setting's Δ over the ceiling direction's Δ (fitted on the same score, "
              "λ and cost chosen on val) at the same cost on test, with a 95% interval over questions.",
              "- **anti-steerable**: the share of test questions the setting moves the wrong way (Δ_q < 0).",
              ""]
    for score in SCORE_NAMES:
        if ranks[score]:
            lines += ([f"## Ranking by the {score} score (test)", ""] + ranking_table(ranks[score], score)
                      + [""])
    if prompting is not None:
        lines += ["## Just ask: the prompting baseline (test)", "",
                  "The unsteered model with an instruction in its system turn (it replaces the template's "
                  "default one), against the plain prompts, on the same test questions; its cost is the KL "
                  "of the plain model's next-token distributions against the instructed one's over the test "
                  "neutral texts' continuations. It sits at its own cost: compare it with the methods on the "
                  "dose ladder below.",
                  ""] + prompting_section(prompting) + [""]
    lines += (["## The random distribution at each chosen cost (test)", ""]
              + spread_table(spreads(test, found)))
    if inputs is not None:
        lines += ["", "### The first-order null against measured draws", ""]
        lines += validation_table(validations(test, found, inputs, null_of))
    lines += ["", "## Inside the methods", ""] + methods_section(store, model_key, val.behavior, found)
    carried = transfers(store, model_key, val.behavior)
    if carried:
        lines += ["", "## Behaviour or form? The chosen vectors on every behaviour's questions (test)", ""]
        lines += transfer_table(carried, found)
    dose = read_dose(store, model_key, val.behavior, "test")
    if dose is not None:
        lines += ["", "## At what cost: the ladder to breakdown (test)", ""]
        lines += dose_section(dose, found, inputs, test, out, name, model_key, prompting)
    lines += ["", "## The seed's table format (val: every scale; both orders)", ""]
    lines += seed_format(seed_table(val), val)
    lines += ["", "The seed's figures (single order, chosen on the questions they were scored on, "
              "scales as L2 norms at layer 7 of Qwen3):", ""] + seed_reference()
    lines += ["", "## Figure", "", f"![test Δ against random]({figure.name})", ""]
    path = write_atomically(out / f"{name}.md", lambda p_: p_.write_text("\n".join(lines)))
    return path, figure


def _fmt(s: Stat | None, digits: int = 3, signed: bool = True) -> str:
    return "–" if s is None else s.fmt(digits, signed)


def _p(value: float) -> str:
    return f"{value:.2g}" if value >= 0.001 else f"{value:.1e}"


def stages_section(path: str) -> list[str]:
    found = stage_times(path)
    if not found:
        return []
    lines = ["| stage | wall time | peak resident memory |", "|---|---|---|"]
    lines += [f"| {name} | {seconds / 60:.1f} min | {peak / 1024:.1f} GiB |" for name, seconds, peak in found]
    return lines + [f"| all | {sum(s for _, s, _ in found) / 60:.0f} min | |", ""]


def ranking_table(ranks: list[Rank], score: Score) -> list[str]:
    unit = "nats/token, polarity-paired" if score == "cloze" else "order-mean logit diff"
    confound = "polarity shift" if score == "cloze" else "letter shift (steered)"
    lines = [f"| rank | method | chosen on val | Δ ({unit}) | null: percentile, p (Holm) | measured draws | "
             f"efficiency | anti-steerable | {confound} | KL (test) | rank vs next (Holm) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(ranks, 1):
        e, st = r.entry, r.standing
        row_ = e.cloze if score == "cloze" else e.letter
        shift = row_.polarity_shift if score == "cloze" else row_.letter_shift
        null = "–"
        if score in e.null:
            adjusted, holds = e.beyond[score]
            null = (f"{e.null[score].percentile:.1f}%, p {_p(e.null[score].p_value)} ({_p(adjusted)})"
                    + (" **beyond**" if holds else ""))
        verdict = "–"
        if r.gap_to_next is not None:
            adjusted, holds = r.gap_holds or (float("nan"), False)
            verdict = (f"{'above' if holds else 'not decided'} ({r.gap_to_next.fmt(3, True)}, "
                       f"p {_p(adjusted)})")
        efficiency = _fmt(e.efficiency.get(score), 2, False)
        lines.append(f"| {i} | {e.name} | {e.scale:+.3g} KL (\\|θ\\| {abs(e.norm):.2f}) "
                     f"| {st.delta.fmt(3, True)} | {null} | {100 * st.share_beaten:.0f}% of {len(st.draws)} "
                     f"| {efficiency} | {e.anti_steerable(score):.0f}% | {_fmt(shift)} | "
                     f"{_fmt(row_.kl, 3, False)} | {verdict} |")
    return lines


def prompting_section(prompting: list[PromptRow]) -> list[str]:
    """The instruction, both scores' Δ against the unprompted model, and the instruction's KL."""
    lines = ["| instruction | Δ cloze (polarity-paired) | polarity shift | Δ letter | letter shift "
             "| KL (test) |",
             "|---|---|---|---|---|---|"]
    for row in prompting:
        lines.append(f"| {row.name}: “{row.instruction}” | {_fmt(row.cloze)} | {_fmt(row.polarity_shift)} "
                     f"| {_fmt(row.letter)} | {_fmt(row.letter_shift)} | {_fmt(row.kl, 3, False)} |")
    return lines


def spread_table(found: list[Spread]) -> list[str]:
    lines = ["| cost | score | draws | mean Δ | sd | min | max | KL of the draws (test) |",
             "|---|---|---|---|---|---|---|---|"]
    for sp in found:
        mean, sd, low, high = sp.summary
        lines.append(f"| {sp.scale:.3g} KL | {sp.score} | {len(sp.draws)} | {mean:+.3f} | {sd:.3f} | "
                     f"{low:+.3f} | {high:+.3f} | {_fmt(sp.kl, 3, False)} |")
    return lines


def validation_table(rows: list[ValidationRow]) -> list[str]:
    if not rows:
        return ["No measured random draws at the chosen costs: the null is not validated on this page."]
    lines = ["Each measured random draw against its first-order prediction (its Δ_q = |θ| g_qᵀr at the |θ| "
             "the KL search found; the null's |θ| = √(2c / rᵀF̃r)).", "",
             "| cost | score | draws | per-question correlation | slope, measured on predicted "
             "| sd measured / predicted | \\|θ\\| measured / predicted |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        c = row.check
        lines.append(f"| {c.cost:.3g} KL | {row.score} | {c.n_draws} | {c.correlation:.2f} | {c.slope:.2f} "
                     f"| {c.measured_sd:.3f} / {c.predicted_sd:.3f} | {c.size_ratio:.2f} ± "
                     f"{c.size_ratio_sd:.2f} |")
    return lines


def methods_section(store: str, key: str, behavior: str, found: list[Entry]) -> list[str]:
    lines = []
    record: list[Convergence] = convergence(store, key, behavior, found)
    if record:
        lines += ["Power iteration (PI's stopping rule: the top-k subspace moves less than TOL between "
                  "steps):", "",
                  "| group | steps | converged | last subspace change |", "|---|---|---|---|"]
        lines += [f"| {c.name} | {c.steps} | {'yes' if c.converged else '**no**'} | {c.last_change:.2g} |"
                  for c in record] + [""]
    cosines = caa_pair_cosines(store, key, behavior, found)
    if cosines:
        lines += ["CAA's mean cosine between each training pair's difference and the vector (a cheap "
                  "predictor of steerability): "
                  + "; ".join(f"{name} {value:+.3f}" for name, value in cosines.items()) + "."]
    return lines


def transfer_table(carried: dict, found: list[Entry]) -> list[str]:
    """Rows: the carried settings; columns: the behaviours asked; cells: cloze Δ and letter Δ."""
    names = {e.label: e.name for e in found}
    others = sorted({other for cells in carried.values() for other in cells})
    lines = ["A direction that learned the score's form moves every behaviour's positive answers alike; "
             "one that carries the behaviour moves related ones and leaves unrelated ones alone. "
             "Each vector at the θ val chose; cells: cloze Δ (polarity-paired) / letter Δ, 95% intervals.",
             "", "| vector | " + " | ".join(others) + " |", "|---|" + "---|" * len(others)]
    for label, cells in carried.items():
        name = names.get(label.rsplit("/", 1)[0], label)
        row = [f"{cells[o][0].fmt(3, True)} / {cells[o][1].fmt(3, True)}" if o in cells else "–"
               for o in others]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return lines


def dose_section(dose: tuple[dict, dict], found: list[Entry], inputs, test: Split, out: Path, name: str,
                 model_key: str, prompting) -> list[str]:
    data, attrs = dose
    gradients = None
    if inputs is not None:
        where = {q: i for i, q in enumerate(test.question_ids)}
        if all(q in where for q in data["question_ids"]):
            rows = np.array([where[q] for q in data["question_ids"]])
            gradients = {score: g[rows] for score, g in inputs.gradients.items()}
    curves = dose_curves(data, gradients)
    names = {e.label.rsplit("/", 1)[0] if e.label.count("/") > 1 else e.label: e.name for e in found}
    labelled = [(names.get(c.label.rsplit("/", 1)[0], c.label), c) for c in curves]
    bands: dict[str, dict[float, tuple[float, float]]] = {}
    if gradients is not None:
        for score in SCORE_NAMES:
            classes = data["polarity"] if score == "cloze" else None
            bands[score] = {float(cost): first_order_null(gradients[score], classes, inputs.spectrum,
                                                          float(cost), n_draws=2000).band()
                            for cost in data["costs"]}
    figure = dose_figure(labelled, bands, prompting, out, f"{name}-dose.png",
                         f"{model_key}: Δ against cost, to breakdown (top-1 agreement < {BREAKDOWN})")
    lines = [f"{len(data['question_ids'])} test questions (the first by id); costs "
             + ", ".join(f"{c:g}" for c in data["costs"])
             + " KL; a direction stops after the cost where its top-1 "
             f"agreement on the test neutral texts falls below {BREAKDOWN} or that its search cannot reach. "
             "The random band is the first-order null's 5th–95th percentile on the same questions; "
             "measured random directions are drawn as grey lines. First order \"stops predicting\" where "
             "measured and predicted Δ differ by more than a factor 2 (or in sign) while the measured Δ is "
             "clear of 0.", "",
             f"![dose–response]({figure.name})", "",
             "| direction | score | leaves the random band at | largest Δ before breakdown | breaks at | "
             "first order stops predicting at |", "|---|---|---|---|---|---|"]
    for label, curve in labelled:
        if curve.random:
            continue
        for score in SCORE_NAMES:
            largest = largest_before_breakdown(curve, score)
            leaves = leaves_band(curve, score, bands.get(score, {}))
            fails = first_order_fails(curve, score) if gradients is not None else None
            broken = curve.broken_at()
            lines.append(f"| {label} | {score} | {'–' if leaves is None else f'{leaves:g} KL'} "
                         f"| {'–' if largest is None else f'{largest[1].fmt(3, True)} at {largest[0]:g} KL'} "
                         f"| {'not within the ladder' if broken is None else f'{broken:g} KL'} "
                         f"| {'–' if fails is None else f'{fails:g} KL'} |")
    lines += ["",
              "Steered greedy samples (first test neutral prompt; first open-ended prompt), unsteered first:",
              "", f"- unsteered: {' / '.join(repr(str(s)) for s in data['baseline_samples'])}"]
    for label, curve in labelled:
        if curve.random:
            continue
        for cost, samples in zip(curve.costs, curve.samples):
            if any(samples):
                lines.append(f"- {label} at {cost:g} KL: {' / '.join(repr(str(s)) for s in samples)}")
    return lines


def seed_format(table: dict[str, dict[float, SeedCell]], split: Split) -> list[str]:
    base = split.baseline_row()
    lines = [f"Unsteered: {split.positive_label} {base.positive.fmt(1)}, mean logit diff "
             f"{base.mean_diff.fmt(2, True)} ({split.n_questions} {split.name} questions, both orders).", "",
             f"| method | scale (KL target) | \\|θ\\| | {split.positive_label} | mean logit diff | Δ | KL |",
             "|---|---|---|---|---|---|---|"]
    for name, cells in table.items():
        for scale, c in sorted(cells.items()):
            lines.append(f"| {name} | {scale:+.3g} | {abs(c.norm):.2f} | {c.survival.fmt(1)} | "
                         f"{c.logit_diff.fmt(2, True)} | {c.delta.fmt(2, True)} | {_fmt(c.kl, 3, False)} |")
    return lines


def seed_reference() -> list[str]:
    lines = ["| model | method | scale (L2 norm) | survival % | mean logit diff | Δ |",
             "|---|---|---|---|---|---|"]
    for model, table in (("Qwen3-0.6B", SEED_QWEN3_0_6B), ("Qwen3-14B", SEED_QWEN3_14B)):
        for method, cells in table.items():
            for scale, (survival, diff, delta) in cells.items():
                lines.append(f"| {model} | {method} | {scale:+d} | {survival:.1f} | {diff:+.2f} | "
                             f"{delta:+.2f} |")
    return lines
