#!/usr/bin/env bash
# Make every Secret deploy/kubernetes references, from files kept in DIR on an admin machine.
#
#   cluster-secrets.sh DIR [--namespace NS] [--san DNS:host|IP:addr]... [--dsn DSN] [--dry-run]
#
# What it makes in DIR, each only if absent (a second run re-uses them: idempotent):
#   ca.key, ca.crt                          the MQTT CA (issue-node-cert.sh init-ca)
#   edgeloop-broker.{crt,key}               broker server certificate, SANs edgeloop-broker,
#                                           edgeloop-broker.NS.svc, ...svc.cluster.local and every --san
#                                           (the name edge nodes dial: --san DNS:mqtt.example.com)
#   edgeloop-controller.{crt,key}           the controller's client certificate (its ACL identity)
#   release.key, release.pub                the Ed25519 release signing key pair (pin release.pub on nodes)
#   postgres-password                       the dev PostgreSQL's password (deploy/kubernetes/postgres)
#   store-dsn                               the shared store's DSN: --dsn, else the dev PostgreSQL's
#
# and the Secrets it creates or updates in NS (default edgeloop; the namespace must exist):
#   edgeloop-broker-tls            ca.crt tls.crt tls.key     the broker Deployment
#   edgeloop-controller-mqtt-tls   ca.crt tls.crt tls.key     the controller Deployment
#   edgeloop-signing-key           release.key release.pub   the controller Deployment
#   edgeloop-store                 dsn postgres-password      the controller, the distillation Jobs,
#                                                              the PostgreSQL StatefulSet
#
# --dry-run prints the Secrets as YAML instead of applying them (they contain keys: mind
# where the output goes). KUBECTL names the kubectl to use (default: kubectl on PATH), and
# KUBECONFIG / the current context say which cluster, as for kubectl itself.
# Keys never leave DIR except into the Secrets; keep DIR (and ca.key above all) off git.
set -euo pipefail
umask 077
export LC_ALL=C

HERE="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
readonly HERE
readonly ISSUE="$HERE/issue-node-cert.sh"
readonly SAN_RE='^(DNS:[A-Za-z0-9*][A-Za-z0-9.*-]{0,252}|IP:[0-9A-Fa-f.:]{2,45})$'
readonly NS_RE='^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'
KUBECTL="${KUBECTL:-kubectl}"

die() {
    printf '%s: %s\n' "${0##*/}" "$*" >&2
    exit 2
}

usage() {
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"
}

# One Secret from files: create it client-side, then apply (creates or updates in place).
secret() {
    local name="$1"
    shift
    local -a from=()
    local pair
    for pair in "$@"; do from+=("--from-file=$pair"); done
    local yaml
    yaml="$("$KUBECTL" create secret generic "$name" --namespace "$NS" "${from[@]}" \
        --dry-run=client -o yaml)"
    if [[ $DRY_RUN -eq 1 ]]; then
        printf -- '---\n%s\n' "$yaml"
    else
        printf '%s\n' "$yaml" | "$KUBECTL" apply -f -
    fi
}

main() {
    local dir="${1:-}"
    case "$dir" in
        ""|-h|--help|help) usage; [[ -n "$dir" ]] && exit 0; exit 2 ;;
    esac
    shift
    NS=edgeloop
    DRY_RUN=0
    local dsn=""
    local -a sans=()
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --namespace) NS="${2:-}"; shift 2 || die "--namespace needs a value" ;;
            --san) sans+=("${2:-}"); shift 2 || die "--san needs a value" ;;
            --dsn) dsn="${2:-}"; shift 2 || die "--dsn needs a value" ;;
            --dry-run) DRY_RUN=1; shift ;;
            *) die "unknown option '$1'" ;;
        esac
    done
    [[ "$NS" =~ $NS_RE ]] || die "namespace '$NS' is not a valid namespace name"
    local san
    for san in "${sans[@]}"; do
        [[ "$san" =~ $SAN_RE ]] || die "--san must look like DNS:host or IP:addr, got '$san'"
    done
    if [[ -n "$dsn" && ! "$dsn" =~ ^postgres(ql)?:// ]]; then
        die "--dsn must be a postgresql:// URL"
    fi
    command -v openssl >/dev/null 2>&1 || die "openssl not found"
    command -v "$KUBECTL" >/dev/null 2>&1 || die "kubectl not found (set KUBECTL)"
    mkdir -p -- "$dir"

    [[ -f "$dir/ca.key" ]] || bash "$ISSUE" init-ca "$dir" >/dev/null
    if [[ ! -f "$dir/edgeloop-broker.crt" ]]; then
        local -a args=(--san "DNS:edgeloop-broker.$NS.svc" --san "DNS:edgeloop-broker.$NS.svc.cluster.local")
        for san in "${sans[@]}"; do args+=(--san "$san"); done
        bash "$ISSUE" issue "$dir" edgeloop-broker --server "${args[@]}" >/dev/null
    elif [[ ${#sans[@]} -gt 0 ]]; then
        printf '%s: %s exists; --san is ignored (re-issue with issue-node-cert.sh --force)\n' \
            "${0##*/}" "$dir/edgeloop-broker.crt" >&2
    fi
    [[ -f "$dir/edgeloop-controller.crt" ]] || bash "$ISSUE" issue "$dir" edgeloop-controller >/dev/null
    if [[ ! -f "$dir/release.key" ]]; then
        openssl genpkey -algorithm ed25519 -out "$dir/release.key" 2>/dev/null
        openssl pkey -in "$dir/release.key" -pubout -out "$dir/release.pub"
        chmod 0600 "$dir/release.key"
        chmod 0644 "$dir/release.pub"
    fi
    if [[ ! -f "$dir/postgres-password" ]]; then
        # hex: nothing a URL or a shell would need to escape
        openssl rand -hex 24 | tr -d '\n' >"$dir/postgres-password"
    fi
    if [[ -n "$dsn" ]]; then
        printf '%s' "$dsn" >"$dir/store-dsn"
    elif [[ ! -f "$dir/store-dsn" ]]; then
        printf 'postgresql://edgeloop:%s@edgeloop-postgres.%s.svc:5432/edgeloop' \
            "$(cat "$dir/postgres-password")" "$NS" >"$dir/store-dsn"
    fi

    secret edgeloop-broker-tls \
        "ca.crt=$dir/ca.crt" "tls.crt=$dir/edgeloop-broker.crt" "tls.key=$dir/edgeloop-broker.key"
    secret edgeloop-controller-mqtt-tls \
        "ca.crt=$dir/ca.crt" "tls.crt=$dir/edgeloop-controller.crt" "tls.key=$dir/edgeloop-controller.key"
    secret edgeloop-signing-key "release.key=$dir/release.key" "release.pub=$dir/release.pub"
    secret edgeloop-store "dsn=$dir/store-dsn" "postgres-password=$dir/postgres-password"
}

main "$@"
