"""Figure pieces from plain values: the methods' colours, saving a figure, and the cross-behaviour
matrix heatmap. steerlab/cli/plot.py draws the per-behaviour figures with them, steerlab/cli/matrix.py the
heatmap (docs/DESIGN.md, "The code")."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import TwoSlopeNorm

COLORS = {"caa": "tab:blue", "pi": "tab:orange", "pi_caa": "tab:green", "melbo": "tab:purple",
          "random": "tab:gray"}


def color(method: str) -> str:
    return COLORS.get(method, "tab:brown")


def save(fig, out: Path, name: str, title: str) -> Path:
    fig.suptitle(title, fontsize=13)
    path = out / name
    fig.savefig(path, bbox_inches="tight", dpi=110)
    plt.close(fig)
    return path


def matrix_heatmap(path: Path, cells: np.ndarray, rows: list[str], columns: list[str], n_chosen: int,
                   score: str, method: str, key: str) -> Path:
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


def scale_label(scale: float, unit: str) -> str:
    """A signed scale as the figures write it: a KL target, a fraction of ‖h_S‖, or |θ|."""
    return {"kl": f"{scale:+.3g} KL", "resid": f"{scale:+.3g} ‖h_S‖"}.get(unit, f"|θ| {scale:+.3g}")


def random_distribution_figure(found, out: Path, name: str, title: str) -> Path:
    """Per score (cloze, letter), one row per chosen setting (``steerlab.measure.study.Entry``): the test Δ
    of every random draw at its cost (grey dots) and its own Δ with its 95% interval."""
    scores = [s for s in ("cloze", "letter") if any(s in e.standing for e in found)]
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, max(len(scores), 1), figsize=(6.5 * max(len(scores), 1), 0.6 * len(found) + 1.8),
                             squeeze=False)
    rng = np.random.default_rng(0)
    for ax, score in zip(axes[0], scores):
        shown = [e for e in found if score in e.standing]
        for y, e in enumerate(shown):
            st = e.standing[score]
            ax.scatter(st.draws, y + rng.uniform(-0.15, 0.15, len(st.draws)), s=10, color=color("random"),
                       alpha=0.6, label="random draws, same cost" if y == 0 else None)
            d = st.delta
            ax.errorbar(d.value, y, xerr=[[d.value - d.low], [d.high - d.value]], fmt="o",
                        color=color(e.label.split("/")[0]), capsize=4, ms=7)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(shown)), [f"{e.name}\n{scale_label(e.scale, e.scale_unit)}" for e in shown])
        ax.set_xlabel("Δ cloze preference, polarity-paired [nats/token]" if score == "cloze"
                      else "Δ order-mean logit diff [nats]")
        ax.set_title(f"{score} score", fontsize=11)
        ax.legend(loc="lower right", fontsize=8)
    return save(fig, out, name, title)
