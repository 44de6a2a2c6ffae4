# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
# torch is installed on its own first, pinned: a bare `torch` would pull several GB of CUDA wheels.
TORCH  := torch==2.13.0
DEMO   := .demo

.PHONY: venv install dev demo test lint bench bench-gpu mutate clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed
	$(PIP) install -q -e '.[dev]'
	touch $@

venv install: $(VENV)/.installed
dev: $(VENV)/.dev-installed

# The whole pipeline on the bundled sample exports, to a GGUF and an Ollama Modelfile (q8_0: the tiny
# model's rows, 64 and 128 wide, are too narrow for k-quants, which need 256; parity is checked).
# The whole pipeline on the sample exports with the tiny model (examples/demo.yaml), by `twinlm run`: its
# summary, then the twin's answer to a message it was trained on (a tiny model only memorises).
DEMO_SYSTEM := You are Alex Rivera, chatting with Priya and Sam on Discord. Today is 2024-06-07.
demo: $(VENV)/.installed
	rm -rf $(DEMO)
	mkdir -p $(DEMO)
	cp examples/demo.yaml $(DEMO)/twin.yaml
	$(BIN)/twinlm init $(DEMO) --force
	$(BIN)/twinlm run -w $(DEMO)
	@echo '$$ twinlm chat -w $(DEMO) --me Sam --system "$(DEMO_SYSTEM)" --once "anyone up for the gym tomorrow?"'
	@$(BIN)/twinlm chat -w $(DEMO) --me Sam --system "$(DEMO_SYSTEM)" --once "anyone up for the gym tomorrow?" 2>/dev/null

test: $(VENV)/.dev-installed
	$(BIN)/ruff check twinlm tests benchmarks tools
	$(BIN)/ruff format --check twinlm tests benchmarks tools
	$(BIN)/python -m pytest -q

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check twinlm tests benchmarks tools
	$(BIN)/ruff format --check twinlm tests benchmarks tools

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/export_gguf.py
	$(BIN)/python benchmarks/export_merge.py
	# the server against the llama.cpp backend: a 1.1B random Llama (q4_k_m, built once into
	# benchmarks/.data) and the demo's GGUF (made first where missing); ~3 minutes (+2 the first time)
	test -f $(DEMO)/twin.yaml || $(MAKE) demo
	$(BIN)/python benchmarks/serve.py -w $(DEMO)
	$(BIN)/python benchmarks/curate.py

# On a CUDA machine: Mistral-7B architecture LoRA / QLoRA at 2,048 tokens against the naive recipe.
bench-gpu: $(VENV)/.installed
	$(BIN)/python benchmarks/gpu_train.py --record

# A small mutation run (not part of CI): does the suite notice a one-line bug? See tools/mutate.py.
mutate: $(VENV)/.dev-installed
	$(BIN)/python tools/mutate.py $(MUTATE_ARGS)

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info .pytest_cache .ruff_cache
