#!/usr/bin/env bash
# certs.sh — the federation's certificates, made with the openssl command line.
#
# Usage:
#   certs.sh init DIR [--days N] [--ca-name NAME]
#       Creates the federation CA (ECDSA P-256, 10 years by default) and an
#       empty CRL. Refuses if DIR already holds a CA: a CA is never replaced.
#   certs.sh coordinator DIR (--dns NAME | --ip ADDR)... [--name CN] [VALIDITY] [--force]
#       Coordinator certificate: EKU serverAuth, SAN = every --dns / --ip.
#   certs.sh region DIR ID (--dns NAME | --ip ADDR)... [VALIDITY] [--force]
#       Regional coordinator (tiers): regions/ID.crt/.key, EKU serverAuth and
#       clientAuth, CN = ID (its identity at the root), SAN as coordinator.
#   certs.sh node DIR ID [ID ...] [VALIDITY] [--force]
#   certs.sh node DIR --count N [--prefix P] [VALIDITY] [--force]
#       Node certificates: EKU clientAuth, subject CN = node id. --count makes
#       P01..PNN (prefix default "node-"; width 2, or more for N > 99).
#   certs.sh revoke DIR ID [ID ...] [--reason R]
#       Revokes the node's current certificate and rewrites DIR/crl.pem.
#   certs.sh crl DIR [--crl-days N]
#       Re-issues DIR/crl.pem (do this before it expires; default 365 days).
#   certs.sh show DIR
#       Lists issued certificates (V valid, R revoked, E expired) from the CA db.
#
# VALIDITY: --days N (from now; default 365), or --start T --end T with T as
#   YYYYMMDDHHMMSSZ (UTC), e.g. for tests of expired or not-yet-valid certificates.
# Existing keys or certificates are never overwritten without --force; with
#   --force the old certificate stays valid until you revoke it.
#
# Layout of DIR:
#   ca.crt                 federation CA certificate: the only trust anchor (public)
#   crl.pem                certificate revocation list (public; reload with SIGHUP)
#   coordinator.crt/.key   coordinator certificate and key (key 0600)
#   nodes/ID.crt, ID.key   one pair per node (key 0600)
#   ca/ca.key              CA private key (0600): keep it off the coordinator
#   ca/openssl.cnf, ca/index.txt, ca/serial, ca/crlnumber, ca/newcerts/
#                          the CA's database (openssl ca)
# Node ids: 1-64 characters from [A-Za-z0-9._-], starting with a letter or digit.
set -euo pipefail

prog=certs.sh
die() {
  echo "$prog: $*" >&2
  exit 1
}
usage_err() {
  echo "$prog: $* (try --help)" >&2
  exit 2
}
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

command -v openssl >/dev/null 2>&1 || die "the openssl command is required"

valid_id() { [[ "$1" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ ]]; }
valid_time() { [[ "$1" =~ ^[0-9]{14}Z$ ]]; }
valid_uint() { [[ "$1" =~ ^[1-9][0-9]{0,5}$ ]]; }

# Runs openssl quietly; on failure shows its output and stops.
ossl() {
  local out
  if ! out=$(openssl "$@" 2>&1); then
    echo "$out" >&2
    die "openssl $1 failed"
  fi
}

need_ca() {
  [ -f "$1/ca/ca.key" ] && [ -f "$1/ca.crt" ] && [ -f "$1/ca/openssl.cnf" ] ||
    die "$1 holds no federation CA (run: $prog init $1)"
}

# openssl ca reads its directory from the environment so DIR can be moved.
ca_env() {
  local d
  d=$(cd "$1" && pwd) || die "cannot enter $1"
  export FEDLORA_CA_DIR=$d
}

