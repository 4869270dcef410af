#!/usr/bin/env bash
# Small CA for EdgeLoop's MQTT mutual TLS: the broker takes the client
# certificate's CN as the MQTT username (use_identity_as_username), and the
# ACL scopes every topic by that username. So the CN *is* the node identity,
# and this script is the one place that decides which names exist.
#
#   issue-node-cert.sh init-ca DIR [--days N] [--cn NAME]
#   issue-node-cert.sh issue   DIR NAME [--days N] [--node] [--server] [--san SAN]... [--force]
#
# init-ca  makes DIR/ca.key (0600) and DIR/ca.crt; refuses if DIR/ca.key exists.
# issue    makes DIR/NAME.key (0600) and DIR/NAME.crt, signed by DIR/ca.*, CN=NAME.
#          Client certificates (nodes, devices, the controller) get
#          extendedKeyUsage=clientAuth. --server makes a broker certificate instead
#          (serverAuth, SAN DNS:NAME plus every --san, e.g. --san DNS:localhost
#          --san IP:127.0.0.1). Refuses to overwrite an existing NAME.crt unless
#          --force: two holders of one name would be one identity to the ACL.
#
# NAME must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$ (edge_agent.protocol.topics.ID_PATTERN):
# a name with '/', '+', '#' or NUL would change the meaning of the ACL patterns.
# A NODE's name is also its EdgeNode resource name, so node ids follow a stricter rule
# (edge_agent.protocol.topics.NODE_ID_PATTERN, checked by the agent at config load and by
# the controller's ingest): 1-63 lower-case letters, digits, '-' and '.', starting and
# ending with a letter or digit, no empty part between dots (RFC 1123). --node enforces
# it; without --node a name that breaks it is issued with a warning (fine for a device).
# The names "ca" and "edgeloop-controller" are special: "ca" is refused (it would
# overwrite the CA), "edgeloop-controller" is the controller's identity in the ACL;
# issue it only for the controller.
#
# Keys are EC P-256 (fast to make, supported by mosquitto and paho). See README.md.
set -euo pipefail
umask 077
# Byte-wise regex ranges: in some locales [A-Za-z] also matches accented letters.
export LC_ALL=C

readonly NAME_RE='^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'
readonly NODE_RE='^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$'
readonly NODE_RULE="1-63 lower-case letters, digits, '-' and '.', starting and ending with a letter or digit, no empty part between dots (RFC 1123: the node id is its EdgeNode's name)"
readonly SAN_RE='^(DNS:[A-Za-z0-9*][A-Za-z0-9.*-]{0,252}|IP:[0-9A-Fa-f.:]{2,45})$'
DEFAULT_CA_DAYS=3650
DEFAULT_CERT_DAYS=365

die() {
    printf '%s: %s\n' "${0##*/}" "$*" >&2
    exit 2
}

