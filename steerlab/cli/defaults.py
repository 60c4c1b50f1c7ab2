"""Every default setting, once: the runners' argparse defaults come from here (written as a
command line writes them; argparse converts a string default with the argument's type), and the
Makefile passes a variable on only where it is set (on the command line, in the environment or
in a model preset), so an unset one takes this default.

The `#:` comment on each line is what `make help` prints for it, continued on the `#:` lines below
it and joined with single spaces (``python3 steerlab/cli/defaults.py help [NAME ...]``). The few
that Make itself needs (paths it builds, cleans or lists, the default model it installs) reach it
as ``python3 steerlab/cli/defaults.py make``, written into .make/defaults.mk: this file imports
nothing, so the system Python runs it before .venv exists.

Sized so that `make` (every method, eval, report, figures) finishes in 15 minutes on a 2-core
CPU; docs/usage.md "Scaling up" shows the sizes for real numbers.
"""

MODEL = "models/SmolLM2-135M-Instruct"  #: HF id, local HF folder, .gguf file, or a preset: gemma-3-270m,
                                        #: qwen2.5-0.5b, qwen2.5-1.5b (installed by
                                        #: `make model MODEL=<preset>`)
DTYPE = "auto"  #: network dtype: auto (bf16 on GPU, fp32 on CPU), bf16, fp32, fp64
DEVICE = "cpu"  #: torch device: cpu, cuda, cuda:1, ...
STORE = "store.h5"  #: the HDF5 store every target reads and writes
BEHAVIOR = "survival-instinct"  #: the A/B set: data/BEHAVIOR.jsonl, store group /<model>/BEHAVIOR; an unknown
                                #: name lists the known
DATA = ""  #: A/B items instead of data/BEHAVIOR.jsonl (their behavior field must be BEHAVIOR)
LAYER = "20"  #: source layer S: θ is added to the residual stream after layers[S] (see SITE); 20 chosen on
              #: val (docs/results.md, "Which layer")
SITE = "auto"  #: where θ is added on the plain paths: mlp (down_proj output), resid (block S output), auto
               #: (mlp where it equals the residual add, else resid)
CAPTURE = "site"  #: caa: site (read where θ goes), mlp (down_proj output) or resid (block output): the latter
                  #: two as ablations
POSITION = "letter answer"  #: caa: one vector per position: letter (answer-letter token), answer (mean over
                            #: the answer text's tokens after the stem, no choices: the cloze form), last
                            #: (final token; ablation)
ORDERS = "both"  #: caa, eval: both (every question as written and mirrored) or original/mirrored (ablation)
BALANCE = "classes"  #: caa POSITION=answer: classes (mean over Yes/No/other polarity classes of the class
                     #: means: a Yes/No direction cancels) or none (plain mean; ablation)
SCORE = "both"  #: eval: letter (A/B logit difference, both orders), cloze (log-prob per token of each answer
                #: text after the stem, no letters) or both
SELECT_BY = "cloze"  #: report, plot, export, generate, matrix: the score the val choice maximises: cloze
                     #: (polarity-paired) or letter
AT_POSITION = "answer"  #: pi_caa: which CAA vector θ₀ is: answer (read on the answer texts) or letter
N_TRAIN = "64"  #: caa: first train pairs (by file order) to average over, or all; 64 so `make` fits 15 min
                #: with CAA read at layer 20 in two positions
TARGET = "27"  #: pi, pi_caa, melbo: target layer T > S (residual output of layers[T])
K = "4"  #: pi, pi_caa, melbo: number of vectors
ITERS = "6"  #: pi, pi_caa: power-iteration step budget
OVERSAMPLE = "8"  #: pi, pi_caa: extra columns in the random start block
TOL = "1e-2"  #: pi, pi_caa: stop when the subspace moves less than this
N_PROMPTS = "2"  #: pi, pi_caa, melbo: train prompts the Jacobian/objective is taken over
TOKENS = "all"  #: pi, pi_caa: positions: all real tokens, or last:N
JVP_CHUNK = "all"  #: pi, pi_caa: vectors through the vmapped JVP/VJP together (memory grows with it;
                   #: docs/usage.md "Memory of the Jacobian engine"); all: K + OVERSAMPLE at once
R = "0.05"  #: melbo: norm of each vector, in SCALE_UNIT (kl: the |θ| at which random directions cost R
            #: nats/token; on SmolLM2 at layer 20 |θ| ≈ 33, the 0.14 ‖h_S‖ of before)
P = "2"  #: melbo: exponent of the per-token displacement norm
Q = "1"  #: melbo: outer root of the objective
STEPS = "12"  #: melbo: optimiser steps
LR = "0.05"  #: melbo: AdamW learning rate
SEED = "0"  #: pi, pi_caa, melbo, random controls
SCALE_UNIT = "kl"  #: eval, pi_caa, melbo, generate, export, matrix: kl (a scale is a cost: each direction and
                   #: sign at the |θ| whose mean KL on the val neutral texts is the scale, in nats/token;
                   #: found by a search and stored), resid (a fraction of the median ‖h_S‖ at the source
                   #: layer, measured once over train prompts and stored) or abs (absolute L2 norms)
SCALES = "0.01 0.04 0.16"  #: eval, matrix: scales in SCALE_UNIT (kl: nats/token; 0.04 stays under KL_MAX with
                           #: room for the search's 10%); sign-free vectors also get the negatives
N_EVAL = "12"  #: eval: questions per split (or all); small so `make` fits 15 min on 2 CPU cores (README:
               #: N_EVAL=64 for numbers)
EVAL_K = "1"  #: eval: first EVAL_K vectors of each group (PI: largest σ), or all
N_RANDOM = "2"  #: eval: norm-matched random directions per source layer (2 so both scores fit
                #: `make` in 15 min)