write_cnf() {
  cat >"$1" <<'EOF'
# openssl configuration of the fedlora federation CA (written by certs.sh).
# FEDLORA_CA_DIR is the certs directory; certs.sh sets it.
[ ca ]
default_ca = fedlora_ca

[ fedlora_ca ]
dir              = $ENV::FEDLORA_CA_DIR
database         = $dir/ca/index.txt
new_certs_dir    = $dir/ca/newcerts
certificate      = $dir/ca.crt
private_key      = $dir/ca/ca.key
serial           = $dir/ca/serial
crlnumber        = $dir/ca/crlnumber
default_md       = sha256
default_days     = 365
default_crl_days = 365
policy           = policy_cn
unique_subject   = no
copy_extensions  = none
email_in_dn      = no
preserve         = no
crl_extensions   = crl_ext

[ policy_cn ]
commonName = supplied

[ req ]
distinguished_name = req_dn
prompt             = no
x509_extensions    = ca_ext

[ req_dn ]
CN = placeholder

[ ca_ext ]
basicConstraints       = critical, CA:TRUE, pathlen:0
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash

[ node_ext ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = clientAuth
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[ crl_ext ]
authorityKeyIdentifier = keyid:always
EOF
}

# new_key PATH: ECDSA P-256 private key, mode 0600 from the start.
new_key() {
  (umask 077 && ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1")
  chmod 600 "$1"
}

# Parses the validity options shared by coordinator and node into the array
# validity_args (for openssl ca). Other arguments are left in rest_args.
parse_validity() {
  local days="" start="" end=""
  rest_args=()
  force=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --days)
        [ $# -ge 2 ] && valid_uint "$2" || usage_err "--days needs a positive number"
        days=$2
        shift 2
        ;;
      --start)
        [ $# -ge 2 ] && valid_time "$2" || usage_err "--start needs YYYYMMDDHHMMSSZ"
        start=$2
        shift 2
        ;;
      --end)
        [ $# -ge 2 ] && valid_time "$2" || usage_err "--end needs YYYYMMDDHHMMSSZ"
        end=$2
        shift 2
        ;;
      --force)
        force=1
        shift
        ;;
      *)
        rest_args+=("$1")
        shift
        ;;
    esac
  done
  if [ -n "$start$end" ]; then
    [ -n "$start" ] && [ -n "$end" ] || usage_err "--start and --end go together"
    [ -z "$days" ] || usage_err "use either --days or --start/--end"
    [[ "$start" < "$end" ]] || usage_err "--start must be before --end"
    validity_args=(-startdate "$start" -enddate "$end")
  else
    validity_args=(-days "${days:-365}")
  fi
}

# issue DIR CN KEY CRT EXT_ARGS...: key + CSR + signature by the CA.
issue() {
  local dir=$1 cn=$2 key=$3 crt=$4
  shift 4
  local tmp
  tmp=$(mktemp -d)
  new_key "$tmp/key.pem"
  ossl req -new -key "$tmp/key.pem" -subj "/CN=$cn" -out "$tmp/req.csr" \
    -config "$dir/ca/openssl.cnf"
  ossl ca -batch -notext -config "$dir/ca/openssl.cnf" -in "$tmp/req.csr" \
    -out "$tmp/cert.pem" "${validity_args[@]}" "$@"
  chmod 644 "$tmp/cert.pem"
  mv -f "$tmp/key.pem" "$key"
  mv -f "$tmp/cert.pem" "$crt"
  rm -rf "$tmp"
}

gen_crl() {
  local dir=$1 days=$2
  ossl ca -gencrl -config "$dir/ca/openssl.cnf" -crldays "$days" -out "$dir/crl.pem.tmp"
  chmod 644 "$dir/crl.pem.tmp"
  mv -f "$dir/crl.pem.tmp" "$dir/crl.pem"
}

