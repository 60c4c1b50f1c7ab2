"""What every runner shares: the common options, argument types, the error exit, and the
translation of parsed arguments into the engine's plain values (``context``, ``unit_norms``,
``neutral_options``). What a target computes lives in the engine (``steerlab.jobs`` is the
skeleton of the targets that compute vector groups)."""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable

from steerlab.base.errors import UserError
from steerlab.base.files import REPO_ROOT
from steerlab.base.parallel import ranks, start
from steerlab.base.progress import say
from steerlab.cli import defaults
from steerlab.jobs import RunContext
from steerlab.lm.model import DTYPES, LoadedModel, cpu_bf16_native, resolve_dtype
from steerlab.lm.site import SITES
from steerlab.measure.neutral import neutral_texts
from steerlab.measure.scales import SCALE_UNITS, residual_units
from steerlab.measure.scores import SCORE_NAMES
from steerlab.questions.behaviors import check_name, data_file, items_of, known_behaviors
from steerlab.questions.data import SPLITS, Item, load_prompts
from steerlab.store import file_checksum
from steerlab.store.groups import ResidualNorm

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
    rank on its own GPU, ``steerlab.base.parallel.start``)."""
    args = p.parse_args()
    dtype_hint(args.dtype, args.device)
    threads_hint(args.device)
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
        say("note: this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 "
            "evals can run faster than fp32 (docs/conventions.md, \"Dtypes\"): DTYPE=bf16 trades "
            "fp32's exactness for that")


def threads_hint(device: str) -> None:
    """Tell a user who starts a CPU job beside others that already keep every core busy that one
    thread per job runs them faster: torch's threads of two jobs on the same cores wait on each
    other (docs/development.md, "Two jobs at once")."""
    import torch

    if not str(device).startswith("cpu") or torch.get_num_threads() < 2:
        return
    cores, load = len(os.sched_getaffinity(0)), os.getloadavg()[0]
    if load >= cores:
        say(f"note: other work keeps this machine's {cores} cores busy (load {load:.1f}); with torch's "
            f"{torch.get_num_threads()} threads per job, jobs side by side run about 2x slower than with "
            "OMP_NUM_THREADS=1 each (docs/development.md, \"Two jobs at once\")")


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
    return items_of(args.data, args.behavior, split)


def context(args: argparse.Namespace) -> RunContext:
    """Which model the target loads and where its groups go, from its arguments."""
    return RunContext(args.store, args.model, args.behavior, args.dtype, args.device, args.site, args.force)


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


def parse_splits(text: str) -> list[str]:
    """Some of train, val, test, separated by spaces or commas."""
    splits = text.replace(",", " ").split()
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise UserError(f"unknown split(s) {unknown or text!r}: expected some of {', '.join(SPLITS)}")
    return splits


def parse_scales(text: str) -> list[float]:
    """Unsigned scales for eval and the matrix, sorted and deduplicated; sign-free vectors get
    the negatives as well (steerlab.measure.grid)."""
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


def add_segment(p: argparse.ArgumentParser, vectors: str, prompts: str, seed: str) -> None:
    """The options PI and MELBO share: the segment S → T, how many vectors (``vectors`` says what
    they are), the train prompts (``prompts``: what is taken over them), the seed (``seed``: of
    what), the scale unit and the neutral texts."""
    p.add_argument("--layer", type=int, default=defaults.LAYER,
                   help="source layer S: θ is added to layers[S].mlp.down_proj (or the block output: --site)")
    p.add_argument("--target", type=int, default=defaults.TARGET,
                   help="target layer T > S: the residual output of layers[T]")
    p.add_argument("--k", type=positive_int, default=defaults.K, help=f"number of {vectors}")
    p.add_argument("--n-prompts", type=count_or_all, default=defaults.N_PROMPTS, metavar="N|all",
                   help=f"first N train prompts {prompts}")
    p.add_argument("--seed", type=int, default=defaults.SEED, help=f"seed of {seed}")
    add_scale_unit(p)
    add_neutral(p)


def add_select_by(p: argparse.ArgumentParser) -> None:
    p.add_argument("--select-by", choices=SCORE_NAMES, default=defaults.SELECT_BY,
                   help="the score the val choice maximises: cloze (the polarity-paired preference for "
                        "the behaviour's answer text) or letter (the order-mean logit difference); a "
                        "store without that score is chosen on by the other, with a note")


def check_kl_max(kl_max: float) -> None:
    if not kl_max >= 0:
        raise UserError(f"KL_MAX must be 0 or more (nats per token), got {kl_max}")


def choice_parser(doc: str, reads: str) -> argparse.ArgumentParser:
    """The parser of a command that reads the store and chooses on val as the report does:
    --store, --model (``reads`` says what it is for), --kl-max, --select-by and --behavior."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--store", default=defaults.STORE, help="the HDF5 store to read")
    p.add_argument("--model", default=str(REPO_ROOT / defaults.MODEL), help=reads)
    p.add_argument("--kl-max", type=float, default=defaults.KL_MAX,
                   help="choose on val only among settings whose mean KL on neutral text (nats per "
                        "token) is at most this")
    add_select_by(p)
    add_behavior(p, data=False)
    return p


