#!/bin/sh
# A base image for the Containerfiles where no container registry is reachable:
#   images/local-base.sh NAME        (e.g. localhost/edgeloop-base:bookworm)
# Debian bookworm's minimal system from Debian's own packages (mmdebstrap, over apt),
# with python3 (3.11) and python3-venv, imported with podman or buildah as NAME. Then:
#   make images IMAGE_BASE=NAME IMAGE_ARGS=--isolation=chroot
set -eu
name="${1:?usage: local-base.sh NAME}"
tool="$(command -v podman || command -v buildah || true)"
[ -n "$tool" ] || { echo "local-base.sh: needs podman or buildah" >&2; exit 2; }
command -v mmdebstrap >/dev/null || { echo "local-base.sh: needs mmdebstrap (apt-get install -y mmdebstrap)" >&2; exit 2; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' bookworm "$tmp/rootfs.tar"
case "$tool" in
    *podman) podman import "$tmp/rootfs.tar" "$name" ;;
    *)  # buildah has no import: a scratch container with the tree added, committed
        ctr="$(buildah from scratch)"
        buildah add "$ctr" "$tmp/rootfs.tar" /
        buildah commit --rm "$ctr" "$name" ;;
esac