cmd_init() {
  [ $# -ge 1 ] || usage_err "init needs DIR"
  local dir=$1 days=3650 name="fedlora federation CA"
  shift
  while [ $# -gt 0 ]; do
    case "$1" in
      --days)
        [ $# -ge 2 ] && valid_uint "$2" || usage_err "--days needs a positive number"
        days=$2
        shift 2
        ;;
      --ca-name)
        [ $# -ge 2 ] && [[ "$2" =~ ^[A-Za-z0-9\ ._-]{1,64}$ ]] || usage_err "--ca-name: 1-64 of [A-Za-z0-9 ._-]"
        name=$2
        shift 2
        ;;
      *) usage_err "init: unknown argument '$1'" ;;
    esac
  done
  if [ -e "$dir/ca/ca.key" ] || [ -e "$dir/ca.crt" ]; then
    die "$dir already holds a federation CA; refusing to replace it (remove $dir/ca and $dir/ca.crt by hand if you really mean to start a new federation)"
  fi
  mkdir -p "$dir/ca/newcerts" "$dir/nodes"
  chmod 700 "$dir/ca"
  write_cnf "$dir/ca/openssl.cnf"
  : >"$dir/ca/index.txt"
  echo "unique_subject = no" >"$dir/ca/index.txt.attr"
  openssl rand -hex 16 | tr 'a-f' 'A-F' >"$dir/ca/serial"
  echo 1000 >"$dir/ca/crlnumber"
  ca_env "$dir"
  new_key "$dir/ca/ca.key"
  ossl req -x509 -new -key "$dir/ca/ca.key" -subj "/CN=$name" -days "$days" -sha256 \
    -config "$dir/ca/openssl.cnf" -extensions ca_ext -out "$dir/ca.crt.tmp"
  chmod 644 "$dir/ca.crt.tmp"
  mv "$dir/ca.crt.tmp" "$dir/ca.crt"
  gen_crl "$dir" 365
  echo "$prog: federation CA in $dir/ca.crt (key $dir/ca/ca.key), empty CRL $dir/crl.pem"
}

cmd_coordinator() {
  [ $# -ge 1 ] || usage_err "coordinator needs DIR"
  local dir=$1
  shift
  parse_validity "$@"
  set -- ${rest_args[@]+"${rest_args[@]}"}
  local name=fedlora-coordinator san=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --dns)
        [ $# -ge 2 ] && [[ "$2" =~ ^[A-Za-z0-9*]([A-Za-z0-9.-]{0,252})$ ]] || usage_err "--dns needs a host name"
        san+="${san:+,}DNS:$2"
        shift 2
        ;;
      --ip)
        [ $# -ge 2 ] && [[ "$2" =~ ^[0-9A-Fa-f:.]{2,45}$ ]] || usage_err "--ip needs an IPv4 or IPv6 address"
        san+="${san:+,}IP:$2"
        shift 2
        ;;
      --name)
        [ $# -ge 2 ] && valid_id "$2" || usage_err "--name: 1-64 of [A-Za-z0-9._-]"
        name=$2
        shift 2
        ;;
      *) usage_err "coordinator: unknown argument '$1'" ;;
    esac
  done
  [ -n "$san" ] || usage_err "coordinator needs at least one --dns NAME or --ip ADDR (nodes check it)"
  need_ca "$dir"
  ca_env "$dir"
  # a region (cmd_region) is a server to its nodes and a client to the root
  local base=${FL_CERT_BASE:-$dir/coordinator} eku=${FL_CERT_EKU:-serverAuth}
  if [ -e "$base.crt" ] && [ "$force" -eq 0 ]; then
    die "$base.crt exists (use --force to issue a new one)"
  fi
  local ext
  ext=$(mktemp)
  cat >"$ext" <<EOF
[ coord_ext ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = $eku
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
subjectAltName         = $san
EOF
  issue "$dir" "$name" "$base.key" "$base.crt" -extfile "$ext" -extensions coord_ext
  rm -f "$ext"
  echo "$prog: coordinator certificate $base.crt (CN=$name, SAN $san)"
}

# A regional coordinator (docs/COORDINATOR.md, "Tiers"): one certificate
# with EKU serverAuth (its nodes) and clientAuth (the root; CN = ID).
cmd_region() {
  [ $# -ge 2 ] || usage_err "region needs DIR and ID"
  local dir=$1 id=$2
  shift 2
  valid_id "$id" || usage_err "region ID: 1-64 of [A-Za-z0-9._-]"
  mkdir -p "$dir/regions"
  FL_CERT_BASE="$dir/regions/$id" FL_CERT_EKU="serverAuth, clientAuth" \
    cmd_coordinator "$dir" --name "$id" "$@"
}

cmd_node() {
  [ $# -ge 1 ] || usage_err "node needs DIR"
  local dir=$1
  shift
  parse_validity "$@"
  set -- ${rest_args[@]+"${rest_args[@]}"}
  local ids=() count="" prefix=node-
  while [ $# -gt 0 ]; do
    case "$1" in
      --count)
        [ $# -ge 2 ] && valid_uint "$2" || usage_err "--count needs a positive number"
        count=$2
        shift 2
        ;;
      --prefix)
        [ $# -ge 2 ] || usage_err "--prefix needs a value"
        prefix=$2
        shift 2
        ;;
      -*) usage_err "node: unknown option '$1'" ;;
      *)
        valid_id "$1" || usage_err "bad node id '$1': 1-64 of [A-Za-z0-9._-], starting with a letter or digit"
        ids+=("$1")
        shift
        ;;
    esac
  done
  if [ -n "$count" ]; then
    local w=2 i
    [ "$count" -gt 99 ] && w=${#count}
    for ((i = 1; i <= count; i++)); do
      local id
      id=$(printf "%s%0*d" "$prefix" "$w" "$i")
      valid_id "$id" || usage_err "bad node id '$id' from --prefix"
      ids+=("$id")
    done
  fi
  [ ${#ids[@]} -gt 0 ] || usage_err "node needs node ids or --count N"
  need_ca "$dir"
  ca_env "$dir"
  mkdir -p "$dir/nodes"
  local id
  for id in "${ids[@]}"; do
    if [ -e "$dir/nodes/$id.crt" ] && [ "$force" -eq 0 ]; then
      die "$dir/nodes/$id.crt exists (use --force to issue a new one)"
    fi
  done
  for id in "${ids[@]}"; do
    issue "$dir" "$id" "$dir/nodes/$id.key" "$dir/nodes/$id.crt" -extensions node_ext
  done
  echo "$prog: ${#ids[@]} node certificate(s) in $dir/nodes/"
}

cmd_revoke() {
  [ $# -ge 2 ] || usage_err "revoke needs DIR and node ids"
  local dir=$1 reason=keyCompromise ids=()
  shift
  while [ $# -gt 0 ]; do
    case "$1" in
      --reason)
        [ $# -ge 2 ] || usage_err "--reason needs a value"
        case "$2" in
          unspecified | keyCompromise | affiliationChanged | superseded | cessationOfOperation | certificateHold) ;;
          *) usage_err "--reason: unspecified|keyCompromise|affiliationChanged|superseded|cessationOfOperation|certificateHold" ;;
        esac
        reason=$2
        shift 2
        ;;
      -*) usage_err "revoke: unknown option '$1'" ;;
      *)
        valid_id "$1" || usage_err "bad node id '$1'"
        ids+=("$1")
        shift
        ;;
    esac
  done
  [ ${#ids[@]} -gt 0 ] || usage_err "revoke needs node ids"
  need_ca "$dir"
  ca_env "$dir"
  local id
  for id in "${ids[@]}"; do
    [ -f "$dir/nodes/$id.crt" ] || die "no certificate $dir/nodes/$id.crt"
  done
  for id in "${ids[@]}"; do
    local out
    if ! out=$(openssl ca -config "$dir/ca/openssl.cnf" -revoke "$dir/nodes/$id.crt" -crl_reason "$reason" 2>&1); then
      case "$out" in
        *"Already revoked"* | *"already revoked"*) echo "$prog: $id was already revoked" ;;
        *)
          echo "$out" >&2
          die "revoking $id failed"
          ;;
      esac
    fi
  done
  gen_crl "$dir" 365
  echo "$prog: revoked ${ids[*]}; CRL $dir/crl.pem (send SIGHUP to the coordinator)"
}

cmd_crl() {
  [ $# -ge 1 ] || usage_err "crl needs DIR"
  local dir=$1 days=365
  shift
  while [ $# -gt 0 ]; do
    case "$1" in
      --crl-days)
        [ $# -ge 2 ] && valid_uint "$2" || usage_err "--crl-days needs a positive number"
        days=$2
        shift 2
        ;;
      *) usage_err "crl: unknown argument '$1'" ;;
    esac
  done
  need_ca "$dir"
  ca_env "$dir"
  gen_crl "$dir" "$days"
  echo "$prog: CRL $dir/crl.pem valid for $days days"
}

cmd_show() {
  [ $# -eq 1 ] || usage_err "show needs DIR"
  need_ca "$1"
  # index.txt: status, expiry, revocation, serial, file, subject (tab-separated)
  awk -F'\t' '{ printf "%s  %s  serial %s  %s\n", $1, $2, $4, $6 }' "$1/ca/index.txt"
}

[ $# -ge 1 ] || usage_err "missing command"
cmd=$1
shift
case "$cmd" in
  -h | --help | help) usage ;;
  init) cmd_init "$@" ;;
  coordinator) cmd_coordinator "$@" ;;
  region) cmd_region "$@" ;;
  node) cmd_node "$@" ;;
  revoke) cmd_revoke "$@" ;;
  crl) cmd_crl "$@" ;;
  show) cmd_show "$@" ;;
  *) usage_err "unknown command '$cmd'" ;;
esac
