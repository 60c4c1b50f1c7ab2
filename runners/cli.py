"""What every runner shares: the common options, argument types, messages, the error exit, and
the skeleton of a runner that computes vector groups (skip what is current, load and check the
model once, compute, write each group with its provenance)."""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from engine.behaviors import check_name, data_file, known_behaviors
from engine.cloze import cloze_items
from engine.data import Item, load_items
from engine.errors import DataError, UserError
from engine.model import DTYPES, REPO_ROOT, LoadedModel, cpu_bf16_native, load_model, resolve_dtype
from engine.norms import SCALE_UNITS, ResidualNorm
from engine.orders import answers_in_order
from engine.parallel import ranks, start
from engine.progress import say, say_skipped, step
from engine.scale_unit import residual_units
from engine.scores import SELECT_BY
from engine.site import SITES, resolve_site
from engine.store import (
    VectorGroup,
    behaviors_in_store,
    code_version,
    file_checksum,
    is_current,
    now,
    run_attrs,
    store_key,
    vectors_path,
    write_vector_group,
    writing,
)
from runners import defaults

# Arguments that say where to read and write or whether to redo work, not what is computed.
NOT_SETTINGS = ("store", "force", "check_args")


def parser(description: str, behavior: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=str(REPO_ROOT / defaults.MODEL),
                   help="HF id, local HF folder, or .gguf file")
    p.add_argument("--dtype", default=defaults.DTYPE, choices=["auto", *DTYPES],
                   help="dtype the network runs in; auto: bf16 on GPU, fp32 on CPU")
    p.add_argument("--device", default=defaults.DEVICE, help="torch device, e.g. cpu or cuda")
    p.add_argument("--store", default=defaults.STORE, help="HDF5 store to read and write")
    if behavior:
        add_behavior(p, data=True)
    add_site(p)
    p.add_argument("--batch-size", type=positive_int, default=16, help="prompts per forward pass")
    p.add_argument("--force", action="store_true", help="recompute groups that are up to date")
    p.add_argument("--check-args", action="store_true",
                   help="check the arguments and exit, loading nothing")
    return p


def add_site(p: argparse.ArgumentParser) -> None:
    p.add_argument("--site", choices=SITES, default=defaults.SITE,
                   help="where the plain paths add θ: mlp (layers[S].mlp.down_proj's output), resid "
                        "(decoder block S's output), auto (mlp where a numerical check shows it is "
                        "the residual add, as in Llama/Qwen/SmolLM2; resid otherwise, as in Gemma)")


def resolve_sites(lm: LoadedModel, layers, requested: str) -> dict[int, str]:
    """The site (mlp or resid) θ goes to at each source layer, checked, and said."""
    sites = {}
    for layer in sorted(set(layers)):
        lm.check_layer(layer, "source layer")
        sites[layer] = resolve_site(lm.model, layer, requested)
    where = {"mlp": "layers[S].mlp.down_proj's output", "resid": "decoder block S's output"}
    for site in sorted(set(sites.values())):
        at = [layer for layer, s in sites.items() if s == site]
        say(f"  site: θ goes to {where[site]} at S = {', '.join(map(str, at))} (SITE={requested}, "
            f"{lm.attention} attention)")
    return sites


def add_behavior(p: argparse.ArgumentParser, data: bool) -> None:
    """--behavior, and with ``data`` --data (its items; default data/<behavior>.jsonl)."""
    p.add_argument("--behavior", default=defaults.BEHAVIOR,
                   help="the A/B set: its items are data/<name>.jsonl and its results go to the "
                        f"store group /<model>/<name>; shipped: {', '.join(known_behaviors())}")
    if data:
        p.add_argument("--data", default=defaults.DATA or None,
                       help="A/B items (project JSONL format) instead of data/<behavior>.jsonl; "
                            "their behaviour field must be --behavior")


def parse(p: argparse.ArgumentParser, validate: Callable[[argparse.Namespace], None] | None = None
          ) -> argparse.Namespace:
    """Parse, resolve the dtype and the behaviour's data file, and run ``validate`` before
    anything slow; with --check-args, exit there. Under torchrun, join the process group (each
    rank on its own GPU, ``engine.parallel.start``)."""
    args = p.parse_args()
    dtype_hint(args.dtype, args.device)
    args.dtype = resolve_dtype(args.dtype, args.device)
    resolve_behavior(args)
    if validate is not None:
        validate(args)
    if args.check_args:
        sys.exit(0)
    group, args.device = start(args.device)
    if group.size > 1:
        say(f"{group.size} processes under torchrun: " + (
            "NCCL, each rank on its own GPU (cuda:LOCAL_RANK)" if group.device.type == "cuda"
            else "gloo on the CPU"))
    return args


