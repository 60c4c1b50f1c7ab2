"""One table across model sizes (`make sizes`): the studies of --models (each written by `make study`
into --store) side by side, into --out (steerlab/render/sizes.py says what the table holds).

    python -m steerlab.cli.sizes --store results/study/store.h5 \\
        --models "models/SmolLM2-135M-Instruct models/gemma-3-270m models/qwen2.5-0.5b models/qwen2.5-1.5b"
"""
from pathlib import Path

from steerlab.base.errors import UserError
from steerlab.base.files import write_atomically
from steerlab.base.progress import say
from steerlab.cli.options import choice_parser, main_guard, parse_choice
from steerlab.measure.analysis import read_prompting, read_splits
from steerlab.measure.study import study
from steerlab.render.sizes import sizes_page
from steerlab.store import open_for_reading, store_key


def describe(store: str, key: str) -> str:
    """The model's width and depth, as its store group records them."""
    with open_for_reading(store) as h5:
        attrs = h5[key].attrs
        return f"{int(attrs['n_layers'])} layers, width {int(attrs['d_model'])}"


def run() -> None:
    p = choice_parser(__doc__, reads="(unused: see --models)")
    p.add_argument("--models", required=True,
                   help="the models whose studies are put side by side, smallest first")
    p.add_argument("--out", default="docs/sizes.md", help="the page written")
    args = parse_choice(p)
    studies = []
    for model in args.models.split():
        key = store_key(model)
        try:
            splits = read_splits(args.store, key, args.behavior)
        except UserError:
            say(f"{key}: no study in {args.store}; left out")
            continue
        if "test" not in splits:
            say(f"{key}: its study has no test split yet; left out")
            continue
        try:
            prompting = read_prompting(args.store, key, args.behavior, "test")
        except UserError:
            prompting = None
        found = study(args.store, key, splits["val"], splits["test"], args.kl_max, args.select_by, prompting)
        studies.append((key, describe(args.store, key), found))
    if not studies:
        raise UserError(f"no study of {args.models} in {args.store}: run `make study STUDY_MODEL=...` first")
    command = f"make sizes STUDY_STORE={args.store} SIZE_MODELS='{args.models}'"
    path = write_atomically(Path(args.out), lambda p_: p_.write_text(sizes_page(studies, command)))
    print(f"wrote {path}")


if __name__ == "__main__":
    main_guard(run)
