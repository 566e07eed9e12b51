# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
OUT    ?= outputs/demo

.PHONY: demo test docs lint bench clean

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
		--npix 32 --fov 160 --sys-noise 0.005 --steps 300 --samples 256 --truth data/demo/crescent_grf_64.fits --overwrite --out $(OUT)

test: $(VENV)/.test
	$(PY) -m ruff check .
	$(PY) -m pytest -q

docs: $(VENV)/.test   # the docs build: examples run, links resolve, command lines parse
	$(PY) -m pytest -q tests/test_docs.py

bench: $(VENV)/.test
	$(PY) benchmarks/forward.py
	$(PY) benchmarks/priors.py

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
