# Kingfisher: `make demo` runs the whole system, `make test` runs every test. See README.md.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.9
# KF_JARS_DIR as in schemas/config.py, so `make setup` and the code agree on where jars live.
JARS_DIR := $(or $(KF_JARS_DIR),.deps/jars)
VENV_STAMP := $(VENV)/.kingfisher-installed
KAFKA_JARS_STAMP := $(JARS_DIR)/kafka/.resolved
FLINK_JARS_STAMP := $(JARS_DIR)/flink/.resolved
# Maven's output goes to a log that is shown only when resolution fails.
MVN := mvn -B --no-transfer-progress
# uv reads the system CA store, like pip does with PIP_CERT.
export UV_NATIVE_TLS := 1

.PHONY: help setup system-deps browser demo up down cluster-up cluster-down status clean distclean test test-unit lint lock bench bench-stream bench-state bench-train bench-incremental bench-serve bench-catalogue bench-swap bench-quality bench-similar bench-instructions soak train serve

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

setup: system-deps $(VENV_STAMP) $(KAFKA_JARS_STAMP) $(FLINK_JARS_STAMP) ## install everything missing (apt, venv, jars); a no-op when done

system-deps:
	@bash infra/install-system-deps.sh

browser: ## Debian's Chromium for the browser test (apt, when missing)
	@bash infra/install-system-deps.sh --browser

