# styletransfer: `make run` starts the service, `make test` runs every test. Both set up first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
HOST   ?= 127.0.0.1
PORT   ?= 50051
WEIGHTS ?=
BACKENDS ?= pytorch,tensorflow
METRICS_PORT ?= 9095
PYTEST_ARGS ?=

.PHONY: setup generate weights run test lint fmt clean bench load

setup: $(STAMP)

$(STAMP): pyproject.toml clients/python/pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e clients/python -e '.[torch,tensorflow,dev]'
	touch $@

## Regenerate the API's code from proto/ (committed; `make lint` checks it has not drifted).
generate: $(STAMP)
	PYTHON=$(BIN)/python scripts/gen_proto.sh

## Download and convert the default VGG19 weights unless they are cached already.
weights: $(STAMP)
	$(BIN)/styletransfer-weights download

## Start the server on $(HOST):$(PORT). `make run WEIGHTS=random:0` skips the weights (smoke test).
run: $(STAMP)
ifeq ($(WEIGHTS),)
	$(BIN)/styletransfer-weights download
	$(BIN)/styletransfer-server --host $(HOST) --port $(PORT) --backends $(BACKENDS) --metrics-port $(METRICS_PORT) --log-format console
else
	$(BIN)/styletransfer-server --host $(HOST) --port $(PORT) --backends $(BACKENDS) --metrics-port $(METRICS_PORT) --log-format console --weights $(WEIGHTS)
endif

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	PYTHON=$(BIN)/python scripts/gen_proto.sh
	git diff --exit-code -- clients/python/styletransfer/v1 \
	  || (echo "generated code is stale: run 'make generate' and commit" >&2; exit 1)
	test -z "$$(git status --porcelain -- clients/python/styletransfer/v1)" \
	  || (echo "generated code is not committed: run 'make generate' and commit" >&2; exit 1)

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

## Print ms/iteration of each installed backend at 128 and 256 px (random weights unless BENCH_WEIGHTS).
bench: $(STAMP)
	$(BIN)/python benchmarks/iteration_speed.py $(if $(BENCH_WEIGHTS),--weights $(BENCH_WEIGHTS))

## A bounded load run on loopback (its own server, random weights); prints outcomes, fails on lost jobs.
load: $(STAMP)
	$(BIN)/python benchmarks/load.py $(LOAD_ARGS)
