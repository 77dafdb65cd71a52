# batchscore: `make demo` and `make test` work from a clean clone; both create .venv themselves.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# Without an NVIDIA GPU, install the CPU build of PyTorch first (a plain `torch` pulls CUDA wheels).
TORCH_SPEC ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch,torch==2.13.0)

.PHONY: venv demo test test-slow test-fast lint format bench bench-scaling clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"
	touch $@

demo: venv
	$(VENV)/bin/batchscore demo

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# lint, unit, integration (local Ray + local S3 server) and cluster tests, except the slow tier;
# GPU tests skip themselves without CUDA. About 5 minutes on 2 CPUs.
test: lint
	$(PY) -m pytest -q -m "not slow" tests

# The slow tier (fault injection with killed processes, node loss, job submission to a real head,
# resumed backfill, the demo end to end): about 5 more minutes. CI runs it after `make test`.
test-slow: venv
	$(PY) -m pytest -q -m slow tests

# Unit tests only (no Ray, no S3 server): seconds.
test-fast: venv
	$(PY) -m pytest -q tests/unit

# Not part of `make test`: batchscore vs the forward-pass limit and a hand-written script, both
# timed as whole processes (8M rows by default; BENCH_ARGS="--rows 16000000 --repeat 2 --profile"
# for more). Results: bench-data/results.json; profile: bench-data/profile/summary.txt.
bench: venv
	$(PY) benchmarks/bench.py $(BENCH_ARGS)

# Throughput and memory vs nodes and rows on a local multi-node Ray cluster (table + PNG in
# bench-data-scaling/; the recorded 16-CPU figures are benchmarks/scaling.*).
bench-scaling: venv
	$(VENV)/bin/pip install -q -e '.[bench]'
	$(PY) benchmarks/scaling.py --nodes 1,2 --cpus-per-node 1 --rows 500000,1000000 \
		--out bench-data-scaling $(BENCH_ARGS)

clean:
	rm -rf demo .pytest_cache .ruff_cache