# --compile-bytecode: uv writes no .pyc by default, and where PYTHONDONTWRITEBYTECODE is set no process
# ever does, so every start of a trainer, service or Flink worker would compile TensorFlow, PyFlink and
# Beam from source again.
$(VENV_STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@test -x $(UV) || $(VENV)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(UV) pip sync --quiet --compile-bytecode --python $(PY) --require-hashes requirements.lock
	$(UV) pip install --quiet --python $(PY) --no-deps --editable .
	@touch $@

$(KAFKA_JARS_STAMP): infra/kafka/pom.xml
	@echo "resolving Kafka broker jars from Maven Central into $(JARS_DIR)/kafka"
	@rm -rf $(JARS_DIR)/kafka
	@mkdir -p $(JARS_DIR)
	@$(MVN) -f infra/kafka/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
	  -DoutputDirectory=$(abspath $(JARS_DIR))/kafka > $(JARS_DIR)/maven-kafka.log 2>&1 || (cat $(JARS_DIR)/maven-kafka.log; exit 1)
	@touch $@

$(FLINK_JARS_STAMP): infra/flink/pom.xml
	@echo "resolving the Flink Kafka connector and state changelog from Maven Central into $(JARS_DIR)/flink"
	@rm -rf $(JARS_DIR)/flink
	@mkdir -p $(JARS_DIR)
	@$(MVN) -f infra/flink/pom.xml dependency:copy-dependencies -DexcludeTransitive=true \
	  -DoutputDirectory=$(abspath $(JARS_DIR))/flink > $(JARS_DIR)/maven-flink.log 2>&1 || (cat $(JARS_DIR)/maven-flink.log; exit 1)
	@touch $@

demo: setup ## the whole system: Kafka, Redis, feature job, service, retraining; prints the page's URL
	@$(PY) -m infra.demo

up: setup ## start Kafka and Redis (idempotent), create topics
	@$(PY) infra/stack.py up

down: ## stop everything `make up` and `make demo` started
	@if [ -x $(PY) ]; then $(PY) infra/stack.py down; fi

cluster-up: setup ## start a local Flink session cluster (a JobManager, KF_FLINK_TASKMANAGERS TaskManagers); run the job there with KF_FLINK_CLUSTER=true
	@$(PY) infra/stack.py cluster-up

cluster-down: ## stop the local Flink session cluster
	@if [ -x $(PY) ]; then $(PY) infra/stack.py cluster-down; fi

status: ## show each component (Kafka, Redis, feature job, service, retrainer) and its health
	@$(PY) infra/stack.py status || true

# Two passes: every test but the latency bounds on two workers (whole modules each, longest first,
# each worker with its own stack; a third was no faster on CI: README), then the latency bounds
# (marked serial) with nothing beside them.
test: setup browser ## run every test, integration tests against a real Kafka, Redis and PyFlink included
	$(PY) -m pytest -v -n 2 --dist loadfile --no-loadscope-reorder -m "not serial" --durations=30; parallel=$$?; \
	$(PY) -m pytest -v -m serial --durations=5; serial=$$?; \
	test $$parallel -eq 0 && test $$serial -eq 0

test-unit: $(VENV_STAMP) ## the unit tests only, no services started: the edit loop
	$(PY) -m pytest -q tests/unit

train: up ## train, evaluate and publish a model version (TRAIN_ARGS="--source movielens" to bootstrap)
	$(PY) -m training $(TRAIN_ARGS)

serve: up ## run the recommendation service in the foreground on 127.0.0.1:8080 (KF_SERVE_PORT)
	$(PY) -m serving

bench: bench-stream bench-state bench-train bench-incremental bench-serve bench-catalogue bench-swap bench-quality bench-similar bench-instructions ## every benchmark (numbers in README.md)

bench-stream: up ## the job as make demo runs it (log on) beside --no-samples: throughput holding 100,000 users, freshness, replay
	$(PY) -m infra.benches.stream $(BENCH_ARGS)

bench-state: up ## the job holding 1,000,000 users' state, RocksDB beside the heap: events/s, checkpoint sizes and durations, restore after kill -9
	$(PY) -m infra.benches.state $(BENCH_ARGS)

bench-train: setup ## one retraining on MovieLens as scheduled, timed; then the full report (baselines, Embedding+MLP, previous design), the last-5 split and a synthetic world
	$(PY) -m infra.benches.train $(BENCH_ARGS)

bench-incremental: setup ## incremental retraining against from scratch on the same MovieLens rows: quality on later queries, wall and CPU time
	$(PY) -m infra.benches.incremental $(BENCH_ARGS)

bench-serve: up ## service latency p50/p95/p99, errors and CPU per request at 50, 100, 200, 500 req/s (60 s each), with a new click before every request and with unchanged states
	$(PY) -m infra.benches.serve $(BENCH_ARGS)

bench-catalogue: up ## new items: catalogue publish -> served by the live service (one by one and 10,000 at once), requests' p99 meanwhile
	$(PY) -m infra.benches.catalogue $(BENCH_ARGS)

bench-swap: setup ## the service's resident memory across 6 hot swaps of the live version (needs a trained model)
	$(PY) -m infra.benches.swap_memory $(BENCH_ARGS)

bench-quality: setup ## quality through the live system: each MovieLens user's newest 5 ratings withheld, the rest through a private stack as make demo runs it, the service's answers over HTTP scored beside the baselines and the same bundle in-process
	$(PY) -m infra.benches.quality $(BENCH_ARGS)

bench-similar: setup ## similar items and film series: each MovieLens sequel among its previous film's top 20, served beside the vectors alone and co-watching alone
	$(PY) -m infra.benches.similar $(BENCH_ARGS)

bench-instructions: setup ## instructions per recommendation (rank_batch, callgrind) of this checkout beside BENCH_ARGS="--previous CHECKOUT": exact where CPU time drifts
	@bash infra/install-system-deps.sh --valgrind
	$(PY) -m infra.benches.instructions $(BENCH_ARGS)

soak: demo ## 30 min of events and requests on the demo stack with a retraining and hot swap midway (SOAK_ARGS="--minutes 5")
	$(PY) -m infra.benches.soak $(SOAK_ARGS)

lint: setup ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

lock: ## re-resolve requirements.lock from pyproject.toml (needs network)
	$(UV) pip compile pyproject.toml --extra dev --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	  --generate-hashes --quiet -o requirements.lock

clean: down ## stop the stack and delete its data and logs (KF_RUN_DIR)
	rm -rf $(or $(KF_RUN_DIR),.run)

distclean: clean ## also delete the virtualenv and the resolved jars
	rm -rf $(VENV) $(JARS_DIR) .pytest_cache .ruff_cache