def parse_choice(p: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse a ``choice_parser`` and check the behaviour and KL_MAX before anything is read."""
    args = p.parse_args()
    resolve_behavior(args)
    check_kl_max(args.kl_max)
    return args


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


def add_scale_unit(p: argparse.ArgumentParser, units: tuple[str, ...] = SCALE_UNITS,
                   default: str = defaults.SCALE_UNIT) -> None:
    p.add_argument("--scale-unit", choices=units, default=default,
                   help="kl: a scale is a cost, the mean KL(unsteered ‖ steered) in nats per token on "
                        "the val neutral texts: each direction and sign gets the |θ| that costs that "
                        "much (found by a search, stored beside it), so one grid means the same cost "
                        "for every method and model; resid: a fraction of the median ‖h_S‖ at the "
                        "source layer (over the first train prompts; stored per model, layer and "
                        "behaviour); abs: an absolute L2 norm")


def unit_norms(args, lm: LoadedModel, layers, behavior: str | None = None,
               data: str | None = None) -> dict[int, ResidualNorm]:
    """``steerlab.measure.scales.residual_units`` for --behavior (or ``behavior``, its items ``data``),
    from the arguments; empty for ``--scale-unit abs``."""
    if args.scale_unit == "abs":
        return {}
    return residual_units(args.store, lm, layers, model=args.model, dtype=args.dtype,
                          behavior=behavior or args.behavior, data=data or args.data)


def add_neutral(p: argparse.ArgumentParser) -> None:
    """The neutral texts KL is measured on (eval, the matrix) and, with --scale-unit kl, what
    scales are calibrated on (also melbo's --radius, pi_caa's --at-scales)."""
    p.add_argument("--neutral", default=str(REPO_ROOT / defaults.NEUTRAL),
                   help="neutral prompts (JSONL: id, text, split) for the KL side effect")
    p.add_argument("--n-neutral", type=count_or_all, default=defaults.N_NEUTRAL, metavar="N|all",
                   help="neutral prompts per split")
    p.add_argument("--gen-tokens", type=positive_int, default=defaults.GEN_TOKENS,
                   help="tokens of the unsteered greedy continuation the KL is scored on")


def val_neutral_texts(args: argparse.Namespace, lm: LoadedModel) -> list:
    """The val neutral texts (``steerlab.measure.neutral.neutral_texts``, cached in the store): what a
    scale in unit kl is calibrated on."""
    return neutral_texts(args.store, lm, "val", load_prompts(args.neutral, "val", args.n_neutral),
                         **neutral_options(args))


def neutral_options(args: argparse.Namespace) -> dict:
    """The options ``steerlab.measure.neutral.neutral_texts`` records and obeys, from eval's or the matrix's
    arguments: ``neutral_texts(args.store, lm, split, prompts, **neutral_options(args))``."""
    return {"model": args.model, "dtype": args.dtype, "device": args.device, "neutral": args.neutral,
            "n_neutral": args.n_neutral, "gen_tokens": args.gen_tokens, "force": args.force}

