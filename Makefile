# The README's two commands: `make demo` (set up + main job) and `make test` (set up + tests).
# Both create .venv from nothing when it is missing.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out/demo
PYTEST_ARGS ?=

.PHONY: setup demo test compile-check clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first: the CPU build when there is no NVIDIA driver; otherwise a plain range would pull
	# a multi-GB CUDA build on CPU-only machines.
	if command -v nvidia-smi >/dev/null 2>&1; then \
		$(BIN)/python -m pip install -q "torch>=2.4"; \
	else \
		$(BIN)/python -m pip install -q torch==2.13.0; \
	fi
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/tritonwino demo --out $(OUT)

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

# The table and JSON rows land in out/ (bench/results/compile_check.* are copies of a full run).
compile-check: setup
	mkdir -p out
	$(BIN)/tritonwino compile-check --jobs 2 --no-progress --json out/compile_check.json > out/compile_check.txt; \
		rc=$$?; cat out/compile_check.txt; exit $$rc

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache *.egg-info
