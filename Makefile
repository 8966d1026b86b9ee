# memnet — set-up, training, tests. Everything runs from a fresh clone with Python 3.11.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The torch release memnet is tested with (CPU build on machines that have its wheel).
TORCH ?= torch==2.13.0

.PHONY: install dev train test test-all lint bench bench-gpu docs clean

$(VENV)/.installed: pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet "$(TORCH)"
	$(PIP) install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed   ## create .venv and install memnet with its test extras

train: install               ## train an NTM on copy (2 CPU cores: about 1.5 min, 49 s of it training), then print the results table
	$(VENV)/bin/memnet fit --config configs/ntm/copy.yaml
	$(VENV)/bin/memnet evaluate --ckpt_path latest --lengths 20 40 80 120 --memory_size 256 --out results/ntm-copy

test: install                ## the layers contract, the fast test suite and the strict docs build (what CI runs)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q
	$(MAKE) --no-print-directory docs

test-all: install            ## every test, the slow training checks included
	$(PY) -m pytest -q -m "slow or not slow"

lint: install                ## ruff, and the layers contract of pyproject.toml (import-linter)
	$(VENV)/bin/ruff check memnet tasks tests benchmarks
	$(VENV)/bin/lint-imports

bench: install               ## training throughput: NTM, DNC, MemN2N, LSTM x batch 1, 32, 128 x eager, fused, compiled (~4-6 min)
	$(PY) benchmarks/run.py --threads 2 --out benchmarks/results/train_step_cpu.json

bench-gpu: install           ## the same on one GPU: NTM and DNC x batch 1, 128, 4096 x fused, compiled with CUDA graphs (~6 min)
	$(PY) benchmarks/run.py --device cuda --models NTM DNC --paths fused compiled --compile-mode reduce-overhead \
		--unroll 8 --batch-sizes 1 128 4096 --steps 5 --warmup 3 --out benchmarks/results/train_step_cuda.json

docs: install                ## the documentation site into site/ (mkdocs --strict: a warning fails)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) runs results .pytest_cache site
