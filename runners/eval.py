"""Evaluate every stored vector, the unsteered baseline and random controls by A/B logit difference.

For each split: the first N_EVAL questions (ordered by id, which is a hash, so the subset is an
unbiased sample), every vector group under /<model>/vectors (any method), and N_RANDOM random
directions per source layer, at every scale. Vectors are unit-normalised before scaling unless
--raw; sign-free vectors (PI, PI@CAA, random) also get the negative scales. Writes
/<model>/evals/<split>/ (question ids, baseline) and /<model>/evals/<split>/<method>/<run>/
(logit_diff and answer_mass [k, n_scales, n_q], scales).
"""
import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from engine.data import SPLITS, load_items
from engine.evaluate import QUESTIONS_PER_PASS, SETTINGS_PER_PASS, evaluate
from engine.model import check_injection_site, load_model, resolve_dtype, store_key
from engine.prompts import answer_tokens_for
from engine.store import (file_checksum, is_current, model_group, now, open_for_reading,
                          replace_group, run_attrs, writing)
from runners.cli import count_or_all, main_guard, parser, say

# The same defaults as the Makefile's (sized for the 15-minute main job; README: scaling up).
DEFAULT_SCALES = "8 24 64"
DEFAULT_N_EVAL = 16
DEFAULT_MAX_VECTORS = 1


def parse_scales(text: str) -> list[float]:
    try:
        scales = [float(tok) for tok in text.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"SCALES must be positive numbers separated by spaces, got {text!r}") from None
    if not scales or any(not np.isfinite(s) or s <= 0 for s in scales):
        raise ValueError(f"SCALES must be positive numbers separated by spaces, got {text!r}")
    return sorted(set(scales))


def parse_splits(text: str) -> list[str]:
    splits = text.replace(",", " ").split()
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise ValueError(f"unknown split(s) {unknown or text!r}: expected some of {', '.join(SPLITS)}")
    return splits


def stored_vector_groups(store: str, key: str, d_model: int) -> list[dict]:
    """Every /<key>/vectors/<method>/<run> group, checked for width and finiteness."""
    found = []
    if not Path(store).exists():
        return found
    with open_for_reading(store) as h5:  # refuses a file that is not HDF5, before any work
        if f"{key}/vectors" not in h5:
            return found
        for method, runs in h5[f"{key}/vectors"].items():
            for run, group in runs.items():
                where = f"{key}/vectors/{method}/{run}"
                vectors = group["vectors"][()].astype(np.float32)
                if vectors.ndim != 2 or vectors.shape[1] != d_model:
                    raise ValueError(f"{where}: vectors have shape {vectors.shape}, but the model's "
                                     f"width is {d_model}; was it computed for another model?")
                if not np.isfinite(vectors).all():
                    raise ValueError(f"{where}: vectors contain NaN or inf; recompute with FORCE=1")
                found.append({"method": method, "run": run, "path": where, "vectors": vectors,
                              "source_layer": int(group.attrs["source_layer"]),
                              "sign_free": bool(group.attrs.get("sign_free", 0)),
                              "fingerprint": group.attrs.get("code_version", "") + group.attrs.get("settings", "")})
    return found


def random_groups(layers: list[int], n_random: int, d_model: int, seed: int, norms: dict) -> list[dict]:
    groups = []
    for layer in layers:
        gen = torch.Generator().manual_seed(seed * 1000 + layer)
        directions = torch.randn(n_random, d_model, generator=gen, dtype=torch.float64)
        directions = directions / directions.norm(dim=1, keepdim=True) * norms.get(layer, 1.0)
        groups.append({"method": "random", "run": f"L{layer}", "path": None,
                       "vectors": directions.float().numpy(), "source_layer": layer,
                       "sign_free": True, "fingerprint": f"seed{seed}"})
    return groups


def signed_scales(scales: list[float], sign_free: bool) -> list[float]:
    return [-s for s in reversed(scales)] + scales if sign_free else scales


def run() -> None:
    p = parser(__doc__)
    p.add_argument("--scales", default=DEFAULT_SCALES, help="L2 norms of what is added, e.g. '8 24 64'")
    p.add_argument("--raw", action="store_true", help="scale raw vectors instead of unit ones")
    p.add_argument("--n-eval", type=count_or_all, default=DEFAULT_N_EVAL, metavar="N|all",
                   help="questions per split")
    p.add_argument("--n-random", type=int, default=8, help="random directions per source layer")
    p.add_argument("--max-vectors", type=count_or_all, default=DEFAULT_MAX_VECTORS, metavar="N|all",
                   help="evaluate only the first N vectors of each group (PI: the largest σ)")
    p.add_argument("--splits", default="val test", help="splits to evaluate")
    p.add_argument("--layer", type=int, default=7,
                   help="source layer for the random control when the store holds no vectors")
    p.add_argument("--seed", type=int, default=0, help="seed of the random directions")
    p.add_argument("--settings-per-pass", type=int, default=SETTINGS_PER_PASS,
                   help="θ settings stacked in one batch (memory vs speed)")
    p.set_defaults(batch_size=QUESTIONS_PER_PASS)
    args = p.parse_args()
    scales = parse_scales(args.scales)
    splits = parse_splits(args.splits)
    if args.n_random < 1:
        raise ValueError("N_RANDOM must be at least 1: every table needs the random control")
    dtype = resolve_dtype(args.dtype, args.device)
    key = store_key(args.model)
    items_by_split = {split: sorted(load_items(args.data, split), key=lambda i: i.id)[: args.n_eval]
                      for split in splits}

    lm = load_model(args.model, dtype, args.device)
    groups = stored_vector_groups(args.store, key, lm.d_model)
    if not groups:
        say(f"no vectors for {key} in {args.store}: evaluating the baseline and random controls only")
    layers = sorted({g["source_layer"] for g in groups}) or [args.layer]
    for layer in layers:
        lm.check_layer(layer, "source layer")
        check_injection_site(lm, layer)
    norms = {}
    if args.raw:
        for layer in layers:
            rows = [np.linalg.norm(g["vectors"], axis=1) for g in groups if g["source_layer"] == layer]
            norms[layer] = float(np.concatenate(rows).mean()) if rows else 1.0
    groups += random_groups(layers, args.n_random, lm.d_model, args.seed, norms)

    for split in splits:
        evaluate_split(args, lm, split, items_by_split[split], groups, scales, dtype)


