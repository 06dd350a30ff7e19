# The two commands of the README: `make book` and `make test`. Everything else is a step of them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | sha256sum | cut -c1-12)
# Two workers on two cores, each replica pinned to one thread (see plans/default.yaml).
WORKERS ?= 2

.PHONY: setup browser test book lab clean-book

setup: $(STAMP)

# A local virtual environment with the pinned requirements and the package installed editable.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	# papermill and nbval start the kernel named python3: make it this environment's Python.
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	rm -f $(VENV)/.installed-* && touch $@

# Debian's chromium renders the built book in the browser tests (root, as on CI).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

test: setup browser
	TQDM_DISABLE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 PYTHONHASHSEED=0 $(BIN)/python -m pytest -n 2 --dist loadscope --nbval --nbval-sanitize-with=tests/nbval_sanitize.cfg tests notebooks

book: setup
	$(BIN)/nnrandomness run plans/default.yaml --workers $(WORKERS)
	$(BIN)/python -m nnrandomness.book

# Students: open the chapters in JupyterLab (pinned in requirements.txt; it draws the charts
# itself, offline: tests/test_lab.py).
lab: setup
	$(BIN)/jupyter lab notebooks/
