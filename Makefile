# One command per job on a fresh machine; each sets up what it needs.
#   make run    build the venv and run the whole RedOne 2.0 pipeline on the bundled tiny model and data
#               (python -m redone_fast.train; ARGS="..." adds options): runs/tiny-redone/report.md
#   make test   build the venv (torch==2.13.0 CPU first, then triton 3.7.1, then the project and its
#               C++ extension) and run the tests
#   make bench  run the microbenchmarks (see benchmarks/README.md)

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.redone_fast-installed

.PHONY: run test lint bench clean-venv

# The extension redone_fast._C is compiled by the editable install: editing csrc/ reinstalls (rebuilds) it.
CSRC := $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu csrc/*/*.cuh)

$(STAMP): pyproject.toml setup.py $(CSRC)
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first and pinned: an unpinned resolve pulls several GB of CUDA packages.
	$(PY) -m pip install -q torch==2.13.0
	# triton before liger-kernel, which would otherwise pull a newer triton than torch 2.13 supports.
	# ninja: torch's cpp_extension compiles the extension's sources in parallel with it (MAX_JOBS).
	$(PY) -m pip install -q triton==3.7.1 "setuptools>=69" wheel ninja
	# --no-build-isolation: setup.py imports this venv's torch to build redone_fast._C against it.
	# bench: TRL for benchmarks/bench_vs_trl.py, whose harness the tests run at a tiny size.
	$(PY) -m pip install -q --no-build-isolation -e '.[dev,bench]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m redone_fast.train $(ARGS)

test: $(STAMP)
	$(VENV)/bin/pytest tests -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(VENV)/bin/pytest benchmarks -q --benchmark-columns=min,median,max

clean-venv:
	rm -rf $(VENV)
