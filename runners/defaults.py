"""Every default setting, once. The runners' argparse defaults come from here, written as the
Makefile writes them (argparse converts string defaults with the argument's type), and
tests/test_defaults.py checks that each Makefile `NAME ?= value` line says the same.

Sized so that `make` (every method, eval, report, figures) finishes in 15 minutes on a 2-core
CPU; README "Scaling up" shows the sizes for real numbers.
"""

MODEL = "models/SmolLM2-135M-Instruct"
DTYPE = "auto"
DEVICE = "cpu"
STORE = "store.h5"
DATA = "data/survival-instinct.jsonl"
LAYER = "7"
CAPTURE = "mlp"
POSITION = "letter"
ORDERS = "both"
N_TRAIN = "all"
TARGET = "20"
K = "4"
ITERS = "6"
OVERSAMPLE = "8"
TOL = "1e-2"
N_PROMPTS = "2"
TOKENS = "all"
R = "16"
P = "2"
Q = "1"
STEPS = "12"
LR = "0.05"
SEED = "0"
SCALES = "8 24 64"
N_EVAL = "16"
EVAL_K = "1"
N_RANDOM = "4"
SPLITS = "val test"
REPORT_SCALE = "24"
RESULTS = "results"