def evaluate_split(args, lm, split, items, groups, scales, dtype) -> None:
    answers, skipped = answer_tokens_for(lm.tokenizer, items)
    for message in skipped:
        say(f"skipped (no answer token found): {message}")
    question_ids = [a.item_id for a in answers]
    split_settings = {"model": args.model, "dtype": dtype, "data": args.data,
                      "data_checksum": file_checksum(args.data), "split": split,
                      "question_ids_sha": hashlib.sha256(" ".join(question_ids).encode()).hexdigest()[:16]}
    split_path = f"{lm.key}/evals/{split}"
    fresh_split = args.force or not is_current(args.store, split_path, split_settings)

    todo = []
    for g in groups:
        settings = {"scales": scales, "raw": args.raw,
                    "max_vectors": None if g["method"] == "random" else args.max_vectors,
                    "vectors": g["fingerprint"], "split": split_settings, "seed": args.seed,
                    "n_random": args.n_random if g["method"] == "random" else None}
        path = f"{split_path}/{g['method']}/{g['run']}"
        if fresh_split or not is_current(args.store, path, settings):
            todo.append((g, settings))
    if not todo and not fresh_split:
        say(f"{split_path}: every group is up to date (FORCE=1 recomputes)")
        return

    started, t0 = now(), time.perf_counter()
    results, baseline = {}, None
    layers = sorted({g["source_layer"] for g, _ in todo}) or [groups[0]["source_layer"]]
    for n_layer, layer in enumerate(layers):
        # One θ list per source layer: every group's (vector, scale) settings, stacked.
        thetas, spans = [], []
        if n_layer == 0:
            thetas.append(torch.zeros(lm.d_model))
        for g, settings in todo:
            if g["source_layer"] != layer:
                continue
            # --max-vectors trims the methods' groups; the random control keeps all N_RANDOM.
            keep = None if g["method"] == "random" else args.max_vectors
            vectors = torch.from_numpy(g["vectors"][:keep]).double()
            if not args.raw or g["method"] == "random":
                vectors = vectors / vectors.norm(dim=1, keepdim=True)
            signed = signed_scales(scales, g["sign_free"])
            start = len(thetas)
            thetas += [(v * s).float() for v in vectors for s in signed]
            spans.append((g, settings, start, len(vectors), signed))
        thetas = torch.stack(thetas)
        label = f"[{split}] layer {layer}: {len(thetas)} settings × {len(answers)} questions"
        say(f"… {label}")
        t_layer = time.perf_counter()
        result = evaluate(lm.model, answers, layer, thetas, lm.tokenizer.pad_token_id,
                          args.batch_size, args.settings_per_pass,
                          progress=lambda done, total: say(
                              f"  batch {done}/{total}, {time.perf_counter() - t_layer:.0f}s"))
        if n_layer == 0:
            baseline = (result.logit_diff[0].numpy(), result.answer_mass[0].numpy())
        for g, settings, start, k, signed in spans:
            shape = (k, len(signed), len(answers))
            results[(g["method"], g["run"])] = (
                g, settings, signed,
                result.logit_diff[start:start + k * len(signed)].reshape(shape).numpy(),
                result.answer_mass[start:start + k * len(signed)].reshape(shape).numpy())
    seconds = time.perf_counter() - t0

    with writing(args.store) as h5:
        split_group = model_group(h5, lm).require_group("evals")
        if fresh_split or split not in split_group:
            node = replace_group(split_group, split, {
                "question_ids": np.array(question_ids),
                "baseline_logit_diff": baseline[0].astype(np.float32),
                "baseline_answer_mass": baseline[1].astype(np.float32)},
                run_attrs(split_settings, started, seconds, skipped=skipped))
        else:
            node = split_group[split]
        for (method, run), (g, settings, signed, diff, mass) in results.items():
            datasets = {"logit_diff": diff.astype(np.float32), "answer_mass": mass.astype(np.float32),
                        "scales": np.array(signed, dtype=np.float32)}
            if g["path"] is None:
                datasets["vectors"] = g["vectors"]
            replace_group(node.require_group(method), run, datasets, run_attrs(
                settings, started, seconds, source_layer=g["source_layer"],
                sign_free=int(g["sign_free"]), raw=int(args.raw), vector_group=g["path"] or ""))
    say(f"{split_path}: wrote baseline and {len(results)} groups in {seconds:.0f}s")


if __name__ == "__main__":
    main_guard(run)
