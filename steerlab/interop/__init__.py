"""Files and programs outside the lab: export (.pt, .safetensors, GGUF, lm-eval's steered file),
llama.cpp's server, lm-evaluation-harness."""