NEUTRAL = "data/neutral-prompts.jsonl"  #: eval: harmless prompts the KL side effect is measured on
N_NEUTRAL = "6"  #: eval: neutral prompts per split (or all), also what SCALE_UNIT=kl calibrates on; 6 so
                 #: `make` fits 15 min
GEN_TOKENS = "32"  #: eval: tokens of the unsteered greedy continuation the KL is scored on
KL_MAX = "0.05"  #: report, plot, export, generate: choose on val only among settings with mean KL ≤ this
OPEN_ENDED = ""  #: generate: open-ended prompts (JSONL: id, text, topic, split, source); default
                 #: data/BEHAVIOR-open-ended.jsonl, else the A/B question stems
OPEN_PROMPTS = "2"  #: generate: first N open-ended prompts of the test split
NEUTRAL_PROMPTS = "1"  #: generate: first N neutral prompts of the test split
MAX_NEW_TOKENS = "32"  #: generate: new tokens per completion
CHECKPOINT_EVERY = "256"  #: eval: question×settings between two saves of an eval's partial work beside the
                          #: store (a killed eval rerun resumes there; a kill loses at most this much)
SPLITS = "val test"  #: eval: splits to evaluate
FIT_ON = "both"  #: ceiling: the score whose headline the ceiling direction is fitted to: cloze, letter or
                 #: both (one group each)
DOSE_COSTS = "0.01 0.04 0.16 0.64 2.56"  #: dose: the ladder of KL costs (nats per token, increasing) each
                                         #: chosen direction is measured at, until top-1 agreement falls
                                         #: below one half
N_DOSE = "24"  #: dose: first test questions by id on the ladder (or all)
DOSE_N_RANDOM = "2"  #: dose: random directions (each in both signs) on the ladder beside the methods
DOSE_SAMPLE_TOKENS = "24"  #: dose: tokens of each steered greedy sample (one neutral, one open-ended prompt)
TRANSFER_METHODS = "ceiling caa"  #: transfer: whose val choices are asked on every behaviour's test questions
                                  #: (form or behaviour?)
TRANSFER_N_EVAL = "32"  #: transfer: first test questions by id of each behaviour
GRADIENT_SPLITS = "train test"  #: gradients: whose questions' score gradients (train: the ceiling is fitted
                                #: there; test: the first-order null)
FISHER_K = "32"  #: gradients: eigenpairs of the KL's Fisher kept exactly (the rest is one level,
                 #: Hutchinson's)
FISHER_OVERSAMPLE = "16"  #: gradients: extra columns of the Fisher's power iteration
FISHER_ITERS = "3"  #: gradients: power steps on the Fisher (each costs FISHER_K + FISHER_OVERSAMPLE products)
FISHER_PROBES = "16"  #: gradients: Hutchinson probes for the level of the Fisher outside its top eigenpairs
REPORT_SCALE = "0.04"  #: plot: scale of the violin plot, in SCALE_UNIT
RESULTS = "results"  #: plot: folder the figures go to
BEHAVIORS = ("survival-instinct power-seeking-inclination "  #: matrix: behaviours, each a row and a column
             "wealth-seeking-inclination myopic-reward coordinate-other-ais coordinate-itself "
             "corrigible-more-HHH")
METHOD = "caa"  #: matrix: caa, pi, pi_caa or melbo: whose vector each behaviour contributes
MATRIX_N_EVAL = "16"  #: matrix: questions per behaviour on val (the choice) and test (the cells), or all
MATRIX_N_RANDOM = "2"  #: matrix: random directions per chosen scale (the reference rows)
LLAMA_SERVER = ".cache/llama.cpp/build/bin/llama-server"  #: check-gguf: llama.cpp's llama-server; this
                                                          #: default is built once by
                                                          #: scripts/build_llama_server.sh (minutes)
CHECK_SCALE = "0.28"  #: check-gguf: signed size of the exported CAA vector (caa/L<LAYER>-answer/0), in units
                      #: of ‖h_S‖ (a size, not a cost: the check compares two runtimes at one θ)
CHECK_PROMPTS = "8"  #: check-gguf: prompts compared, half neutral, half A/B test questions
CHECK_QUESTIONS = "12"  #: check-lm-eval: test questions compared (cloze form, first by id)

# What Make needs itself: the model it installs, the paths it builds, cleans and lists, the
# behaviours `make matrix` loops over with METHOD's target, and the llama.cpp server `make check-gguf` builds.
FOR_MAKE = ("MODEL", "STORE", "RESULTS", "BEHAVIOR", "BEHAVIORS", "METHOD", "LLAMA_SERVER")


def documented() -> dict[str, tuple[str, str]]:
    """NAME -> (default, what it is), from this file's ``NAME = value  #: doc`` lines (a doc goes on in the
    ``#:`` comment lines right below its own, joined with single spaces)."""
    import re
    from pathlib import Path

    found = re.findall(r"^([A-Z_]+) = .*?#: (.*(?:\n[ \t]*#: .*)*)$",
                       Path(__file__).read_text(encoding="utf-8"), re.MULTILINE)
    return {name: (globals()[name], re.sub(r"\n[ \t]*#: ", " ", doc)) for name, doc in found}


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["make"]:
        for name in FOR_MAKE:
            print(f"{name} ?= {globals()[name]}")
        print(f"DEFAULT_MODEL := {MODEL}")
    elif sys.argv[1:2] == ["help"]:
        for name, (value, doc) in documented().items():
            if name in sys.argv[2:] or len(sys.argv) == 2:
                print(f"  {name}={value}|{doc}")
    else:
        sys.exit("usage: python3 steerlab/cli/defaults.py make | help [NAME ...]")