def dtype_hint(requested: str, device: str) -> None:
    """Tell a user whose CPU multiplies bf16 natively that DTYPE=bf16 may be faster there (auto
    stays fp32 on every CPU: exact enough to reproduce across machines)."""
    if requested == "auto" and str(device).startswith("cpu") and cpu_bf16_native():
        say("note: this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX); on one such "
            "CPU bf16 evals ran 1.7x faster than fp32: DTYPE=bf16 trades fp32's exactness for that")


def settings_of(args: argparse.Namespace, drop: tuple[str, ...] = (), **extra) -> dict:
    """What a group records and is skipped on: every parsed argument (so a new flag cannot be
    forgotten) except those in NOT_SETTINGS and ``drop``, the data file's checksum, and ``extra``."""
    settings = {name: value for name, value in vars(args).items()
                if name not in NOT_SETTINGS and name not in drop}
    if "data" in settings:
        settings["data_checksum"] = file_checksum(args.data)
    return {**settings, **extra}


def resolve_behavior(args: argparse.Namespace) -> None:
    """Check --behavior, and point --data at data/<behavior>.jsonl when it is not given (an
    unknown name is refused with the known ones)."""
    if hasattr(args, "behavior"):
        check_name(args.behavior)
        if hasattr(args, "data"):
            args.data = str(args.data or data_file(args.behavior))


def behavior_items(args: argparse.Namespace, split: str | None = None) -> list[Item]:
    """The items of --data (one split, if given), checked to be --behavior's."""
    items = load_items(args.data, split)
    others = sorted({item.behavior for item in items} - {args.behavior})
    if others:
        raise DataError(f"{args.data} holds items of behaviour {', '.join(others)}, not "
                        f"{args.behavior}: pass BEHAVIOR={others[0]} (the behaviour names the "
                        "store group its results go to)")
    return items


def no_evals(h5, key: str, behavior: str, store: str) -> str:
    """What to say when a store holds no evals of ``behavior`` for model ``key``."""
    others = [name for name in behaviors_in_store(h5, key) if name != behavior]
    held = f" (it has results for {', '.join(others)}: pass BEHAVIOR=)" if others else ""
    return f"no {behavior} evals for {key} in {store}{held}: run `make eval BEHAVIOR={behavior}` first"


def layer_list(text: str) -> list[int]:
    try:
        return [int(tok) for tok in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"layers must be integers separated by spaces, got {text!r}")


def count_or_all(text: str) -> int | None:
    """`all` (None) or a positive count."""
    if text == "all":
        return None
    return positive_int(text, "a positive count or 'all'")


def numbers(text: str) -> list[float]:
    """Finite numbers separated by spaces or commas (UserError otherwise): the one parser of
    scale lists."""
    try:
        values = [float(tok) for tok in text.replace(",", " ").split()]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise UserError(f"expected one or more finite numbers separated by spaces, got {text!r}")
    return values


def scale_list(text: str) -> list[float]:
    """Signed scales, in order (AT_SCALES, generate's SCALES), e.g. "-0.14 0 0.14"."""
    return numbers(text)


def parse_scales(text: str) -> list[float]:
    """Unsigned scales for eval and the matrix, sorted and deduplicated; sign-free vectors get
    the negatives as well (engine.grid)."""
    refused = UserError(f"SCALES must be positive numbers separated by spaces, got {text!r}")
    try:
        scales = numbers(text)
    except UserError:
        raise refused from None
    if any(s <= 0 for s in scales):
        raise refused
    return sorted(set(scales))


def positive_int(text: str, expected: str = "a positive integer") -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def add_select_by(p: argparse.ArgumentParser) -> None:
    p.add_argument("--select-by", choices=SELECT_BY, default=defaults.SELECT_BY,
                   help="the score the val choice maximises: cloze (the class-balanced preference for "
                        "the behaviour's answer text) or letter (the order-mean logit difference); a "
                        "store without that score is chosen on by the other, with a note")


def check_kl_max(kl_max: float) -> None:
    if not kl_max >= 0:
        raise UserError(f"KL_MAX must be 0 or more (nats per token), got {kl_max}")


def above_source(layer: int, target: int) -> None:
    if target <= layer:
        raise UserError(f"target layer {target} must be above source layer {layer}")


