# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
OUT    ?= outputs/demo

.PHONY: demo test docs lint bench bench-deepinv clean

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0   # the CPU build first, so nothing pulls a CUDA build
	$(PIP) install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PIP) install -q -e '.[test]'
	touch $@

demo: $(VENV)/.base
	$(VENV)/bin/interfero reconstruct data/demo/eht2017_crescent_grf.uvfits --prior default --data cphase,logcamp \
		--npix 32 --fov 160 --sys-noise 0.005 --samples 256 --truth data/demo/crescent_grf_64.fits --overwrite --out $(OUT)

test: $(VENV)/.test
	$(PY) -m ruff check .
	$(PY) -m pytest -q

docs: $(VENV)/.test   # the docs build: examples run, links resolve, command lines parse
	$(PY) -m pytest -q tests/test_docs.py

bench: $(VENV)/.test
	$(PY) benchmarks/forward.py
	$(PY) benchmarks/priors.py

# deepinv's DPS beside ours: a separate environment, because deepinv needs torchvision and PyPI's
# torchvision does not load against torch's CPU wheel; torch and torchvision come from PyPI together here.
BENCH_VENV ?= .venv-bench
$(BENCH_VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q torch torchvision -e '.[bench]'
	touch $@

bench-deepinv: $(BENCH_VENV)/.base
	$(BENCH_VENV)/bin/python benchmarks/baselines.py --skip-methods --json outputs/bench_baselines.json

clean:
	rm -rf $(VENV) $(BENCH_VENV) outputs .pytest_cache .ruff_cache
