# The README's two commands: `make demo` and `make test`. Each sets up what it needs
# on a fresh Debian machine (mosquitto, etcd and postgresql via apt, a venv, the project with its extras).
# tests/cluster/ also needs the kube-apiserver assets (EDGELOOP_KUBE_ASSETS, default ../shared/kube).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.edgeloop-installed
EXTRAS ?= cloud,train,dev,tracing
PYTEST_ARGS ?=

.PHONY: setup test test-images test-fast test-cluster lint demo bench config-docs images images-lock image-base clean

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

# The image install checks download the images' packages into fresh venvs (minutes): make test-images.
test: setup
	$(BIN)/python -m pytest -q -m "not images" $(PYTEST_ARGS)

test-images: setup
	$(BIN)/python -m pytest -q -m images $(PYTEST_ARGS)

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

# Container images (images/*.Containerfile): podman, else buildah. The names are the ones the
# manifests use, so `kind load docker-image` / `k3s ctr images import` need no kustomize edit.
#   make images                                   # on a build machine with registry access
#   make image-base && make images IMAGE_BASE=localhost/edgeloop-base:bookworm \
#       IMAGE_ARGS='--isolation=chroot --volume /opt/wheels:/opt/wheels:ro --build-arg PIP_FIND_LINKS=/opt/wheels --build-arg TORCH_INDEX_URL='
#                                                 # no registry: a Debian base made from apt packages
IMAGE_TOOL ?= $(shell command -v podman 2>/dev/null || command -v buildah 2>/dev/null)
IMAGE_REPO ?= ghcr.io/edgeloop
IMAGE_TAG  ?= 0.1.0
IMAGE_BASE ?=
IMAGE_ARGS ?=
IMAGES     ?= controller train agent
IMAGE_NAME_controller = edgeloop
IMAGE_NAME_train      = edgeloop-train
IMAGE_NAME_agent      = edgeloop-agent

images:
	@test -n "$(IMAGE_TOOL)" || { echo "make images needs podman or buildah (apt-get install -y podman buildah)" >&2; exit 2; }
	@for kind in $(IMAGES); do \
	  case $$kind in controller) name=$(IMAGE_NAME_controller);; train) name=$(IMAGE_NAME_train);; \
	    agent) name=$(IMAGE_NAME_agent);; *) echo "unknown image $$kind" >&2; exit 2;; esac; \
	  echo ">> $(IMAGE_REPO)/$$name:$(IMAGE_TAG) from images/$$kind.Containerfile"; \
	  case "$(IMAGE_TOOL)" in *buildah) build="bud";; *) build="build";; esac; \
	  $(IMAGE_TOOL) $$build -f images/$$kind.Containerfile -t $(IMAGE_REPO)/$$name:$(IMAGE_TAG) \
	    $(if $(IMAGE_BASE),--build-arg BASE=$(IMAGE_BASE)) $(IMAGE_ARGS) . || exit 1; \
	done

# The pinned versions every image installs (images/constraints.txt), from a fresh resolve.
images-lock:
	rm -rf .images-lock && : > images/constraints.txt
	sh images/install.sh train .images-lock/venv .
	{ echo "# Pinned versions for images/install.sh (all three images). Regenerate: make images-lock"; \
	  echo "# (a fresh resolve of the cloud and train extras; torch is the CPU build)."; \
	  .images-lock/venv/bin/python -m pip freeze --exclude edgeloop | grep -v "^-e "; } > images/constraints.txt.new
	mv images/constraints.txt.new images/constraints.txt && rm -rf .images-lock

# A base image without a registry: Debian bookworm from apt (mmdebstrap), python3 and venv.
image-base:
	sh images/local-base.sh localhost/edgeloop-base:bookworm

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache var out