def main_guard(run) -> None:
    """Run ``run()``; turn the project's own user-facing errors into one clear line and exit
    status 2. Anything else is a bug and keeps its traceback."""
    try:
        run()
        ranks().barrier()
    except UserError as err:
        where = f"[rank {ranks().rank}] " if ranks().size > 1 else ""
        print(f"{where}error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


def load_checked(args, items: list[Item], source_layers: list[int], target_layer: int | None = None,
                 order: str = "original", cloze: bool = False
                 ) -> tuple[LoadedModel, list, list[str], dict[int, str]]:
    """Load the model, check the layers and resolve the injection site, and find every item's
    answer tokens in ``order`` (``engine.orders.answers_in_order``), or with ``cloze`` its cloze
    form (``engine.cloze.cloze_items``); returns (model, answers or cloze items, skipped
    messages, site per source layer). Raises if no item is usable."""
    with step(f"loading {args.model} ({args.dtype})"):
        lm = load_model(args.model, args.dtype, args.device)
    sites = resolve_sites(lm, source_layers, args.site)
    if target_layer is not None:  # above the source layer: checked by the runner before loading
        lm.check_layer(target_layer, "target layer")
    if cloze:
        answers, skipped = cloze_items(lm.tokenizer, items)
    else:
        answers, skipped = answers_in_order(lm.tokenizer, items, order)
    say_skipped(skipped, bool(answers), "no usable prompts: every item was skipped")
    return lm, answers, skipped, sites


def add_scale_unit(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale-unit", choices=SCALE_UNITS, default=defaults.SCALE_UNIT,
                   help="resid: every scale is a fraction of the median ‖h_S‖ at the source layer "
                        "(over the first train prompts; stored per model, layer and behaviour), so one "
                        "grid travels between models; abs: an absolute L2 norm")


def unit_norms(args, lm: LoadedModel, layers, behavior: str | None = None,
               data: str | None = None) -> dict[int, ResidualNorm]:
    """``engine.scale_unit.residual_units`` for --behavior (or ``behavior``, its items ``data``),
    from the arguments; empty for ``--scale-unit abs``."""
    if args.scale_unit == "abs":
        return {}
    return residual_units(args.store, lm, layers, model=args.model, dtype=args.dtype,
                          behavior=behavior or args.behavior, data=data or args.data)


def neutral_options(args: argparse.Namespace) -> dict:
    """The options ``engine.neutral.neutral_texts`` records and obeys, from eval's or the matrix's
    arguments: ``neutral_texts(args.store, lm, split, prompts, **neutral_options(args))``."""
    return {"model": args.model, "dtype": args.dtype, "device": args.device, "neutral": args.neutral,
            "n_neutral": args.n_neutral, "gen_tokens": args.gen_tokens, "force": args.force}


@dataclass
class Job:
    """One vector group a runner is asked for."""
    run: str
    source_layer: int
    settings: dict
    site: str = ""  # mlp or resid, resolved once the model is loaded


Compute = Callable[[LoadedModel, list, Job], VectorGroup]  # answers: AnswerTokens or ClozeItems


def compute_groups(args, module: str, method: str, jobs: list[Job], items: list[Item],
                   compute: Compute, target_layer: int | None = None, order: str = "original",
                   cloze: bool = False) -> None:
    """The runner skeleton: skip the groups that are current (same settings, same code), load and
    check the model once for the rest, compute each and write it with its provenance. ``compute``
    gets the items' answer tokens in ``order``, or with ``cloze`` their cloze forms; it runs on
    every rank (each on its share, ``engine.parallel.ranks()``); rank 0 writes."""
    key, version = store_key(args.model), code_version(module)
    current = ranks().same([not args.force and is_current(args.store, vectors_path(
        key, args.behavior, method, job.run), job.settings, version) for job in jobs])
    todo = []
    for job, is_done in zip(jobs, current):
        if is_done:
            say(f"{vectors_path(key, args.behavior, method, job.run)} is up to date (FORCE=1 recomputes it)")
        else:
            todo.append(job)
    if not todo:
        return
    lm, answers, skipped, sites = load_checked(args, items, sorted({j.source_layer for j in todo}),
                                               target_layer, order, cloze)
    for job in todo:
        job.site = sites[job.source_layer]
        started, t0 = now(), time.perf_counter()
        group = compute(lm, answers, job)
        seconds = time.perf_counter() - t0
        if not np.isfinite(group.vectors).all():
            raise UserError(f"{method} vectors of {job.run} are not finite; nothing written")
        group.settings = job.settings
        provenance = run_attrs(job.settings, version, started, seconds, skipped=skipped, site=job.site,
                               nproc=ranks().size)
        del provenance["settings"]  # written from group.settings
        group.attrs.update(provenance)
        if ranks().writer:
            with writing(args.store) as h5:
                write_vector_group(h5, lm, args.behavior, group)
        say(f"  wrote {vectors_path(lm.key, args.behavior, method, job.run)} ({seconds:.1f}s)")
