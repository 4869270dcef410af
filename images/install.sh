#!/bin/sh
# The install steps of every image, in one place:  images/install.sh KIND VENV SRC
#
#   KIND  controller | train | agent   (images/KIND.Containerfile runs exactly this)
#   VENV  the venv to create (/opt/edgeloop in the images)
#   SRC   the project's source tree (pyproject.toml, the packages, images/constraints.txt)
#
# The images' builder stage runs it, and so does tests/cloud/test_images.py in a fresh
# venv where container builds cannot run; so what the test checks is what the image gets.
# Versions are pinned by images/constraints.txt (regenerate: make images-lock).
# Environment: PIP_INDEX_URL, PIP_FIND_LINKS as for pip; TORCH_INDEX_URL (train) is the
# index torch comes from (default: the CPU wheel index; empty: the normal index or find-links).
set -eu

kind="${1:?usage: install.sh controller|train|agent VENV SRC}"
venv="${2:?usage: install.sh KIND VENV SRC}"
src="${3:?usage: install.sh KIND VENV SRC}"
constraints="$src/images/constraints.txt"
TORCH_VERSION=2.13.0  # the train extra's pin (tests/cloud/test_images.py checks they agree)
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# A build argument left empty arrives as an empty variable, which pip would take literally.
[ -n "${PIP_INDEX_URL-}" ] || unset PIP_INDEX_URL
[ -n "${PIP_FIND_LINKS-}" ] || unset PIP_FIND_LINKS
[ -n "${PIP_CERT-}" ] || unset PIP_CERT
[ -f "$constraints" ] || { echo "install.sh: $constraints missing" >&2; exit 2; }

python3 -m venv "$venv"
pip() { "$venv/bin/python" -m pip "$@"; }
py() { "$venv/bin/python" "$@"; }

case "$kind" in
    controller)
        pip install -c "$constraints" "${src}[cloud]"
        # KubeJobLauncher reads the Job template from launchers.DEFAULT_TEMPLATE, a path beside
        # the installed package: put the repository's template there.
        dest="$(py -c 'from cloud_controller.reconcilers.distillation.launchers import DEFAULT_TEMPLATE as t; print(t)')"
        mkdir -p "$(dirname "$dest")"
        cp "$src/deploy/kubernetes/distillation/job-template.yaml" "$dest"
        chmod 0644 "$dest"
        "$venv/bin/cloud-controller" --help >/dev/null
        ;;
    train)
        # First and alone, pinned as in pyproject.toml: asked for by transformers or unpinned, the
        # default index would answer with a CUDA build of several GB.
        torch_index="${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}"
        if [ -n "$torch_index" ]; then
            pip install --index-url "$torch_index" "torch==$TORCH_VERSION"
        else
            pip install "torch==$TORCH_VERSION"
        fi
        pip install -c "$constraints" "${src}[cloud,train]"
        py -c 'import torch, cloud_controller.distill_runner; assert not torch.cuda.is_available()'
        ;;
    agent)
        pip install -c "$constraints" "$src"
        "$venv/bin/edge-agent" --help >/dev/null
        # The lean edge install: no torch, no transformers, no kubernetes client, no psycopg.
        py - <<'EOF'
import importlib.util, sys
heavy = [m for m in ("torch", "transformers", "kubernetes", "psycopg") if importlib.util.find_spec(m)]
sys.exit(f"install.sh: the agent install pulled {heavy}" if heavy else 0)
EOF
        ;;
    *)
        echo "install.sh: unknown kind '$kind' (controller, train or agent)" >&2
        exit 2
        ;;
esac
# Byte code of the install: not needed (the images run with PYTHONDONTWRITEBYTECODE), only weight.
find "$venv" -name __pycache__ -prune -exec rm -rf {} +
