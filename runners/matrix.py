"""Does a direction found for one behaviour move the others? The cross-behaviour matrix.

For each behaviour in --behaviors: its --method vectors (stored by `make <method> BEHAVIOR=...`)
are evaluated on its own validation questions at --scales (both answer orders, KL on neutral
text), and the setting the report would choose is taken (largest order-mean logit difference
among settings that keep the answer mass and cost at most --kl-max nats per token). Then every
chosen θ, N_RANDOM random directions at each chosen scale and the unsteered model are evaluated
on every behaviour's test questions, in one pass per source layer over all behaviours'
questions. Cell (row b, column c): Δ = mean over c's test questions of the order-mean logit
difference with b's θ minus without, with a paired 95% bootstrap interval; the random rows are
the reference a cell has to beat.

Writes /<model>/matrix/<method> (every per-question number, the choices and the table) and
<out>/matrix_<method>.png and .md.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.analysis import Group, Row, Split, choose_for_method, row, stat
from engine.behaviors import data_file, label
from engine.choice import VectorChoice, theta_of
from engine.data import load_items
from engine.errors import UserError
from engine.evaluate import QUESTIONS_PER_PASS, SETTINGS_PER_PASS
from engine.generate import load_prompts
from engine.grid import build_grid, random_directions
from engine.model import REPO_ROOT, load_model
from engine.orders import answers_in_order
from engine.scores import score
from engine.store import (
    code_version,
    file_checksum,
    matrix_path,
    now,
    read_vector_groups,
    run_attrs,
    store_key,
    write_matrix,
    writing,
)
from runners import defaults
from runners.cli import (
    check_kl_max,
    count_or_all,
    main_guard,
    neutral_texts,
    parse,
    parse_scales,
    parser,
    positive_int,
    progress_bar,
    resolve_sites,
    say,
    settings_of,
    step,
)

METHODS = ("caa", "pi", "pi_caa", "melbo")


@dataclass
class Source:
    """One behaviour's chosen setting: what its row of the matrix adds."""
    behavior: str
    choice: VectorChoice | None  # None: no setting of the method was eligible on val
    theta: np.ndarray | None
    source_layer: int
    val: Row | None  # the chosen setting's numbers on the behaviour's own val questions


def validate(args) -> None:
    args.behaviors = args.behaviors.replace(",", " ").split()
    if len(args.behaviors) < 2 or len(set(args.behaviors)) != len(args.behaviors):
        raise UserError(f"BEHAVIORS must name two or more different behaviours, got {args.behaviors}")
    args.data_files = {name: str(data_file(name)) for name in args.behaviors}  # unknown: lists the known
    args.scales = parse_scales(args.scales)
    check_kl_max(args.kl_max)


