"""The cross-behaviour matrix (`make matrix`) as a page and heatmaps, from what
``steerlab.measure.matrix`` measured."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import TwoSlopeNorm

from steerlab.measure.matrix import Source, Table, TestRun
from steerlab.measure.scales import ScaleUnit
from steerlab.measure.scores import Score
from steerlab.measure.statistics import cloze_row, polarity_shift_stat, row, scale_text
from steerlab.questions.behaviors import label


def write_matrix_page(out: Path, measured: TestRun, sources: list[Source], key: str, *, method: str,
                      select_by: Score, kl_max: float, n_eval: int | None, n_random: int,
                      scale_unit: ScaleUnit) -> tuple[Path, list[Path]]:
    """matrix_<method>.md and a heatmap per score (matrix_<method>.png for letter,
    matrix_<method>_cloze.png) into ``out``; returns the page and the figures."""
    out.mkdir(parents=True, exist_ok=True)
    page = out / f"matrix_{method}.md"
    page.write_text(page_markdown(measured, sources, key, method=method, select_by=select_by, kl_max=kl_max,
                                  n_eval=n_eval, n_random=n_random, scale_unit=scale_unit), encoding="utf-8")
    figures = []
    for name, table in measured.tables.items():
        rows, columns, cells, n_chosen = heatmap_values(table, sources, n_random, scale_unit)
        figures.append(matrix_heatmap(
            out / (f"matrix_{method}.png" if name == "letter" else f"matrix_{method}_{name}.png"),
            cells, rows, columns, n_chosen, table.score, method, key))
    return page, figures


def page_markdown(measured: TestRun, sources: list[Source], key: str, *, method: str, select_by: Score,
             kl_max: float, n_eval: int | None, n_random: int, scale_unit: ScaleUnit = "abs") -> str:
    """The matrix page: a table per score (the chosen rows, the random rows), then the unsteered
    model on each behaviour's test questions."""
    tables = measured.tables
    table = next(iter(tables.values()))
    short = [label(t) for t in table.targets]
    lines = [f"# Cross-behaviour matrix: {key}, {method}", "",
             f"Each row: a behaviour's {method} vector chosen on its own val questions by the "
             f"{select_by} score (KL ≤ {kl_max}), at its chosen scale. Each column: Δ on that "
             f"behaviour's test questions (first {n_eval} by id), steered minus unsteered, with a "
             f"95% paired bootstrap interval over questions. Random rows: {n_random} random "
             "directions at the same scale, pooled" + (
                 " (scales are KL targets: every row, random ones included, costs its target in nats "
                 "per token on the val neutral texts, each direction at its own |θ|)" if scale_unit == "kl"
                 else "") + ". The intervals are per cell: among many cells a few "
             "exclude 0 by chance alone (about 1 in 20), so read a cell against the random row and "
             "its neighbours.", ""]
    titles = {"letter": ("Letter: Δ order-mean logit(behaviour) − logit(other), both answer orders, nats "
                         "(in brackets after the interval: the letter shift)"),
              "cloze": ("Cloze: polarity-paired Δ of log p(behaviour's answer text) − log p(other's), nats "
                        "per token, no letters (after the interval: the polarity shift ½(Δ no − Δ yes))")}
    for name, table in tables.items():
        lines += [f"## {titles[name]}", "",
                  "| vector (chosen on val) | scale | val Δ | KL test | " + " | ".join(short) + " |",
                  "|---|---|---|---|" + "---|" * len(table.targets)]

        def fmt(cell) -> str:
            delta, shift = cell
            return delta.fmt(3, True) + ("" if shift is None else f" ({shift.value:+.3f})")

        for s in sources:
            if s.choice is None:
                lines.append(f"| {label(s.behavior)}: nothing eligible | – | – | – |"
                             + " – |" * len(table.targets))
                continue
            cells = [fmt(table.cell(s.behavior, t)) for t in table.targets]
            lines.append(f"| {label(s.behavior)}: {s.choice.run} #{s.choice.index} | "
                         f"{chosen_scale_text(s, scale_unit)} | {s.val_delta.value:+.3f} | "
                         f"{measured.kl[s.behavior].mean():.3f} | " + " | ".join(cells) + " |")
        for r in table.random_scales:
            cells = [fmt(table.random_cell(r, t)) for t in table.targets]
            lines.append(f"| random ×{n_random} | {random_scale_text(r, scale_unit)} | – | "
                         f"{measured.random_kl[r].mean():.3f} | "
                         + " | ".join(cells) + " |")
        lines.append("")
        chosen = [s for s in sources if s.choice is not None]
        if chosen:
            lines += [f"Against the random distribution ({name}): each chosen row's Δ minus the mean Δ of "
                      f"the {n_random} random directions at its scale, with a 95% interval that resamples "
                      "the questions (paired) and the directions; after it, how many of the directions' Δ it "
                      f"beats. With {n_random} directions the share is coarse: `make study` uses more.", "",
                      "| vector (chosen on val) | scale | " + " | ".join(short) + " |",
                      "|---|---|" + "---|" * len(table.targets)]
            for s in chosen:
                cells = []
                for t in table.targets:
                    st = table.standing(s.behavior, t, abs(s.grid_scale))
                    cells.append(f"{st.beyond.fmt(3, True)}, "
                                 f"{round(st.share_beaten * len(st.draws))}/{len(st.draws)}")
                lines.append(f"| {label(s.behavior)}: {s.choice.run} #{s.choice.index} | "
                             f"{chosen_scale_text(s, scale_unit)} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += ["Unsteered model on each behaviour's test questions.", ""]
    if "letter" in tables:
        lines += ["Letter (both orders): share preferring the behaviour, order-mean logit difference, "
                  "letter shift, and consistency (the two orders prefer the same answer text).", "",
                  "| behaviour | n | behaviour % | mean logit diff | letter shift | consistency % |",
                  "|---|---|---|---|---|---|"]
        letter = tables["letter"]
        for t in letter.targets:
            base = letter.baseline[t]
            r = row(0.0, base.mean(0), letter.baseline_mass[t].mean(0), base.mean(0), base)
            lines.append(f"| {t} | {len(letter.question_ids[t])} | {r.positive.fmt()} | "
                         f"{r.mean_diff.fmt(3, True)} | {r.letter_shift.fmt(3, True)} | "
                         f"{r.consistency.fmt()} |")
        lines.append("")
    if "cloze" in tables:
        cloze = tables["cloze"]
        lines += ["Cloze: the polarity-paired preference for the behaviour's answer text (nats per token), "
                  "the questions per polarity class, and the polarity shift of the preference.", "",
                  "| behaviour | n | yes / no / other | preference (balanced) | polarity shift |",
                  "|---|---|---|---|---|"]
        for t in cloze.targets:
            r = cloze_row(0.0, cloze.baseline[t], cloze.baseline[t], cloze.polarity[t])
            classes = " / ".join(str(int((cloze.polarity[t] == c).sum())) for c in ("yes", "no", "other"))
            shift = polarity_shift_stat(cloze.baseline[t], cloze.polarity[t])
            lines.append(f"| {t} | {len(cloze.question_ids[t])} | {classes} | {r.level.fmt(3, True)} | "
                         f"{shift.fmt(3, True) if shift is not None else '–'} |")
    return "\n".join(lines) + "\n"


def chosen_scale_text(source: Source, scale_unit: ScaleUnit) -> str:
    """The scale a behaviour's vector was chosen at, as the report writes scales: "+0.04 KL (= 30.3)"
    with SCALE_UNIT=kl, else the L2 norm of θ."""
    if scale_unit == "kl":
        return scale_text(source.grid_scale, None, source.choice.scale)
    return f"{source.choice.scale:+.4g}"


def random_scale_text(scale: float, scale_unit: ScaleUnit) -> str:
    """A random reference row's scale: both signs, in the unit the matrix chose in."""
    return f"±{scale:g}" + (" KL" if scale_unit == "kl" else "")


def heatmap_values(table: Table, sources: list[Source], n_random: int, scale_unit: ScaleUnit
                   ) -> tuple[list[str], list[str], np.ndarray, int]:
    """What ``matrix_heatmap`` draws of ``table``: row and column labels, the cells
    [rows, columns, (Δ, low, high)] (the chosen rows, then the random rows) and the chosen rows'
    count."""
    chosen = [s for s in sources if s.choice is not None]
    rows = [f"{label(s.behavior)}, {chosen_scale_text(s, scale_unit)}" for s in chosen]
    rows += [f"random ×{n_random}, {random_scale_text(r, scale_unit)}" for r in table.random_scales]
    cells = [[table.cell(s.behavior, t)[0] for t in table.targets] for s in chosen]
    cells += [[table.random_cell(r, t)[0] for t in table.targets] for r in table.random_scales]
    values = np.array([[(c.value, c.low, c.high) for c in line] for line in cells], dtype=float)
    return (rows, [label(t) for t in table.targets], values.reshape(len(cells), len(table.targets), 3),
            len(chosen))


def matrix_heatmap(path: Path, cells: np.ndarray, rows: list[str], columns: list[str], n_chosen: int,
                   score: Score, method: str, key: str) -> Path:
    """The matrix of one ``score`` (letter or cloze) as a heatmap: ``cells`` [rows, columns,
    (Δ, low, high)], the first ``n_chosen`` rows ``method``'s chosen vectors and the rest random
    references, below a line; a cell whose 95% interval excludes 0 is bold."""
    values = cells[..., 0]
    limit = max(float(np.abs(values).max()), 1e-6)
    fig, ax = plt.subplots(figsize=(2.0 + 1.5 * len(columns), 1.2 + 0.75 * len(cells)))
    image = ax.imshow(values, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -limit, limit), aspect="auto")
    for i, line in enumerate(cells):
        for j, (value, low, high) in enumerate(line):
            excludes_zero = low > 0 or high < 0
            ax.text(j, i, f"{value:+.3f}\n[{low:+.3f}, {high:+.3f}]",
                    ha="center", va="center", fontsize=7, fontweight="bold" if excludes_zero else "normal",
                    color="white" if abs(value) > 0.6 * limit else "black")
    if len(cells) > n_chosen:
        ax.axhline(n_chosen - 0.5, color="black", lw=1.5)
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    asked = "both orders" if score == "letter" else "cloze, no letters"
    ax.set_xlabel(f"questions of this behaviour (test split, {asked})")
    ax.set_ylabel(f"{method} vector chosen on val (scale)")
    ax.grid(False)
    unit = ("Δ order-mean logit diff [nats]" if score == "letter"
            else "Δ cloze preference, polarity-paired [nats/token]")
    fig.colorbar(image, ax=ax, label=unit)
    ax.set_title(f"{key}: Δ with 95% CI (bold: CI excludes 0)", fontsize=11)
    fig.savefig(path, bbox_inches="tight", dpi=110)
    plt.close(fig)
    return path
