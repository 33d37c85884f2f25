# The two commands: `make run` and `make test`. Both install into .venv first when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test clean

install: $(STAMP)

# torch is pinned to the CPU wheel on this machine's disk before anything else, so that the
# looser `torch>=2.4` in pyproject.toml is already satisfied and no CUDA build is pulled.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/poolworker dev

test: install
	bash scripts/test.sh

clean:
	rm -rf $(VENV) build *.egg-info
