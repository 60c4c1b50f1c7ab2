"""The per-behaviour figures, drawn from the store alone (``make plot``; steerlab/cli/plot.py is
its command line).

Vectors are chosen on validation by the score ``by`` (steerlab.measure.analysis) and shown on test.
Figures: violins of per-question scores (of the score chosen by) at a scale and across scales,
dose-response curves with 95% bootstrap bands (letter panels: share, order-mean logit difference,
letter shift, answer mass; cloze panels: polarity-paired Δ, the Δ of each polarity class, polarity
shift), Δ against KL, each val choice against the random draws at its cost, the PI / PI@CAA
singular-value spectrum and convergence, the Jacobian along the CAA path, the CAA layer sweep and
the MELBO objective traces. A figure whose data is not in the store is skipped with a message.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from steerlab.base.progress import say
from steerlab.measure.analysis import (
    EvalGroup,
    Split,
    behavior_label,
    cloze_row_at,
    methods,
    nearest_scale,
    read_splits,
    row_at,
    scale_rows,
    select_by,
    val_choice_in,
)
from steerlab.measure.scores import Score
from steerlab.measure.statistics import Row
from steerlab.measure.study import entries
from steerlab.questions.polarity import balanced_mean
from steerlab.render.figures import color, random_distribution_figure, save
from steerlab.store import read_vector_groups


def diff_label(split: Split, by: Score = "letter") -> str:
    if by == "cloze":
        return (f"log p({behavior_label(split.behavior)} text) − log p(other text), per token  "
                "[nats; cloze]")
    mean = ", mean of both orders" if split.counterbalanced else ", one order"
    return f"logit({behavior_label(split.behavior)}) − logit(other){mean}  [nats]"


def score_rows(group: EvalGroup, vector: int | None, split: Split, by: Score) -> list:
    """Rows by scale of the score chosen by: ``Row`` (letter) or ``ClozeRow`` (cloze)."""
    if by == "cloze":
        return [cloze_row_at(group, vector, s, split) for s in range(len(group.scales))]
    return scale_rows(group, vector, split)


def score_row_at(group: EvalGroup, vector: int | None, s: int, split: Split, by: Score):
    return cloze_row_at(group, vector, s, split) if by == "cloze" else row_at(group, vector, s, split)


def nearest_in_unit(group: EvalGroup, scale: float) -> int:
    """The stored scale of ``group`` nearest ``scale``, read in the group's unit (a KL target, a
    fraction of ‖h_S‖; --scale is in SCALE_UNIT), else as an L2 norm."""
    grid = group.in_unit()
    if grid is None:
        return nearest_scale(group, scale)
    return int(np.argmin(np.abs(grid - scale)))


def per_question(group: EvalGroup, by: Score) -> np.ndarray:
    """[k, n_scales, n_q] per-question values of the score chosen by."""
    return group.cloze if by == "cloze" else group.logit_diff


def baseline_values(split: Split, by: Score) -> np.ndarray:
    return split.cloze_baseline if by == "cloze" else split.baseline
SCALE_LABEL = "scale  (L2 norm of θ added; signed)"
FRACTION_LABEL = "scale  (‖θ‖ / median ‖h_S‖ at the source layer; signed)"
KL_LABEL = "scale  (KL target: nats/token on val neutral text, each direction at its own ‖θ‖; signed)"
plt.rcParams.update({"figure.constrained_layout.use": True, "font.size": 11, "axes.titlesize": 12,
                     "figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3})


class Skip(Exception):
    """The store lacks what a figure needs."""


@dataclass
class Data:
    key: str
    val: Split | None
    test: Split | None
    # method -> run -> {"sigmas": [k], "trace": [steps, k]} from /<model>/vectors
    vectors: dict[str, dict[str, dict[str, np.ndarray]]] = field(default_factory=dict)
    kl_max: float | None = None  # the report's selection rule
    behavior: str = ""
    by: Score = "letter"  # the score the val choice maximises (steerlab.measure.analysis.select_by)

    @property
    def name(self) -> str:
        """Model and behaviour, for figure titles."""
        return f"{self.key}, {self.behavior}" if self.behavior else self.key


def load(store: str, key: str, behavior: str, kl_max: float | None = None, by: Score = "cloze") -> Data:
    splits = read_splits(store, key, behavior)
    vectors: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for group in read_vector_groups(store, key, behavior):
        if group.method in ("pi", "pi_caa", "melbo"):
            kept = {name: group.arrays[name] for name in ("sigmas", "trace", "principal_angles",
                                                          "jv_change") if name in group.arrays}
            if group.attrs.get("at_scale") is not None:
                kept["at_scale"] = np.float64(group.attrs["at_scale"])
            vectors.setdefault(group.method, {})[group.run] = kept
    val = splits.get("val")
    return Data(key, val, splits.get("test"), vectors, kl_max, behavior,
                select_by(val, by) if val is not None else by)


def need_splits(data: Data) -> tuple[Split, Split]:
    if data.val is None or data.test is None:
        raise Skip("needs evals of both val (to choose) and test (to show): run `make eval`")
    return data.val, data.test


def picks(data: Data) -> list[tuple[str, EvalGroup, int | None, float]]:
    """(method, test group, vector or None for the pooled random control, sign of the chosen scale)."""
    val, test = need_splits(data)
    out = []
    for method in methods(test):
        chosen = val_choice_in(method, val, test, data.kl_max, data.by)
        if chosen is not None:
            group, vector, s = chosen
            out.append((method, group, None if method == "random" else vector,
                        1.0 if group.scales[s] >= 0 else -1.0))
    if not out:
        raise Skip("no method has a setting chosen on val")
    return out


def violins(ax, data: Data, scale: float, legend: bool = True) -> None:
    test, by = data.test, data.by
    entries = [("baseline\n(unsteered)", baseline_values(test, by), "black", 0.0)]
    for method, group, vector, sign in picks(data):
        s = nearest_in_unit(group, sign * abs(scale))
        values = per_question(group, by)
        if vector is None:
            entries.append((f"random {group.run}\n{values.shape[0]} dirs pooled",
                            values[:, s].ravel(), color(method), group.scales[s]))
        else:
            entries.append((f"{method} {group.run}\nvector #{vector}", values[vector, s],
                            color(method), group.scales[s]))
    parts = ax.violinplot([e[1] for e in entries], showmeans=True, showextrema=False)
    for body, entry in zip(parts["bodies"], entries):
        body.set_facecolor(entry[2])
        body.set_alpha(0.35)
    parts["cmeans"].set_color("black")
    jitter = np.random.default_rng(0)
    ax.margins(y=0.3)
    for i, (_, values, c, at) in enumerate(entries, start=1):
        ax.scatter(i + jitter.uniform(-0.08, 0.08, len(values)), values, s=10, color=c, alpha=0.7)
        ax.text(i, 0.97,
                f"{f'scale {at:+g}' if at else 'no steering'}\n{100 * np.mean(values > 0):.0f}% "
                f"{behavior_label(test.behavior)}", fontsize=9, ha="center", va="top",
                transform=ax.get_xaxis_transform())
    ax.axhline(0, color="black", lw=0.8, ls=":")
    ax.set_xticks(range(1, len(entries) + 1), [e[0] for e in entries], fontsize=9)
    ax.set_ylabel(diff_label(test, by))
    if legend:
        ax.legend(handles=[Line2D([], [], color="black", lw=2, label="mean"),
                           Line2D([], [], color="gray", marker="o", ls="",
                                  label="one question\n(random: × direction)"),
                           Line2D([], [], color="black", lw=0.8, ls=":",
                                  label=f"0: {behavior_label(test.behavior)} answer\npreferred above")],
                  fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1))


def fig_violin(data: Data, out: Path, scale: float) -> Path:
    need_splits(data)
    fig, ax = plt.subplots(figsize=(3 + 1.5 * (len(picks(data)) + 1), 5.5))
    violins(ax, data, scale)
    ax.set_title(f"per-question {data.by} score at scale ±{scale:g} (nearest stored; sign as chosen on val)",
                 fontsize=10)
    return save(fig, out, f"violin_scale{scale:g}.png",
                f"{data.name}, test split (n = {data.test.n_questions}): chosen on val, shown on test")


def fig_violin_scales(data: Data, out: Path) -> Path:
    val, test = need_splits(data)
    scales = sorted({abs(float(s)) for g in test.groups.values() for s in g.scales})
    if len(scales) < 2:
        raise Skip("fewer than 2 stored scales")
    fig, axes = plt.subplots(len(scales), 1, figsize=(3 + 1.5 * (len(picks(data)) + 1), 3.6 * len(scales)),
                             sharex=True)
    for ax, scale in zip(axes, scales):
        violins(ax, data, scale, legend=ax is axes[0])
        ax.set_title(f"scale ±{scale:g}", fontsize=11)
    return save(fig, out, "violin_scales.png",
                f"{data.name}, test split (n = {test.n_questions}): per-question {data.by} score by scale\n"
                "(vector chosen on val; nearest stored scale, sign as chosen)")


def dose_rows(data: Data, by: Score) -> dict[str, tuple[EvalGroup, int | None, list]]:
    """Per method: the test group, the vector chosen on val (None: pooled random), and its rows of
    score ``by`` at every stored scale."""
    return {method: (group, vector, score_rows(group, vector, data.test, by))
            for method, group, vector, _ in picks(data)}


def fig_dose(data: Data, out: Path) -> Path:
    """One panel per number, letter panels then cloze panels, for the setting each method chose
    on val, at every stored scale: the x axis is shared, so a vector's letter and cloze numbers
    stand one above the other."""
    val, test = need_splits(data)
    curves = {score: dose_rows(data, score) for score in ("letter", "cloze")
              if (test.has_letter if score == "letter" else test.has_cloze)}
    panels = []  # (score, attribute or class, axis label)
    if test.has_letter:
        order_mean = " (mean of both orders)" if test.counterbalanced else " (one order)"
        panels += [("letter", "positive", f"{test.positive_label}  [of questions]"),
                   ("letter", "mean_diff", f"mean logit diff{order_mean}  [nats]")]
        if test.counterbalanced:
            panels.append(("letter", "letter_shift", "letter shift  [nats]\n(as written − mirrored) / 2"))
        panels.append(("letter", "mass", "answer mass  [p(A) + p(B)]"))
    if test.has_cloze:
        panels += [("cloze", "delta", "cloze Δ, polarity-paired\n[nats per token]"),
                   ("cloze", "polarity_shift", "cloze polarity shift\n½(Δ no − Δ yes)  [nats/token]")]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3.0 * len(panels)), sharex=True, squeeze=False)
    axes = axes[:, 0]
    # in the grid's unit (KL targets, fractions of ‖h_S‖) where every curve has it, so that two
    # models can share a plot; else the L2 norm
    shown = [group for rows in curves.values() for group, _, _ in rows.values()]
    in_kl = all(group.norms is not None for group in shown)
    in_units = in_kl or all(group.fractions is not None for group in shown)
    bases = {"letter": test.baseline_row() if test.has_letter else None,
             "cloze": test.cloze_baseline_row() if test.has_cloze else None}
    scales = set()
    for ax, (score, attr, label) in zip(axes, panels):
        b = getattr(bases[score], attr)
        if b is not None and attr not in ("delta", "polarity_shift"):
            ax.axhline(b.value, color="black", lw=1.5, ls="--", label="baseline (unsteered)")
            for n, edge in enumerate((b.low, b.high)):
                ax.axhline(edge, color="black", lw=0.7, ls=":", label=None if n else "baseline 95% CI")
        else:
            ax.axhline(0, color="black", lw=1.0, ls="--", label="unsteered (Δ = 0)")
        for method, (group, vector, rows) in curves[score].items():
            stats = [getattr(r, attr) for r in rows]
            keep = [(r.fraction if in_units and not in_kl else r.scale, st)
                    for r, st in zip(rows, stats) if st is not None]
            if not keep:
                continue
            x = [k[0] for k in keep]
            scales.update(x)
            name = (f"random {group.run} ({group.settings_shape[0]} dirs pooled)" if vector is None
                    else f"{method} {group.run} #{vector}")
            ax.fill_between(x, [k[1].low for k in keep], [k[1].high for k in keep], color=color(method),
                            alpha=0.2, lw=0)
            ax.plot(x, [k[1].value for k in keep], marker="o", ms=4, color=color(method),
                    ls="--" if vector is None else "-", label=name)
        ax.set_ylabel(label, fontsize=10)
    axes[0].legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1))
    scales = sorted(scales)
    linthresh = min(abs(s) for s in scales if s != 0) if any(scales) else 1.0
    axes[-1].set_xscale("symlog", linthresh=linthresh, linscale=0.3)
    axes[-1].set_xticks(scales, [f"{s:.2g}" for s in scales], fontsize=9)
    axes[-1].set_xlabel((KL_LABEL if in_kl else FRACTION_LABEL if in_units else SCALE_LABEL)
                        + ", symlog axis")
    axes[0].set_title(f"vector chosen on val by the {data.by} score; bands: 95% bootstrap CI over "
                      "questions", fontsize=10)
    for ax, (score, attr, _) in zip(axes, panels):
        if attr == "letter_shift":
            ax.set_title("letter shift: how much of the as-written number is a preference for a letter",
                         fontsize=10)
        if attr == "mass":
            ax.set_title("answer mass: where it falls, the model stops answering in the A/B format",
                         fontsize=10)
            ax.set_ylim(bottom=0)
        if attr == "delta" and score == "cloze":
            ax.set_title("cloze (answer texts, no letters): the mean over Yes/No/other polarity classes "
                         "of each class's Δ", fontsize=10)
        if attr == "polarity_shift":
            ax.set_title("polarity shift: what a pure Yes/No direction moves, and the balanced Δ does not",
                         fontsize=10)
    return save(fig, out, "dose_response.png", f"{data.name}, test split (n = {test.n_questions}): "
                                               "dose-response")


def fig_spectrum(data: Data, out: Path) -> Path:
    runs = [(m, run, d) for m in ("pi", "pi_caa") for run, d in data.vectors.get(m, {}).items()
            if "sigmas" in d]
    if not runs:
        raise Skip("no PI or PI@CAA groups with sigmas: run `make pi` / `make pi_caa`")
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for n, (method, run, d) in enumerate(runs):
        c = color(method) if len({m for m, _, _ in runs}) == len(runs) else f"C{n}"
        left.semilogy(np.arange(1, len(d["sigmas"]) + 1), d["sigmas"], "o-", color=c,
                      label=f"{method} {run}")
        trace = d.get("trace")
        if trace is not None and trace.size:
            for i in range(trace.shape[1]):
                right.semilogy(np.arange(1, len(trace) + 1), trace[:, i], color=c,
                               alpha=1.0 - 0.6 * i / max(trace.shape[1] - 1, 1),
                               label=f"{method} {run}" if i == 0 else None)
    left.set(xlabel="singular vector index i", ylabel="σᵢ = ‖J vᵢ‖  [‖Δh_T‖ per unit ‖θ‖]",
             title="singular-value spectrum of J = ∂h_T/∂θ")
    left.xaxis.get_major_locator().set_params(integer=True)
    left.legend()
    right.set(xlabel="power-iteration step", ylabel="residual ‖JᵀJv − σ²v‖ / σ²  [relative]",
              title="convergence (one line per vector; fainter = smaller σ)")
    right.xaxis.get_major_locator().set_params(integer=True)
    right.legend()
    return save(fig, out, "pi_spectrum.png", f"{data.name}, train prompts: PI and PI@CAA")


def fig_layers(data: Data, out: Path, scale: float) -> Path:
    _, test = need_splits(data)
    by = data.by
    caa = [g for g in test.groups.values() if g.method == "caa"]
    if len({g.source_layer for g in caa}) < 2:
        raise Skip("fewer than 2 CAA layers in the store: run `make caa LAYERS=\"3 5 7\"` and `make eval`")
    fig, ax = plt.subplots(figsize=(8, 5))
    # Run names are L<layer> plus an ablation suffix: one line per variant.
    variants: dict[str, list[tuple[int, Row]]] = {}
    for g in caa:  # CAA groups hold one vector
        variant = g.run.split("-", 1)[1] if "-" in g.run else "CAA"
        variants.setdefault(variant, []).append(
            (g.source_layer, score_row_at(g, 0, nearest_in_unit(g, abs(scale)), test, by)))
    randoms = sorted(((g.source_layer, score_row_at(g, None, nearest_in_unit(g, abs(scale)), test, by))
                      for g in test.groups.values() if g.method == "random"), key=lambda p: p[0])
    for n, (variant, points) in enumerate(sorted(variants.items())):
        draw_errorbars(ax, sorted(points, key=lambda p: p[0]), f"C{n}" if n else color("caa"), variant, "o-")
    if randoms:
        draw_errorbars(ax, randoms, color("random"), "random (pooled dirs)", "s--")
    ax.axhline(0, color="black", lw=1, ls=":", label="baseline (Δ = 0)")
    ax.set(xlabel="source layer S (θ added at layers[S].mlp.down_proj)",
           ylabel=("Δ cloze preference, polarity-paired  [nats per token]" if by == "cloze"
                   else "Δ mean logit diff vs baseline  [nats]"),
           title=f"CAA layer sweep at scale +{scale:g} (nearest stored), 95% bootstrap CI")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend()
    return save(fig, out, "caa_layers.png", f"{data.name}, test split (n = {test.n_questions})")


def draw_errorbars(ax, points: list[tuple[int, Row]], c: str, label: str, fmt: str) -> None:
    """Δ with its interval at each (layer, row); rows of either score."""
    x = [p[0] for p in points]
    d = [p[1].delta for p in points]
    ax.errorbar(x, [s.value for s in d], yerr=[[s.value - s.low for s in d], [s.high - s.value for s in d]],
                fmt=fmt, color=c, capsize=4, label=label)


def fig_melbo(data: Data, out: Path) -> Path:
    runs = {run: d["trace"] for run, d in data.vectors.get("melbo", {}).items() if d.get("trace") is not None}
    if not runs:
        raise Skip("no MELBO groups with a trace: run `make melbo`")
    fig, axes = plt.subplots(1, len(runs), figsize=(6.5 * len(runs), 4.8), squeeze=False)
    for ax, (run, trace) in zip(axes[0], sorted(runs.items())):
        for i in range(trace.shape[1]):
            ax.plot(np.arange(len(trace)), trace[:, i], label=f"vector {i}")
        ax.set(xlabel="optimiser step", ylabel="objective  (‖Δh_T‖ₚ summed over tokens, ^1/q)",
               title=f"melbo {run}")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend()
    return save(fig, out, "melbo_traces.png", f"{data.name}, train prompts: MELBO objective per vector")


def fig_cost(data: Data, out: Path) -> Path:
    """Behaviour against cost: every setting of every method as a point, Δ of the score chosen by
    (order-mean logit difference, or polarity-paired cloze preference) against mean KL on neutral
    text, on test; the random control as a grey cloud; the settings chosen on val marked; the KL
    rule as a line."""
    _, test = need_splits(data)
    by = data.by
    groups = [g for g in test.groups.values() if g.kl is not None]
    if not groups:
        raise Skip("no KL measured in the store's evals: run `make eval` (it measures KL on neutral text)")
    fig, ax = plt.subplots(figsize=(9, 5.5))
    floor = 1e-5  # KL is plotted on a log axis; exactly-zero costs sit on the floor
    for g in groups:
        kl = np.maximum(g.kl.mean(-1), floor).ravel()
        if by == "cloze":
            delta = (balanced_mean(g.cloze, test.polarity)
                     - balanced_mean(test.cloze_baseline, test.polarity)).ravel()
        else:
            delta = (g.logit_diff.mean(-1) - test.baseline.mean()).ravel()
        if g.method == "random":
            ax.scatter(kl, delta, s=14, color=color("random"), alpha=0.35, lw=0,
                       label="random directions (every scale)")
        else:
            ax.scatter(kl, delta, s=30, color=color(g.method), alpha=0.8,
                       label=f"{g.label} (every vector, scale)")
    for method in methods(test):
        chosen = val_choice_in(method, data.val, test, data.kl_max, by)
        if chosen is None or chosen[0].kl is None:
            continue
        group, vector, s = chosen
        r = score_row_at(group, None if method == "random" else vector, s, test, by)
        ax.scatter([max(r.kl.value, floor)], [r.delta.value], s=160, facecolors="none",
                   edgecolors=color(method), lw=2.2, label=f"{method}: chosen on val ({r.scale:+g})")
    if data.kl_max is not None:
        ax.axvline(max(data.kl_max, floor), color="black", ls="--", lw=1, label=f"KL_MAX = {data.kl_max:g}")
    ax.axhline(0, color="black", lw=0.8, ls=":")
    ax.set_xscale("log")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set(xlabel="mean KL(unsteered ‖ steered) per token on neutral text  [nats, log axis]",
           ylabel=f"Δ {diff_label(test, by)}" + (", polarity-paired" if by == "cloze" else ""),
           title="behaviour against cost, test split (chosen markers: the setting chosen on val)")
    return save(fig, out, "delta_vs_kl.png", f"{data.name}: what each setting buys and what it costs")


def fig_path(data: Data, out: Path) -> Path:
    """The Jacobian along the steering path: σᵢ of J at θ₀ = s · unit(CAA) and the largest
    principal angle to J(0)'s top-k subspace against s, over the CAA dose-response on test."""
    path = sorted((float(d["at_scale"]), d) for d in data.vectors.get("pi_caa", {}).values()
                  if "at_scale" in d)
    at_zero = next(iter(data.vectors.get("pi", {}).values()), None)
    if len(path) < 2 or at_zero is None:
        raise Skip("fewer than 2 linearisation scales: run `make pi_caa AT_SCALES=\"0.01 0.04 0.16\"`")
    panels = 4 if data.test is not None else 2
    fig, axes = plt.subplots(panels, 1, figsize=(8, 2.8 * panels + 1), sharex=True)
    zero_angles = np.zeros_like(path[0][1]["principal_angles"])
    points = sorted([(0.0, at_zero["sigmas"], zero_angles)]
                    + [(s, d["sigmas"], d["principal_angles"]) for s, d in path], key=lambda p: p[0])
    x = [p[0] for p in points]
    sigmas = np.stack([p[1] for p in points])
    for i in range(sigmas.shape[1]):
        axes[0].plot(x, sigmas[:, i], "o-", label=f"σ{i + 1}", alpha=1.0 - 0.15 * i)
    axes[0].set(ylabel="σᵢ of J(θ₀)", title="singular values of ∂h_T/∂θ at θ₀ = s · unit(CAA)")
    axes[0].legend(fontsize=8, ncol=2)
    angles = np.stack([p[2] for p in points])
    axes[1].plot(x, angles[:, -1], "o-", color="black", label="largest")
    axes[1].plot(x, angles[:, 0], "s--", color="gray", label="smallest")
    axes[1].set(ylabel="principal angles\nto J(0)'s top-k  [°]", ylim=(0, 92))
    axes[1].legend(fontsize=8)
    if panels == 4:
        caa = sorted((g for g in data.test.groups.values() if g.method == "caa"),
                     key=lambda g: not g.run.endswith("-answer"))  # the CAA PI@CAA linearises at first
        if caa:
            group, by = caa[0], data.by
            rows = score_rows(group, 0, data.test, by)
            xs = [r.theta_norm for r in rows]  # θ₀'s axis: L2 norms, whatever the eval's unit
            second = (("polarity_shift", "CAA cloze polarity shift") if by == "cloze"
                      else ("mass", "CAA answer mass"))
            for ax, attr, label in ((axes[2], "delta", f"CAA Δ ({by})"), (axes[3], *second)):
                stats = [getattr(r, attr) for r in rows]
                if any(st is None for st in stats):
                    continue
                ax.fill_between(xs, [st.low for st in stats], [st.high for st in stats], color=color("caa"),
                                alpha=0.2, lw=0)
                ax.plot(xs, [st.value for st in stats], "o-", color=color("caa"), label=group.label)
                ax.set_ylabel(label)
            axes[2].axhline(0, color="black", lw=0.8, ls=":")
            axes[2].set_title(f"CAA dose-response on test ({group.label}), 95% bootstrap CI", fontsize=10)
    axes[-1].set_xlabel("s: L2 norm of θ₀ = s · unit(CAA) (and of the CAA θ evaluated)")
    return save(fig, out, "jacobian_path.png", f"{data.name}: the Jacobian along the CAA steering path")


