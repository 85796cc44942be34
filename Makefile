# Two commands a new user needs: `make demo` and `make test`.
# Both create .venv/ on first use. elasticdeform 0.5.1's wheel is built against
# NumPy 1 and fails to import beside NumPy 2, so it is compiled from source
# against the NumPy installed here (no build isolation: its setup.py imports numpy).
# On a Linux machine with an NVIDIA GPU (driver installed, `nvidia-smi` works), run
# `make install-gpu` once: the same install plus NVIDIA's CUDA and cuDNN wheels
# (tensorflow[and-cuda]); `pancreas env` then lists the GPUs TensorFlow sees.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install install-gpu demo docs-pictures test test-slow lint typecheck format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel "numpy>=2"
	$(PY) -m pip install --quiet --no-binary elasticdeform --no-build-isolation elasticdeform==0.5.1
	$(PY) -m pip install --quiet -e '.[test,lint]'
	touch $(STAMP)

install-gpu: $(STAMP)
	$(PY) -m pip install --quiet -e '.[gpu,test,lint]'
	$(VENV)/bin/pancreas env

demo: $(STAMP)
	$(VENV)/bin/pancreas demo --out demo-output

# docs/pictures/: a case sheet and a report screenshot, from evaluate on synthetic cases (no model)
docs-pictures: $(STAMP)
	.ci/install-browser
	$(PY) docs/make_pictures.py docs/pictures

# make test: every test but those marked slow (keep it under 15 minutes on a 2-core CPU);
# make test-slow: the slow ones (the whole demo journey, kills at every commit point, the two-fold
# cross-validation), about half an hour. CI (.ci/run) runs both. --durations=20: the slowest tests.
# .ci/install-browser installs Debian's Chromium when it is missing: tests/test_report_html.py opens
# the HTML reports in a real headless browser.
test: $(STAMP)
	.ci/install-browser
	$(PY) -m pytest -q -m "not slow" --durations=20

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow --durations=20

# ruff (lint rules, import order, formatting) over the tree and mypy over the library; CI runs it first
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# mypy alone
typecheck: $(STAMP)
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# bench/predict.py: the full-size case for the plain scenario only (one model, unmirrored:
# the README's per-stage figures, a minute or two on a CPU), then all four scenarios
# (mirroring, ensembles) on a small case (the README's table, under a minute). Its default,
# all four at full size, takes 15-40 minutes on a CPU: run `$(PY) bench/predict.py` for that.
bench: $(STAMP)
	$(PY) bench/preprocess.py --cases 8
	$(PY) bench/index.py
	$(PY) bench/pipeline.py
	$(PY) bench/predict.py --scenarios plain
	$(PY) bench/predict.py --small
	$(PY) bench/predict_cluster.py
	$(PY) bench/elastic.py --repeats 3
	$(PY) bench/scale.py --cases 3 --predict-model small

clean:
	rm -rf $(VENV) demo-output .pytest_cache
