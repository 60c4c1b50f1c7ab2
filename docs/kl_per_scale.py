"""KL on neutral text per method and scale, as the README's scale tables show it: for each eval
group of one split, its first vector's mean KL (nats per token, over the split's neutral texts)
at every stored scale, with the |θ| it took.

    .venv/bin/python docs/kl_per_scale.py STORE [MODEL_KEY] [--split test] [--behavior NAME]
"""
import argparse

import h5py

from steerlab.measure.analysis import methods, read_split
from steerlab.measure.statistics import scale_text
from steerlab.questions.behaviors import DEFAULT_BEHAVIOR

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("store")
p.add_argument("model_key", nargs="?", default=None, help="default: the store's only model")
p.add_argument("--split", default="test")
p.add_argument("--behavior", default=DEFAULT_BEHAVIOR)
args = p.parse_args()

with h5py.File(args.store, "r") as h5:
    key = args.model_key or next(iter(h5))
    split = read_split(h5, key, args.behavior, args.split)
print(f"{key}, {args.behavior}, {args.split}: mean KL of each group's first vector at each scale\n")
for method in methods(split):
    for group in (g for g in split.groups.values() if g.method == method):
        cells = [f"{scale_text(float(group.scales[s]), group.fraction(s), group.calibrated_norm(0, s))}: "
                 f"{group.kl[0, s].mean():.3g}" for s in range(len(group.scales))]
        print(f"| {group.label} ({group.scale_unit or 'abs'}) | " + " | ".join(cells) + " |")
