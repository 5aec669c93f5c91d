# styletransfer: `make run` starts the service, `make test` runs every test. Both set up first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
TOOLS  := tools/.installed-stamp
SYSTEM := .system-deps-stamp
BUF    := tools/node_modules/.bin/buf
HOST   ?= 127.0.0.1
PORT   ?= 50051
WEIGHTS ?=
BACKENDS ?= pytorch,tensorflow
METRICS_PORT ?= 9095
PYTEST_ARGS ?=

.PHONY: setup system-deps generate weights run test test-fast lint fmt clean bench load cluster manifests image-locks api-baseline chaos abuse

## Everything the service, the tests and the linters need: the Python environment, the pinned
## tools under tools/ (buf, kubectl, schema validators, scanners) and the system packages.
setup: $(STAMP) $(TOOLS) $(SYSTEM)

$(STAMP): pyproject.toml setup.py $(wildcard backends/pytorch/kernels/*.c backends/pytorch/kernels/*.h) clients/python/pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e clients/python -e '.[torch,tensorflow,dev]'
	touch $@

$(TOOLS): tools/package.json tools/package-lock.json tools/requirements.lock
	npm ci --prefix tools --no-audit --no-fund --loglevel=error
	test -x tools/.venv/bin/python || $(PYTHON) -m venv tools/.venv
	tools/.venv/bin/python -m pip install -q --upgrade pip
	tools/.venv/bin/python -m pip install -q -r tools/requirements.lock
	touch $@

$(SYSTEM): scripts/install-system-deps.sh
	scripts/install-system-deps.sh
	touch $@

system-deps:
	scripts/install-system-deps.sh

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

## The tiers that need no framework (unit, deploy; service and clients on the fake backend) run with torch
## and TensorFlow made impossible to import, which proves they need neither; then the rest.
FRAMEWORK_FREE := tests/unit tests/service tests/clients tests/deploy
WITHOUT_FRAMEWORKS := PYTHONPATH=tests $(BIN)/python -m pytest -p without_frameworks
## The four framework-free tiers wait on servers, Redis and compilers more than they compute: on
## two cores two workers take them from 164 to 88 s. The framework tiers compute, and stay serial
## (two workers made them slower: 435 -> 571 s).
test: setup
	$(WITHOUT_FRAMEWORKS) -n auto $(FRAMEWORK_FREE) $(PYTEST_ARGS)
	$(BIN)/python -m pytest $(addprefix --ignore=,$(FRAMEWORK_FREE)) $(PYTEST_ARGS)

## The unit tier only (no server process, no Redis, no framework, no real optimization): seconds.
test-fast: $(STAMP)
	$(WITHOUT_FRAMEWORKS) -q tests/unit -m "not slow and not redis" $(PYTEST_ARGS)

lint: setup
	$(BUF) lint
	$(BUF) breaking --against proto/baseline/styletransfer-v1.binpb
	$(BIN)/python scripts/k8s_manifests.py --check
	$(BIN)/python scripts/image_locks.py --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	PYTHON=$(BIN)/python scripts/gen_proto.sh
	git diff --exit-code -- clients/python/styletransfer/v1 clients/python/styletransfer/client/_option_fields.py \
	  || (echo "generated code is stale: run 'make generate' and commit" >&2; exit 1)
	test -z "$$(git status --porcelain -- clients/python/styletransfer/v1 clients/python/styletransfer/client/_option_fields.py)" \
	  || (echo "generated code is not committed: run 'make generate' and commit" >&2; exit 1)

## Rewrite the Kubernetes manifests made from the alert rules and the dashboard.
manifests: $(STAMP)
	$(BIN)/python scripts/k8s_manifests.py

## Rewrite the container images' Python locks from requirements.lock.
image-locks: $(STAMP)
	$(BIN)/python scripts/image_locks.py

## After a release: make the current API the baseline that `buf breaking` compares against.
api-baseline: $(TOOLS)
	$(BUF) build --exclude-source-info -o proto/baseline/styletransfer-v1.binpb

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache tools/node_modules tools/.venv $(TOOLS) $(SYSTEM)

## Ours against the tutorial-style reference and two published implementations (pystiche and
## pastiche from benchmarks/peers.lock, kept in benchmarks/.peers apart from the service's
## environment), each in its own process: ms per iteration, peak RSS, time to quality; a per-layer
## profile (benchmarks/profile-<cpu>.txt), in-process studies (bfloat16, style cache, batching, gRPC
## overhead, scaling) and a figure (benchmarks/bench.png). Random weights unless BENCH_WEIGHTS (a
## canonical file or a source name, e.g. BENCH_WEIGHTS=caffe-q8). QUICK=1: the comparison at 128
## and 256 px and the profile, under two minutes on two cores. BENCH_ARGS: more flags (--only, --sizes).
PEERS := benchmarks/.peers
bench: $(STAMP) $(PEERS)/.installed-stamp
	$(BIN)/python benchmarks/bench.py $(if $(QUICK),--quick) $(if $(BENCH_WEIGHTS),--weights $(BENCH_WEIGHTS)) $(BENCH_ARGS)

$(PEERS)/.installed-stamp: benchmarks/peers.lock
	rm -rf $(PEERS)
	$(BIN)/python -m pip install -q --no-deps --require-hashes --only-binary :all: --target $(PEERS) -r benchmarks/peers.lock
	touch $@

## A bounded load run on loopback (its own server, random weights); prints outcomes, fails on lost jobs.
## LOAD_ARGS="--cluster 3": its own Redis and 3 replicas; LOAD_ARGS="--targets H:P,...": running ones.
load: $(STAMP)
	$(BIN)/python benchmarks/load.py $(LOAD_ARGS)

## Redis and REPLICAS (default 3) replicas sharing it on loopback, random weights unless WEIGHTS; prints
## the targets and a round_robin service config, serves until Ctrl-C. CLUSTER_ARGS go to scripts/cluster.py.
cluster: $(STAMP) $(SYSTEM)
	$(BIN)/python scripts/cluster.py --replicas $(or $(REPLICAS),3) --backends $(BACKENDS) \
	  $(if $(WEIGHTS),--weights $(WEIGHTS)) $(CLUSTER_ARGS)

## The chaos run of issue 20 (bounded; its own Redis and 3 replicas on loopback, random weights):
## callers stream, watch and cancel 240 jobs while replicas get kill -9 and SIGTERM and Redis restarts;
## fails on a lost job or a broken check. QUICK=1: 36 jobs, about a minute; CHAOS_ARGS: more flags.
chaos: $(STAMP) $(SYSTEM)
	$(BIN)/python benchmarks/chaos.py $(if $(QUICK),--quick) $(CHAOS_ARGS)

## Normal callers' latency without, then with, abusers on one loopback server with auth (idle streams,
## wrong tokens, floods, amplifying and oversized jobs); fails on a normal caller's error, a p95 unary
## latency over 2 s or RSS past the memory budget. 20 s per phase; QUICK=1: 5 s; ABUSE_ARGS: more flags.
abuse: $(STAMP)
	$(BIN)/python benchmarks/abuse.py $(if $(QUICK),--quick) $(ABUSE_ARGS)
