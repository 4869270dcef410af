# The README's two commands: `make demo` and `make test`. Each sets up what it needs
# on a fresh Debian machine (mosquitto, etcd and postgresql via apt, a venv, the project with its extras).
# tests/cluster/ also needs the kube-apiserver assets (EDGELOOP_KUBE_ASSETS, default ../shared/kube).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.edgeloop-installed
EXTRAS ?= cloud,train,dev,tracing
PYTEST_ARGS ?=

.PHONY: setup test test-fast test-cluster lint demo bench config-docs clean

$(STAMP): pyproject.toml
	@missing=""; \
	  { command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto; } || missing="$$missing mosquitto mosquitto-clients"; \
	  command -v ip >/dev/null 2>&1 || test -x /usr/sbin/ip || test -x /sbin/ip || missing="$$missing iproute2"; \
	  command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	  command -v etcd >/dev/null 2>&1 || test -x /usr/bin/etcd || missing="$$missing etcd-server"; \
	  command -v curl >/dev/null 2>&1 || missing="$$missing curl"; \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	  if [ -n "$$missing" ]; then \
	    echo ">> installing$$missing (apt)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  fi
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	@touch $@

setup: $(STAMP)

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-cluster: setup
	$(BIN)/python -m pytest -q -m cluster tests/cluster $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check edge_agent cloud_controller edgeloop_sim tests bench
	$(BIN)/mypy edge_agent cloud_controller edgeloop_sim
	$(BIN)/lint-imports

demo: setup
	$(BIN)/edgeloop-demo

bench: setup
	$(BIN)/python bench/run_all.py

# Both configuration references, generated from the settings models (a test fails when they are stale).
config-docs: setup
	$(BIN)/python -m edge_agent.cli config-reference > docs/configuration.md
	$(BIN)/python -m cloud_controller.cli config-reference > docs/controller-configuration.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache var out
