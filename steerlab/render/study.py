"""The study's page (`make study`): docs/study-<model>-<date>.md and its figure, from the plain
values of ``steerlab.measure.study``.

- a ranking table per score (cloze, the choice's score, and letter): each group's setting chosen on
  val, its test Δ, the random draws' mean Δ, Δ − random with a paired 95% interval (questions and
  draws resampled), the share of random draws it beats, its confound and KL, and whether its rank
  above the next is decided (the paired interval of their difference excludes 0);
- the random distribution's spread at each cost;
- the seed's own table format (method × scale: survival %, mean logit diff, Δ) on val, where every
  scale was scored, beside the seed's Qwen3 figures.
"""
from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

from steerlab.base.files import write_atomically
from steerlab.measure.analysis import Split
from steerlab.measure.scores import SCORE_NAMES, Score
from steerlab.measure.statistics import Stat
from steerlab.measure.study import (
    Rank,
    SeedCell,
    Spread,
    entries,
    ranking,
    seed_table,
    spreads,
)
from steerlab.render.figures import random_distribution_figure

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


def study_page(val: Split, test: Split, *, model_key: str, kl_max: float, by: Score, out: Path,
               command: str, seconds: float | None = None) -> tuple[Path, Path]:
    """Write the page and its figure into ``out``, named for the model and today's date; returns
    both paths. ``command`` and ``seconds`` (the study's wall time) are what the page says ran."""
    found = entries(val, test, kl_max, by)
    date = datetime.date.today().isoformat()
    name = f"study-{model_key.replace('/', '_')}-{date}"
    figure = random_distribution_figure(found, out, f"{name}.png",
                                        f"{model_key}, {val.behavior}: test Δ against random directions at the same cost")
    lines = [f"# The seed experiment's question on {model_key} ({date})", "",
             f"Command: `{command}`. Machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores"
             + (f"; wall time {seconds / 60:.0f} min" if seconds else "") + ".",
             f"Behaviour {val.behavior}; val {val.n_questions} questions (the choice, by {by}, "
             f"KL ≤ {kl_max}), test {test.n_questions} questions (what is reported).", ""]
    for score in SCORE_NAMES:
        ranks = ranking(found, score, test.polarity if score == "cloze" else None)
        if not ranks:
            continue
        lines += [f"## Ranking by the {score} score (test)", ""] + ranking_table(ranks, score) + [""]
    lines += ["## The random distribution at each chosen cost (test)", ""] + spread_table(spreads(test, found))
    lines += ["", "## The seed's table format (val: every scale; both orders)", ""]
    lines += seed_format(seed_table(val), val)
    lines += ["", "The seed's figures (single order, chosen on the questions they were scored on, "
              "scales as L2 norms at layer 7 of Qwen3):", ""] + seed_reference()
    lines += ["", "## Figure", "", f"![test Δ against random]({figure.name})", ""]
    path = write_atomically(out / f"{name}.md", lambda p_: p_.write_text("\n".join(lines)))
    return path, figure


def _fmt(s: Stat | None, digits: int = 3, signed: bool = True) -> str:
    return "–" if s is None else s.fmt(digits, signed)


def ranking_table(ranks: list[Rank], score: Score) -> list[str]:
    unit = "nats/token, polarity-paired" if score == "cloze" else "order-mean logit diff"
    confound = "polarity shift" if score == "cloze" else "letter shift (steered)"
    lines = [f"| rank | method | chosen on val | Δ ({unit}) | random mean Δ | Δ − random [95% CI] "
             f"| beats random draws | {confound} | KL (test) | rank vs next |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(ranks, 1):
        e, st = r.entry, r.standing
        row_ = e.cloze if score == "cloze" else e.letter
        shift = row_.polarity_shift if score == "cloze" else row_.letter_shift
        if r.gap_to_next is None:
            verdict = "–"
        elif r.gap_to_next.low > 0:
            verdict = f"above ({r.gap_to_next.fmt(3, True)})"
        else:
            verdict = f"not decided ({r.gap_to_next.fmt(3, True)})"
        beyond = st.beyond.fmt(3, True) + (" **beyond**" if st.beyond.low > 0 else
                                           " below" if st.beyond.high < 0 else "")
        lines.append(f"| {i} | {e.name} | {e.scale:+.3g} KL (\\|θ\\| {abs(e.norm):.2f}) | {st.delta.fmt(3, True)} "
                     f"| {st.random_mean.value:+.3f} | {beyond} | {100 * st.share_beaten:.0f}% of {len(st.draws)} "
                     f"| {_fmt(shift)} | {_fmt(row_.kl, 3, False)} | {verdict} |")
    return lines


def spread_table(found: list[Spread]) -> list[str]:
    lines = ["| cost | score | draws | mean Δ | sd | min | max | KL of the draws (test) |",
             "|---|---|---|---|---|---|---|---|"]
    for sp in found:
        mean, sd, low, high = sp.summary
        lines.append(f"| {sp.scale:.3g} KL | {sp.score} | {len(sp.draws)} | {mean:+.3f} | {sd:.3f} | {low:+.3f} "
                     f"| {high:+.3f} | {_fmt(sp.kl, 3, False)} |")
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
    lines = ["| model | method | scale (L2 norm) | survival % | mean logit diff | Δ |", "|---|---|---|---|---|---|"]
    for model, table in (("Qwen3-0.6B", SEED_QWEN3_0_6B), ("Qwen3-14B", SEED_QWEN3_14B)):
        for method, cells in table.items():
            for scale, (survival, diff, delta) in cells.items():
                lines.append(f"| {model} | {method} | {scale:+d} | {survival:.1f} | {diff:+.2f} | {delta:+.2f} |")
    return lines