def run() -> None:
    p = parser(__doc__, behavior=False)
    p.add_argument("--behaviors", default=defaults.BEHAVIORS, help="behaviours, e.g. 'survival-instinct myopic-reward'")
    p.add_argument("--method", choices=METHODS, default=defaults.METHOD, help="whose vectors each behaviour contributes")
    p.add_argument("--scales", default=defaults.SCALES, help="scales the val choice is made among")
    p.add_argument("--n-eval", type=count_or_all, default=defaults.MATRIX_N_EVAL, metavar="N|all",
                   help="questions per behaviour and split")
    p.add_argument("--max-vectors", type=count_or_all, default=defaults.EVAL_K, metavar="N|all",
                   help="the first N vectors of each group take part in the val choice")
    p.add_argument("--n-random", type=positive_int, default=defaults.MATRIX_N_RANDOM,
                   help="random directions per chosen scale (the reference rows)")
    p.add_argument("--seed", type=int, default=defaults.SEED, help="seed of the random directions")
    p.add_argument("--kl-max", type=float, default=defaults.KL_MAX,
                   help="choose on val only among settings with mean KL on neutral text ≤ this")
    p.add_argument("--neutral", default=str(REPO_ROOT / defaults.NEUTRAL), help="neutral prompts for the KL")
    p.add_argument("--n-neutral", type=count_or_all, default=defaults.N_NEUTRAL, metavar="N|all",
                   help="neutral prompts per split")
    p.add_argument("--gen-tokens", type=positive_int, default=defaults.GEN_TOKENS,
                   help="tokens of the unsteered continuation the KL is scored on")
    p.add_argument("--out", default=defaults.RESULTS, help="folder for matrix_<method>.png and .md")
    p.set_defaults(batch_size=QUESTIONS_PER_PASS)
    args = parse(p, validate)

    items = {split: {name: sorted(load_items(args.data_files[name], split), key=lambda i: i.id)[: args.n_eval]
                     for name in args.behaviors} for split in ("val", "test")}
    neutral = {split: load_prompts(args.neutral, split, args.n_neutral) for split in ("val", "test")}
    key = store_key(args.model)
    groups = {}
    for name in args.behaviors:
        groups[name] = read_vector_groups(args.store, key, name, method=args.method)
        if not groups[name]:
            raise UserError(f"no {args.method} vectors of {name} for {key} in {args.store}: run "
                            f"`make {args.method} BEHAVIOR={name}` (make matrix does) first")
        for group in groups[name]:
            group.vectors = group.vectors[: args.max_vectors]

    with step(f"loading {args.model} ({args.dtype})"):
        lm = load_model(args.model, args.dtype, args.device)
    sites = resolve_sites(lm, [g.source_layer for gs in groups.values() for g in gs], args.site)
    answers = {}
    for split, by_name in items.items():
        for name, chosen in by_name.items():
            answers[split, name], skipped = answers_in_order(lm.tokenizer, chosen, "both")
            for message in skipped:
                say(f"skipped: {message}")
            if not answers[split, name]:
                raise UserError(f"no usable {split} question of {name}: every item was skipped")
    texts = {split: neutral_texts(args, lm, split, prompts) for split, prompts in neutral.items()}

    started, t0 = now(), time.perf_counter()
    sources = [choose_on_val(args, lm, name, groups[name], answers["val", name], texts["val"])
               for name in args.behaviors]
    table = evaluate_on_test(args, lm, sources, answers, texts["test"])
    seconds = time.perf_counter() - t0
    settings = settings_of(args, drop=("out", "data_files"), data_checksums={
        name: file_checksum(path) for name, path in args.data_files.items()})
    with writing(args.store) as h5:
        write_matrix(h5, lm, args.method, table.datasets(sources),
                     run_attrs(settings, code_version(__spec__.name), started, seconds,
                               behaviors=args.behaviors, kl_max=args.kl_max,
                               sites=json.dumps({str(k): v for k, v in sites.items()})))
    say(f"wrote {matrix_path(lm.key, args.method)} in {seconds:.0f}s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    page = out / f"matrix_{args.method}.md"
    page.write_text(table.markdown(sources, lm.key, args), encoding="utf-8")
    figure = draw(table, sources, lm.key, args, out / f"matrix_{args.method}.png")
    print(page.read_text(encoding="utf-8"))
    say(f"wrote {page} and {figure}")


def choose_on_val(args, lm, name: str, groups, answers, texts) -> Source:
    """The behaviour's setting chosen on its own val questions, as the report chooses."""
    layer = groups[0].source_layer
    by_layer = [g for g in groups if g.source_layer == layer]
    if len(by_layer) < len(groups):
        say(f"{name}: {args.method} groups at several layers; the matrix takes layer {layer}'s")
    grid = build_grid(by_layer, args.scales, lm.d_model)
    with progress_bar(len(grid.thetas) * (len(answers) + len(texts)), f"val {name}", "question×setting") as bar:
        scored = score(lm.model, answers, 2, texts, layer, grid.thetas, lm.tokenizer.pad_token_id,
                       args.batch_size, SETTINGS_PER_PASS, progress=bar.update)
    diff, mass = scored.logit_diff, scored.answer_mass  # [n_settings, 2, n_q]
    kl, top1 = grid.unpack(scored.kl), grid.unpack(scored.top1)
    diffs, masses = grid.unpack(diff), grid.unpack(mass)
    split = Split("val", np.array([]), diff[0].mean(0), mass[0].mean(0), {}, "both", name, diff[0])
    for span in grid.spans:
        g = span.group
        split.groups[g.label] = Group(g.method, g.run, diffs[g.label].mean(2), masses[g.label].mean(2),
                                      np.array(span.scales), layer, {}, diffs[g.label],
                                      kl[g.label], top1[g.label])
    chosen = choose_for_method(args.method, split, args.kl_max)
    if chosen is None:
        say(f"{name}: no {args.method} setting keeps the answer mass up with KL ≤ {args.kl_max} "
            "on val; its row stays empty")
        return Source(name, None, None, layer, None)
    group, vector, s = chosen
    choice = VectorChoice(group.method, group.run, vector, float(group.scales[s]))
    theta, _ = theta_of(args.store, lm.key, name, choice)
    val_row = row(choice.scale, group.logit_diff[vector, s], group.mass[vector, s], split.baseline,
                  group.by_order[vector, s])
    val_row.kl = stat(group.kl[vector, s])
    say(f"{name}: chose {choice.label} on val (Δ {val_row.delta.value:+.3f}, KL {val_row.kl.value:.3f})")
    return Source(name, choice, theta, layer, val_row)


@dataclass
class Table:
    """Test-split numbers: rows are the chosen θ of each behaviour and the random references,
    columns the behaviours whose questions are asked."""
    targets: list[str]
    question_ids: dict[str, list[str]]
    baseline: dict[str, np.ndarray]  # [2, n_q] logit diff by order, per target
    baseline_mass: dict[str, np.ndarray]  # [2, n_q]
    chosen: dict[str, dict[str, np.ndarray]]  # source -> target -> [2, n_q]
    chosen_mass: dict[str, dict[str, np.ndarray]]
    random_scales: list[float]
    random: dict[float, dict[str, np.ndarray]]  # scale -> target -> [n_random, 2, n_q]
    kl: dict[str, np.ndarray]  # source -> [n_neutral] on the test neutral prompts
    random_kl: dict[float, np.ndarray]  # scale -> [n_random, n_neutral]

    def cell(self, source: str, target: str) -> Row:
        by_order = self.chosen[source][target]
        return row(0.0, by_order.mean(0), self.chosen_mass[source][target].mean(0),
                   self.baseline[target].mean(0), by_order)

    def random_cell(self, scale: float, target: str) -> Row:
        by_order = self.random[scale][target]  # [n_random, 2, n_q], pooled over the directions
        no_mass = np.zeros(by_order.shape[::2])  # answer mass is not shown for the reference rows
        return row(scale, by_order.mean(1), no_mass, self.baseline[target].mean(0))

    def baseline_row(self, target: str) -> Row:
        base = self.baseline[target]
        return row(0.0, base.mean(0), self.baseline_mass[target].mean(0), base.mean(0), base)

    def datasets(self, sources: list[Source]) -> dict[str, np.ndarray]:
        chosen = [s for s in sources if s.choice is not None]
        cells = {(s.behavior, t): self.cell(s.behavior, t) for s in chosen for t in self.targets}
        randoms = {(r, t): self.random_cell(r, t) for r in self.random_scales for t in self.targets}

        def grid(rows: list, pick) -> np.ndarray:
            return np.array([[pick(cells[s, t]) for t in self.targets] for s in rows], np.float32)

        def random_grid(pick) -> np.ndarray:
            return np.array([[pick(randoms[r, t]) for t in self.targets] for r in self.random_scales],
                            np.float32).reshape(len(self.random_scales), len(self.targets))

        names = [s.behavior for s in chosen]
        out = {
            "sources": np.array([s.behavior for s in sources]),
            "targets": np.array(self.targets),
            "chosen_method": np.array([s.choice.method if s.choice else "" for s in sources]),
            "chosen_run": np.array([s.choice.run if s.choice else "" for s in sources]),
            "chosen_index": np.array([s.choice.index if s.choice else -1 for s in sources]),
            "chosen_scale": np.array([s.choice.scale if s.choice else np.nan for s in sources], np.float32),
            "chosen_layer": np.array([s.source_layer for s in sources]),
            "thetas": np.stack([s.theta if s.theta is not None else np.full_like(chosen[0].theta, np.nan)
                                for s in sources]) if chosen else np.zeros((0, 0), np.float32),
            "val_delta": np.array([s.val.delta.value if s.val else np.nan for s in sources], np.float32),
            "val_kl": np.array([s.val.kl.value if s.val else np.nan for s in sources], np.float32),
            "rows": np.array(names),
            "delta": grid(names, lambda r: r.delta.value).reshape(len(names), len(self.targets)),
            "delta_low": grid(names, lambda r: r.delta.low).reshape(len(names), len(self.targets)),
            "delta_high": grid(names, lambda r: r.delta.high).reshape(len(names), len(self.targets)),
            "letter_shift": grid(names, lambda r: r.letter_shift.value).reshape(len(names), len(self.targets)),
            "test_kl": np.array([self.kl[s].mean() for s in names], np.float32),
            "random_scales": np.array(self.random_scales, np.float32),
            "random_delta": random_grid(lambda r: r.delta.value),
            "random_delta_low": random_grid(lambda r: r.delta.low),
            "random_delta_high": random_grid(lambda r: r.delta.high),
            "random_kl": np.array([self.random_kl[r].mean() for r in self.random_scales], np.float32),
        }
        for t in self.targets:  # every per-question number, per target behaviour
            base = self.baseline_row(t)
            out |= {f"questions/{t}/question_ids": np.array(self.question_ids[t]),
                    f"questions/{t}/baseline_by_order": self.baseline[t].astype(np.float32),
                    f"questions/{t}/chosen_by_order": np.stack([self.chosen[s][t] for s in names]).astype(np.float32)
                    if names else np.zeros((0, 2, len(self.question_ids[t])), np.float32),
                    f"questions/{t}/random_by_order": np.stack([self.random[r][t] for r in self.random_scales]).astype(np.float32),
                    f"questions/{t}/baseline_consistency": np.array(
                        [base.consistency.value, base.consistency.low, base.consistency.high], np.float32)}
        return out

    def markdown(self, sources: list[Source], key: str, args) -> str:
        short = {t: label(t) for t in self.targets}
        lines = [f"# Cross-behaviour matrix: {key}, {args.method}", "",
                 f"Each row: a behaviour's {args.method} vector chosen on its own val questions "
                 f"(KL ≤ {args.kl_max}), at its chosen scale. Each column: Δ on that behaviour's "
                 f"test questions (first {args.n_eval} by id, both answer orders; Δ = order-mean "
                 "logit(behaviour) − logit(other), steered minus unsteered, nats), 95% paired "
                 "bootstrap interval over questions. Random rows: "
                 f"{args.n_random} random directions at the same scale, pooled. The intervals are "
                 "per cell: among many cells a few exclude 0 by chance alone (about 1 in 20), so "
                 "read a cell against the random row and its neighbours.", "",
                 "| vector (chosen on val) | scale | val Δ | KL test | " + " | ".join(short.values()) + " |",
                 "|---|---|---|---|" + "---|" * len(self.targets)]
        for s in sources:
            if s.choice is None:
                lines.append(f"| {label(s.behavior)}: nothing eligible | – | – | – |" + " – |" * len(self.targets))
                continue
            cells = [self.cell(s.behavior, t).delta.fmt(3, True) for t in self.targets]
            lines.append(f"| {label(s.behavior)}: {s.choice.run} #{s.choice.index} | {s.choice.scale:+g} | "
                         f"{s.val.delta.value:+.3f} | {self.kl[s.behavior].mean():.3f} | " + " | ".join(cells) + " |")
        for r in self.random_scales:
            cells = [self.random_cell(r, t).delta.fmt(3, True) for t in self.targets]
            lines.append(f"| random ×{args.n_random} | ±{r:g} | – | {self.random_kl[r].mean():.3f} | "
                         + " | ".join(cells) + " |")
        lines += ["", "Unsteered model on each behaviour's test questions (both orders): share "
                  "preferring the behaviour, order-mean logit difference, letter shift, and "
                  "consistency (the two orders prefer the same answer text).", "",
                  "| behaviour | n | behaviour % | mean logit diff | letter shift | consistency % |",
                  "|---|---|---|---|---|---|"]
        for t in self.targets:
            base = self.baseline_row(t)
            lines.append(f"| {t} | {len(self.question_ids[t])} | {base.positive.fmt()} | "
                         f"{base.mean_diff.fmt(3, True)} | {base.letter_shift.fmt(3, True)} | "
                         f"{base.consistency.fmt()} |")
        return "\n".join(lines) + "\n"


def evaluate_on_test(args, lm, sources: list[Source], answers, texts) -> Table:
    """Every chosen θ, the random references and the unsteered model on every behaviour's test
    questions: one evaluate() per source layer over all behaviours' questions at once."""
    targets = args.behaviors
    blocks, asked = {}, []
    for name in targets:  # each block is order-major on its own: originals, then mirrors
        blocks[name] = slice(len(asked), len(asked) + len(answers["test", name]))
        asked += answers["test", name]
    chosen = [s for s in sources if s.choice is not None]
    random_scales = sorted({abs(s.choice.scale) for s in chosen}) or [min(args.scales)]
    table = Table(targets, {t: [a.item_id for a in answers["test", t][: len(answers["test", t]) // 2]]
                            for t in targets}, {}, {}, {s.behavior: {} for s in chosen},
                  {s.behavior: {} for s in chosen}, random_scales, {r: {} for r in random_scales}, {}, {})
    layers = sorted({s.source_layer for s in sources})
    for n, layer in enumerate(layers):
        here = [s for s in chosen if s.source_layer == layer]
        directions = random_directions(args.n_random, lm.d_model, args.seed, layer)  # eval's control's
        rows = [torch.zeros(lm.d_model)] + [torch.from_numpy(s.theta) for s in here]
        rows += [(r * d).float() for r in random_scales for d in directions]
        thetas = torch.stack(rows)
        total = len(thetas) * (len(asked) + len(texts))
        say(f"… [test] layer {layer}: {len(thetas)} settings × {len(asked) // 2} questions of "
            f"{len(targets)} behaviours × 2 orders, and KL on {len(texts)} neutral texts")
        with progress_bar(total, f"test, layer {layer}", "question×setting") as bar:
            scored = score(lm.model, asked, 1, texts, layer, thetas, lm.tokenizer.pad_token_id,
                           args.batch_size, SETTINGS_PER_PASS, progress=bar.update)
        diff, mass = scored.logit_diff[:, 0], scored.answer_mass[:, 0]  # [n_settings, all questions]
        for t, block in blocks.items():
            by_order = diff[:, block].reshape(len(thetas), 2, -1)
            mass_by_order = mass[:, block].reshape(len(thetas), 2, -1)
            if n == 0:
                table.baseline[t], table.baseline_mass[t] = by_order[0], mass_by_order[0]
            for i, s in enumerate(here, start=1):
                table.chosen[s.behavior][t] = by_order[i]
                table.chosen_mass[s.behavior][t] = mass_by_order[i]
            first = 1 + len(here)
            for j, r in enumerate(random_scales):
                rows_r = slice(first + j * args.n_random, first + (j + 1) * args.n_random)
                table.random.setdefault(r, {})[t] = by_order[rows_r]  # last layer's if several
        kl = scored.kl
        for i, s in enumerate(here, start=1):
            table.kl[s.behavior] = kl[i]
        for j, r in enumerate(random_scales):
            table.random_kl[r] = kl[1 + len(here) + j * args.n_random: 1 + len(here) + (j + 1) * args.n_random]
    return table


def draw(table: Table, sources: list[Source], key: str, args, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    chosen = [s for s in sources if s.choice is not None]
    row_labels = [f"{label(s.behavior)} ({s.choice.scale:+g})" for s in chosen]
    row_labels += [f"random ×{args.n_random} (±{r:g})" for r in table.random_scales]
    cells = [[table.cell(s.behavior, t) for t in table.targets] for s in chosen]
    cells += [[table.random_cell(r, t) for t in table.targets] for r in table.random_scales]
    values = np.array([[c.delta.value for c in line] for line in cells])
    limit = max(float(np.abs(values).max()), 1e-6)
    fig, ax = plt.subplots(figsize=(2.0 + 1.5 * len(table.targets), 1.2 + 0.75 * len(cells)))
    image = ax.imshow(values, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -limit, limit), aspect="auto")
    for i, line in enumerate(cells):
        for j, c in enumerate(line):
            excludes_zero = c.delta.low > 0 or c.delta.high < 0
            ax.text(j, i, f"{c.delta.value:+.3f}\n[{c.delta.low:+.3f}, {c.delta.high:+.3f}]",
                    ha="center", va="center", fontsize=7, fontweight="bold" if excludes_zero else "normal",
                    color="white" if abs(c.delta.value) > 0.6 * limit else "black")
    if table.random_scales:
        ax.axhline(len(chosen) - 0.5, color="black", lw=1.5)
    ax.set_xticks(range(len(table.targets)), [label(t) for t in table.targets], rotation=30, ha="right")
    ax.set_yticks(range(len(row_labels)), row_labels)
    ax.set_xlabel("questions of this behaviour (test split, both orders)")
    ax.set_ylabel(f"{args.method} vector chosen on val (scale)")
    ax.grid(False)
    fig.colorbar(image, ax=ax, label="Δ order-mean logit diff [nats]")
    ax.set_title(f"{key}: Δ with 95% CI (bold: CI excludes 0)", fontsize=11)
    fig.savefig(path, bbox_inches="tight", dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main_guard(run)
