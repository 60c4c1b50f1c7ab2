"""CAA: one contrastive-activation-addition vector per source layer, from the train split.

Each vector is mean over train pairs of act(positive) - act(negative), read at the output of
layers[S].mlp.down_proj (where it is injected) at the answer-letter token. Written raw (fp32) to
/<model>/vectors/caa/L<S>[-resid][-last] with every setting needed to recompute it.
"""
import time

import numpy as np
import torch

from engine.caa import CAPTURES, POSITIONS, caa_vector
from engine.data import load_items
from engine.model import check_injection_site, load_model, resolve_dtype, store_key
from engine.prompts import answer_tokens_for
from engine.store import (file_checksum, is_current, model_group, now, replace_group, run_attrs,
                          writing)
from runners.cli import count_or_all, layer_list, main_guard, parser, say, step

DEFAULT_LAYERS = [7]


def run_name(layer: int, capture: str, position: str) -> str:
    name = f"L{layer}"
    if capture != "mlp":
        name += f"-{capture}"
    if position != "letter":
        name += f"-{position}"
    return name


def run() -> None:
    p = parser(__doc__)
    p.add_argument("--layers", type=layer_list, default=DEFAULT_LAYERS,
                   help="source layers, e.g. '3 5 7 9': one vector each")
    p.add_argument("--capture", choices=CAPTURES, default="mlp",
                   help="mlp: output of mlp.down_proj (the injection site); resid: block output")
    p.add_argument("--position", choices=POSITIONS, default="letter",
                   help="letter: the answer-letter token; last: the final token of the answer")
    p.add_argument("--n-train", type=count_or_all, default=None, metavar="N|all",
                   help="use the first N train pairs (default: all)")
    args = p.parse_args()

    items = load_items(args.data, "train")[: args.n_train]
    key = store_key(args.model)
    dtype = resolve_dtype(args.dtype, args.device)
    base = {"method": "caa", "model": args.model, "dtype": dtype, "capture": args.capture,
            "position": args.position, "data": args.data, "data_checksum": file_checksum(args.data),
            "n_train": len(items), "batch_size": args.batch_size, "seed": None}
    todo = []
    for layer in args.layers:
        settings = {**base, "source_layer": layer}
        group = f"{key}/vectors/caa/{run_name(layer, args.capture, args.position)}"
        if not args.force and is_current(args.store, group, settings):
            say(f"{group} is up to date (FORCE=1 recomputes it)")
        else:
            todo.append((layer, settings))
    if not todo:
        return

    with step(f"loading {args.model} ({dtype})"):
        lm = load_model(args.model, dtype, args.device)
    for layer, _ in todo:
        lm.check_layer(layer, "source layer")
        check_injection_site(lm, layer)
    answers, skipped = answer_tokens_for(lm.tokenizer, items)
    for message in skipped:
        say(f"skipped (no answer token found): {message}")
    pad_id = lm.tokenizer.pad_token_id

    for layer, settings in todo:
        started, t0 = now(), time.perf_counter()
        with step(f"CAA at layer {layer} over {len(answers)} train pairs"):
            result = caa_vector(lm.model, answers, layer, pad_id, args.capture, args.position,
                                args.batch_size)
        seconds = time.perf_counter() - t0
        if not torch.isfinite(result.vector).all():
            raise ValueError(f"CAA vector at layer {layer} is not finite; nothing written")
        name = run_name(layer, args.capture, args.position)
        with writing(args.store) as h5:
            parent = model_group(h5, lm).require_group("vectors/caa")
            replace_group(parent, name, {
                "vectors": result.vector[None].numpy().astype(np.float32),
                "diff_norms": result.diff_norms.numpy(),
                "item_ids": np.array(result.item_ids),
            }, run_attrs(settings, started, seconds, source_layer=layer, sign_free=0,
                         norm=result.norm, diff_norm_mean=float(result.diff_norms.mean()),
                         diff_norm_std=float(result.diff_norms.std()),
                         resid_norm=result.resid_norm, skipped=skipped))
        say(f"  {lm.key}/vectors/caa/{name}: ‖v‖ = {result.norm:.3f}, per-pair ‖diff‖ = "
            f"{result.diff_norms.mean():.3f} ± {result.diff_norms.std():.3f}, "
            f"mean ‖h_S‖ = {result.resid_norm:.2f}")


if __name__ == "__main__":
    main_guard(run)