def fig_against_random(data: Data, out: Path) -> Path:
    """Every vector group's val choice on test against the random directions at its cost: each
    random draw's Δ (both signs of each direction) as a dot, the choice's Δ with its interval."""
    val, test = need_splits(data)
    found = [e for e in entries(val, test, data.kl_max, data.by) if e.standing]
    if not found:
        raise Skip("test has no random directions at the scales val chose (`make eval` scores them)")
    draws = len(next(iter(found[0].standing.values())).draws)
    return random_distribution_figure(
        found, out, "against_random.png",
        f"{data.name}, test split (n = {test.n_questions}): each choice on val against {draws} random "
        "draws at its cost")


def make_all(data: Data, out: Path, scale: float) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    figures = [("violin", lambda: fig_violin(data, out, scale)),
               ("violin across scales", lambda: fig_violin_scales(data, out)),
               ("dose-response", lambda: fig_dose(data, out)),
               ("Δ against KL", lambda: fig_cost(data, out)),
               ("against the random distribution", lambda: fig_against_random(data, out)),
               ("PI spectrum", lambda: fig_spectrum(data, out)),
               ("Jacobian along the CAA path", lambda: fig_path(data, out)),
               ("CAA layer sweep", lambda: fig_layers(data, out, scale)),
               ("MELBO traces", lambda: fig_melbo(data, out))]
    written = []
    for name, draw in figures:
        try:
            written.append(draw())
        except Skip as why:
            say(f"skipped {name}: {why}")
    return written