usage() {
    cat <<EOF
Usage:
  ${0##*/} init-ca DIR [--days N] [--cn NAME]
  ${0##*/} issue   DIR NAME [--days N] [--node] [--server] [--san DNS:host|IP:addr]... [--force]

  init-ca   create a CA (DIR/ca.key, DIR/ca.crt), default $DEFAULT_CA_DAYS days
  issue     create DIR/NAME.key and DIR/NAME.crt with CN=NAME, default $DEFAULT_CERT_DAYS days
            --node     NAME is an edge node id: refuse it unless it is $NODE_RULE
            --server   broker certificate (serverAuth, SAN DNS:NAME + --san values)
            --force    replace an existing NAME.crt/NAME.key
EOF
}

check_days() {
    [[ "$1" =~ ^[1-9][0-9]{0,4}$ ]] || die "--days must be a whole number of days (1-99999), got '$1'"
}

check_name() {
    [[ "$1" =~ $NAME_RE ]] || die "name '$1' must match $NAME_RE"
    [[ "$1" != "ca" ]] || die "name 'ca' is reserved for the CA's own files"
}

is_node_id() {
    [[ ${#1} -le 63 && "$1" =~ $NODE_RE ]]
}

init_ca() {
    local dir="${1:-}"
    [[ -n "$dir" ]] || { usage >&2; exit 2; }
    shift
    local days=$DEFAULT_CA_DAYS cn="EdgeLoop MQTT CA"
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --days) days="${2:-}"; shift 2 || die "--days needs a value" ;;
            --cn) cn="${2:-}"; shift 2 || die "--cn needs a value" ;;
            *) die "unknown option '$1'" ;;
        esac
    done
    check_days "$days"
    [[ "$cn" =~ ^[A-Za-z0-9][A-Za-z0-9\ _.-]{0,63}$ ]] || die "--cn has unexpected characters: '$cn'"
    [[ ! -e "$dir/ca.key" ]] || die "$dir/ca.key already exists; refusing to replace a CA"
    mkdir -p -- "$dir"
    openssl ecparam -name prime256v1 -genkey -noout -out "$dir/ca.key" 2>/dev/null
    openssl req -new -x509 -sha256 -key "$dir/ca.key" -out "$dir/ca.crt" -days "$days" \
        -subj "/CN=$cn" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash"
    chmod 0600 "$dir/ca.key"
    chmod 0644 "$dir/ca.crt"
    printf '%s\n' "$dir/ca.crt"
}

issue() {
    local dir="${1:-}" name="${2:-}"
    [[ -n "$dir" && -n "$name" ]] || { usage >&2; exit 2; }
    shift 2
    local days=$DEFAULT_CERT_DAYS server=0 force=0 node=0
    local -a sans=()
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --days) days="${2:-}"; shift 2 || die "--days needs a value" ;;
            --node) node=1; shift ;;
            --server) server=1; shift ;;
            --san) sans+=("${2:-}"); shift 2 || die "--san needs a value" ;;
            --force) force=1; shift ;;
            *) die "unknown option '$1'" ;;
        esac
    done
    check_name "$name"
    if ! is_node_id "$name"; then
        [[ $node -eq 0 ]] || die "node id '$name' must be $NODE_RULE"
        printf '%s: warning: %s is not a valid node id (%s); an edge agent with this node_id is refused\n' \
            "${0##*/}" "'$name'" "$NODE_RULE" >&2
    fi
    check_days "$days"
    [[ -f "$dir/ca.key" && -f "$dir/ca.crt" ]] || die "no CA in '$dir' (run: ${0##*/} init-ca $dir)"
    if [[ $server -eq 0 && ${#sans[@]} -gt 0 ]]; then
        die "--san is only for --server certificates"
    fi
    local san
    for san in "${sans[@]}"; do
        [[ "$san" =~ $SAN_RE ]] || die "--san must look like DNS:host or IP:addr, got '$san'"
    done
    if [[ $force -eq 0 && ( -e "$dir/$name.crt" || -e "$dir/$name.key" ) ]]; then
        die "$dir/$name.crt already exists; use --force to re-issue (the old certificate stays valid until it expires)"
    fi

    local tmp
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064  # expand $tmp now: it is local to this function
    trap "rm -rf -- '$tmp'" EXIT

    {
        printf 'basicConstraints=critical,CA:FALSE\n'
        printf 'keyUsage=critical,digitalSignature\n'
        printf 'subjectKeyIdentifier=hash\n'
        printf 'authorityKeyIdentifier=keyid\n'
        if [[ $server -eq 1 ]]; then
            local alt="DNS:$name"
            for san in "${sans[@]}"; do alt+=",$san"; done
            printf 'extendedKeyUsage=serverAuth\n'
            printf 'subjectAltName=%s\n' "$alt"
        else
            printf 'extendedKeyUsage=clientAuth\n'
        fi
    } >"$tmp/ext.cnf"

    openssl ecparam -name prime256v1 -genkey -noout -out "$tmp/key.pem" 2>/dev/null
    openssl req -new -sha256 -key "$tmp/key.pem" -subj "/CN=$name" -out "$tmp/req.csr"
    openssl x509 -req -sha256 -in "$tmp/req.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
        -CAcreateserial -CAserial "$dir/ca.srl" -days "$days" \
        -extfile "$tmp/ext.cnf" -out "$tmp/cert.pem" 2>/dev/null

    chmod 0600 "$tmp/key.pem"
    chmod 0644 "$tmp/cert.pem"
    mv -f -- "$tmp/key.pem" "$dir/$name.key"
    mv -f -- "$tmp/cert.pem" "$dir/$name.crt"
    printf '%s\n' "$dir/$name.crt"
}

main() {
    command -v openssl >/dev/null 2>&1 || die "openssl not found"
    local cmd="${1:-}"
    [[ $# -gt 0 ]] && shift
    case "$cmd" in
        init-ca) init_ca "$@" ;;
        issue) issue "$@" ;;
        -h|--help|help) usage ;;
        *) usage >&2; exit 2 ;;
    esac
}

main "$@"
