"""Figure pieces from plain values: the methods' colours, saving a figure, a scale's label and the
figure of choices against the random distribution (the per-behaviour figures, steerlab/render/plots.py,
the study's page and the report use them)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

COLORS = {"caa": "tab:blue", "pi": "tab:orange", "pi_caa": "tab:green", "melbo": "tab:purple",
          "ceiling": "tab:red", "prompting": "tab:olive", "random": "tab:gray"}


def color(method: str) -> str:
    return COLORS.get(method, "tab:brown")


def save(fig, out: Path, name: str, title: str) -> Path:
    fig.suptitle(title, fontsize=13)
    path = out / name
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
    fig, axes = plt.subplots(1, max(len(scores), 1),
                             figsize=(6.5 * max(len(scores), 1), 0.6 * len(found) + 1.8),
                             squeeze=False, layout="constrained")  # room for each panel's row names
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


def dose_figure(curves, bands: dict, prompting, out: Path, name: str, title: str) -> Path:
    """Per score, Δ against the measured KL (log axis): one line per direction (label, DoseCurve)
    with its 95% intervals, measured random directions in grey, the first-order random band
    (``bands``: score -> cost -> (5th, 95th percentile)) shaded, each method's first-order
    prediction dashed, and the prompting baseline as a point at its own KL."""
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), squeeze=False, layout="constrained")
    for ax, score in zip(axes[0], ("cloze", "letter")):
        band = bands.get(score)
        if band:
            costs = sorted(band)
            ax.fill_between(costs, [band[c][0] for c in costs], [band[c][1] for c in costs], color="tab:gray",
                            alpha=0.2, label="random, first order (5–95%)")
        for label, curve in curves:
            shown = [i for i, d in enumerate(curve.delta[score]) if d is not None]
            if not shown:
                continue
            x = curve.kl[shown]
            values = np.array([curve.delta[score][i].value for i in shown])
            if curve.random:
                ax.plot(x, values, color=color("random"), lw=0.8, alpha=0.7)
                continue
            low = values - np.array([curve.delta[score][i].low for i in shown])
            high = np.array([curve.delta[score][i].high for i in shown]) - values
            method = curve.label.split("/")[0]
            ax.errorbar(x, values, yerr=[low, high], fmt="o-", color=color(method), capsize=3, label=label)
            predicted = curve.predicted[score][shown]
            if np.isfinite(predicted).any():
                ax.plot(x, predicted, "--", color=color(method), lw=1, alpha=0.8)
        if prompting is not None:
            for row in prompting:
                stat_ = row.cloze if score == "cloze" else row.letter
                if stat_ is not None and row.kl is not None:
                    ax.errorbar(row.kl.value, stat_.value,
                                yerr=[[stat_.value - stat_.low], [stat_.high - stat_.value]], fmt="*", ms=12,
                                color=color("prompting"), label=f"prompting: {row.name}")
        ax.set_xscale("log")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel("KL on neutral text [nats/token], measured")
        ax.set_ylabel("Δ cloze preference, polarity-paired [nats/token]" if score == "cloze"
                      else "Δ order-mean logit diff")
        ax.set_title(f"{score} score (dashed: first order)", fontsize=11)
        ax.legend(fontsize=7, loc="best")
    return save(fig, out, name, title)
