#!/usr/bin/env bash
# Install the EdgeLoop edge agent as a systemd service on this device.
#
# Idempotent: run it again to upgrade the agent after pulling a new version.
# An existing config is never overwritten. Run as root (except --dry-run).
#
#   sudo deploy/systemd/install.sh [--prefix /opt/edgeloop] [--python python3] [--dry-run]
#
# See docs/install-agent.md.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC_DIR="$(cd "$SCRIPT_DIR/../.." && pwd)"

PREFIX=/opt/edgeloop
PYTHON=python3
DRY_RUN=0
SERVICE_USER=edgeloop
UNIT_NAME=edge-agent.service
UNIT_DIR=/etc/systemd/system
CONFIG_DIR=/etc/edgeloop
CONFIG_FILE="$CONFIG_DIR/edge-agent.yaml"
DEFAULT_PREFIX=/opt/edgeloop

usage() {
    cat <<EOF
Usage: $0 [--prefix DIR] [--python PYTHON] [--dry-run] [--help]

  --prefix DIR     install root; the virtualenv goes to DIR/venv (default $DEFAULT_PREFIX).
                   Must not be under /home (the unit sets ProtectHome=yes).
  --python PYTHON  interpreter used to create the venv, 3.11 or newer (default python3)
  --dry-run        print what would be done, change nothing (no root needed)
EOF
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
        --prefix=*) PREFIX="${1#*=}"; shift ;;
        --python) PYTHON="${2:?--python needs an interpreter}"; shift 2 ;;
        --python=*) PYTHON="${1#*=}"; shift ;;
        --dry-run|-n) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

case "$PREFIX" in
    /*) ;;
    *) echo "--prefix must be an absolute path, got: $PREFIX" >&2; exit 2 ;;
esac
PREFIX="${PREFIX%/}"
case "$PREFIX" in
    /home/*|/root/*|/run/user/*)
        echo "--prefix $PREFIX is hidden from the service by ProtectHome=yes; pick e.g. /opt/edgeloop" >&2
        exit 2 ;;
esac
VENV="$PREFIX/venv"
AGENT_BIN="$VENV/bin/edge-agent"

log() { printf '==> %s\n' "$*"; }

# run CMD...: execute, or in dry-run mode print it shell-quoted.
run() {
    if [[ $DRY_RUN -eq 1 ]]; then
        printf '[dry-run]'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

if [[ $DRY_RUN -eq 0 && $EUID -ne 0 ]]; then
    echo "run as root (or with --dry-run to see the plan)" >&2
    exit 1
fi

# The shipped unit names the default prefix; rewrite it for --prefix.
render_unit() {
    sed -e "s#$DEFAULT_PREFIX/#$PREFIX/#g" "$SCRIPT_DIR/edge-agent.service"
}

# --- 1. Python ----------------------------------------------------------------
log "Python interpreter: $PYTHON"
if [[ $DRY_RUN -eq 0 ]]; then
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "$PYTHON is missing or older than 3.11 (apt install python3 python3-venv)" >&2
        exit 1
    fi
fi

# --- 2. Service user ----------------------------------------------------------
if getent passwd "$SERVICE_USER" >/dev/null 2>&1; then
    log "user $SERVICE_USER exists"
else
    log "creating system user $SERVICE_USER"
    run useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin --comment "EdgeLoop edge agent" "$SERVICE_USER"
fi

# --- 3. Virtualenv and the agent ------------------------------------------------
if [[ -x "$VENV/bin/python" ]]; then
    log "reusing virtualenv $VENV"
else
    log "creating virtualenv $VENV"
    run install -d -m 0755 "$PREFIX"
    run "$PYTHON" -m venv "$VENV"
fi
log "installing the agent from $SRC_DIR (edge-only: no extras)"
run "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
run "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$SRC_DIR"
# The unit runs with a read-only /opt, so Python cannot cache bytecode there later.
run "$VENV/bin/python" -m compileall -q "$VENV/lib"
run install -D -m 0644 "$SRC_DIR/docs/install-agent.md" "$PREFIX/docs/install-agent.md"

# --- 4. Config ----------------------------------------------------------------
run install -d -m 0755 -o root -g root "$CONFIG_DIR"
if [[ -e "$CONFIG_FILE" ]]; then
    log "keeping existing config $CONFIG_FILE"
else
    log "installing example config to $CONFIG_FILE (edit node_id and mqtt first)"
    # 0640 root:edgeloop: the service reads it, other users cannot see the broker password.
    run install -m 0640 -o root -g "$SERVICE_USER" "$SCRIPT_DIR/edge-agent.example.yaml" "$CONFIG_FILE"
fi

# --- 5. Unit ------------------------------------------------------------------
UNIT_PATH="$UNIT_DIR/$UNIT_NAME"
if [[ $DRY_RUN -eq 1 ]]; then
    log "would write $UNIT_PATH (ExecStart=$AGENT_BIN run --config $CONFIG_FILE)"
    printf '[dry-run] unit content:\n'
    render_unit | sed 's/^/    /'
else
    tmp_unit="$(mktemp)"
    trap 'rm -f "$tmp_unit"' EXIT
    render_unit >"$tmp_unit"
    if [[ -f "$UNIT_PATH" ]] && cmp -s "$tmp_unit" "$UNIT_PATH"; then
        log "unit $UNIT_PATH unchanged"
    else
        log "installing unit $UNIT_PATH"
        install -m 0644 "$tmp_unit" "$UNIT_PATH"
    fi
fi

# --- 6. Check the config as the service user -----------------------------------
# As the service user, so an unreadable config or key file shows up now, not at boot.
log "checking $CONFIG_FILE"
check=("$AGENT_BIN" check-config "$CONFIG_FILE")
if command -v runuser >/dev/null 2>&1; then
    check=(runuser -u "$SERVICE_USER" -- "${check[@]}")
fi
if ! run "${check[@]}"; then
    echo "config check failed: fix $CONFIG_FILE and run this script again" >&2
    exit 1
fi

# --- 7. systemd ---------------------------------------------------------------
if [[ $DRY_RUN -eq 1 ]] || [[ -d /run/systemd/system ]]; then
    run systemctl daemon-reload
else
    log "systemd is not running here: skipping daemon-reload"
fi

cat <<EOF

Installed. Next steps:
  1. edit $CONFIG_FILE (node_id, mqtt host and credentials), then
     $AGENT_BIN check-config $CONFIG_FILE
  2. systemctl enable --now $UNIT_NAME
  3. systemctl status $UNIT_NAME ; journalctl -u $UNIT_NAME -f
  Reload after a config change: systemctl reload $UNIT_NAME
EOF
if [[ $DRY_RUN -eq 1 ]]; then
    echo "(dry run: nothing was changed)"
fi
