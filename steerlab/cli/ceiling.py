"""The ceiling direction (`make ceiling`): the best direction at a given KL cost, to first order,
fitted on the train questions (steerlab/methods/ceiling.py).

Reads what `make gradients` stored: the train questions' gradients at --layer and the KL's Fisher
there. For each score (--fit-on: cloze, letter or both) writes a vector group
/<model>/<behavior>/vectors/ceiling/L<S>-<score>: one unit direction per λ in --lambdas,
(F̃ + λ·m I)⁻¹ ḡ_train (m: F̃'s mean eigenvalue; inf: ḡ itself), ḡ the headline's gradient (cloze:
the polarity-paired mean's, so a Yes/No direction is not what it fits). Eval scores every λ's
direction (EVAL_K does not trim them), and the choice on val picks λ and the cost as it picks
every method's vector and scale. Loads no model.
"""
import argparse
import math
import time

import numpy as np

from steerlab.base.errors import UserError
from steerlab.base.progress import say
from steerlab.cli import defaults
from steerlab.cli.options import main_guard, parse, parser
from steerlab.lm.fisher import FisherSpectrum
from steerlab.measure.statistics import headline_weights
from steerlab.methods.ceiling import LAMBDAS, ceiling_directions, check_lambdas, first_order_gain
from steerlab.store import (
    VectorGroup,
    code_version,
    fisher_path,
    gradients_path,
    is_current,
    now,
    open_for_reading,
    read_fisher,
    read_gradients,
    run_attrs,
    store_key,
    vectors_path,
    write_vector_group,
    writing,
)

FIT_ON = {"both": ("cloze", "letter"), "cloze": ("cloze",), "letter": ("letter",)}


def lambdas_of(text: str) -> list[float]:
    """``"0.1 1 inf"`` as numbers, refused unless every one is positive (inf allowed, NaN not)."""
    try:
        values = [float(token) for token in text.replace(",", " ").split()]
        check_lambdas(values)
    except (ValueError, UserError):
        raise argparse.ArgumentTypeError("LAMBDAS must be positive numbers (in units of F's mean "
                                         f"eigenvalue; inf: the plain gradient), got {text!r}") from None
    return values


def recorded(store: str, path: str) -> dict:
    """The settings and code version a stored group was computed with (what the ceiling depends on)."""
    with open_for_reading(store) as h5:
        attrs = h5[path].attrs
        return {"settings": str(attrs["settings"]), "code_version": str(attrs["code_version"])}


class _Model:
    """What the store's writers read of a model: its key and shape (no weights are loaded)."""

    def __init__(self, source: str, store: str):
        self.key, self.source = store_key(source), source
        with open_for_reading(store) as h5:
            attrs = h5[self.key].attrs
            self.n_layers, self.d_model, self.dtype = (int(attrs["n_layers"]), int(attrs["d_model"]),
                                                       str(attrs["dtype"]))


def run() -> None:
    p = parser(__doc__)
    p.add_argument("--layer", type=int, default=defaults.LAYER, help="source layer S")
    p.add_argument("--fit-on", choices=sorted(FIT_ON), default=defaults.FIT_ON,
                   help="the score whose headline the direction is fitted to")
    p.add_argument("--lambdas", type=lambdas_of, default=" ".join(f"{lam:g}" for lam in LAMBDAS),
                   help="regularisers λ of F̃ + λI in units of F̃'s mean eigenvalue; inf: the plain gradient")
    args = parse(p)
    key = store_key(args.model)
    train = read_gradients(args.store, key, args.behavior, "train", args.layer)
    fisher = read_fisher(args.store, key, args.layer)
    if train is None or fisher is None:
        raise UserError(f"no train gradients or Fisher at layer {args.layer} for {key} in {args.store}: run "
                        f"`make gradients LAYER={args.layer}` (same MODEL, BEHAVIOR and STORE) first")
    spectrum = FisherSpectrum(fisher["values"], fisher["vectors"], float(fisher["residual"]))
    inputs = {"gradients": recorded(args.store, gradients_path(key, args.behavior, "train", args.layer)),
              "fisher": recorded(args.store, fisher_path(key, args.layer))}
    version = code_version(__spec__.name)
    lm = _Model(args.model, args.store)
    for score in FIT_ON[args.fit_on]:
        run_name = f"L{args.layer}-{score}"
        settings = {"layer": args.layer, "fit_on": score, "lambdas": [str(lam) for lam in args.lambdas],
                    "behavior": args.behavior, "inputs": inputs}
        path = vectors_path(key, args.behavior, "ceiling", run_name)
        if not args.force and is_current(args.store, path, settings, version):
            say(f"{path} is up to date (FORCE=1 recomputes it)")
            continue
        started, t0 = now(), time.perf_counter()
        per_question = np.asarray(train[score], dtype=np.float64)
        weights = headline_weights(train["polarity"] if score == "cloze" else None, len(per_question))
        mean_gradient = weights @ per_question
        directions = ceiling_directions(mean_gradient, spectrum, args.lambdas)
        gain = first_order_gain(directions, mean_gradient, spectrum, 0.04)
        say(f"  ceiling on {score}: λ = {', '.join(f'{lam:g}' for lam in args.lambdas)} (× F̃'s mean "
            f"eigenvalue {spectrum.mean_eigenvalue():.3g}); first-order train gain at 0.04 KL "
            + ", ".join(f"{g:+.3f}" for g in gain))
        group = VectorGroup("ceiling", run_name, directions.astype(np.float32), args.layer, sign_free=False,
                            settings=settings,
                            arrays={"lambdas": np.array([lam if math.isfinite(lam) else np.inf
                                                         for lam in args.lambdas]),
                                    "train_gain_at_0.04": gain,
                                    "mean_gradient": mean_gradient.astype(np.float32),
                                    "prompt_ids": np.asarray(train["question_ids"])},
                            attrs={"fit_on": score, "vectors_are_candidates": 1,
                                   "mean_eigenvalue": spectrum.mean_eigenvalue()})
        group.attrs.update({k: v for k, v in run_attrs(settings, version, started,
                                                       time.perf_counter() - t0).items()
                            if k != "settings"})
        with writing(args.store) as h5:
            write_vector_group(h5, lm, args.behavior, group)
        say(f"  wrote {path}")


if __name__ == "__main__":
    main_guard(run)
