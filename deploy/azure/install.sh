#!/usr/bin/env bash
# install.sh: install or upgrade batchd on this machine, as root. Idempotent:
# run it again with a new binary to upgrade, or unchanged to repair
# ownership and permissions. cloud-init.yaml runs it on first boot.
set -euo pipefail

prog=install.sh
usage() {
  cat <<'EOF'
Usage: sudo install.sh [--binary FILE | --url URL --sha256 HEX] [options]

Installs batchd as a systemd service:
  - the system user and group `batchd`;
  - /etc/batchd (0750 root:batchd) with batchd.env (0640), a generated Event
    Grid webhook secret in /etc/batchd/webhook-secret (0640), a generated API
    token in /etc/batchd/api-token (0640; the CLI reads it through
    BATCHD_API_TOKEN_FILE), and batchd.env.example listing every variable;
  - the binary as /usr/local/bin/batchd (the one it replaces is kept as
    /usr/local/bin/batchd.previous, for a rollback);
  - /etc/systemd/system/batchd.service, enabled.
When the pipelines file exists, it first runs `batchd check` with the new
binary as the service would; a failing check replaces nothing and exits 1.
Then it starts batchd, or restarts it if the binary or the unit changed.

Binary (without one, an installed binary is kept):
  --binary FILE       a batchd binary on this machine (e.g. from `make release`)
  --url URL           download it over HTTPS; --sha256 is then required
  --sha256 HEX        expected SHA-256 of the binary (checked for --binary too)

Options:
  --client-id ID      set AZURE_CLIENT_ID in batchd.env: the client id of the
                      user-assigned managed identity batchd should use
  --unit FILE         the unit to install (default: batchd.service beside this
                      script, else ../systemd/batchd.service)
  --env-example FILE  default: batchd.env.example beside this script, else
                      ../systemd/batchd.env.example
  --no-webhook-secret do not generate /etc/batchd/webhook-secret
  --no-api-token      do not generate /etc/batchd/api-token (the API then
                      trusts every local process; web pages are still refused)
  --no-start          install only; do not check, start or restart
  -h, --help          this help

Environment: BATCHD_BINARY, BATCHD_BINARY_URL, BATCHD_BINARY_SHA256 and
AZURE_CLIENT_ID stand in for --binary, --url, --sha256 and --client-id.
Empty values, and unreplaced cloud-init placeholders (@@...@@), mean unset.
EOF
}

log() { printf '%s: %s\n' "$prog" "$*" >&2; }
die() {
  printf '%s: error: %s\n' "$prog" "$*" >&2
  exit 1
}

prefix=/usr/local/bin
conf_dir=/etc/batchd
env_file=$conf_dir/batchd.env
secret_file=$conf_dir/webhook-secret
token_file=$conf_dir/api-token
unit_path=/etc/systemd/system/batchd.service
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

binary=${BATCHD_BINARY:-}
url=${BATCHD_BINARY_URL:-}
sha256=${BATCHD_BINARY_SHA256:-}
client_id=${AZURE_CLIENT_ID:-}
unit_src=""
env_example_src=""
make_secret=yes
make_token=yes
start=yes

while [[ $# -gt 0 ]]; do
  case $1 in
  --binary) binary=${2?--binary needs a value}; shift 2 ;;
  --url) url=${2?--url needs a value}; shift 2 ;;
  --sha256) sha256=${2?--sha256 needs a value}; shift 2 ;;
  --client-id) client_id=${2?--client-id needs a value}; shift 2 ;;
  --unit) unit_src=${2?--unit needs a value}; shift 2 ;;
  --env-example) env_example_src=${2?--env-example needs a value}; shift 2 ;;
  --no-webhook-secret) make_secret=no; shift ;;
  --no-api-token) make_token=no; shift ;;
  --no-start) start=no; shift ;;
  -h | --help) usage; exit 0 ;;
  *) usage >&2; die "unknown argument: $1" ;;
  esac
done

# cloud-init.yaml carries @@NAME@@ placeholders that create-vm.sh replaces;
# used as they are (e.g. pasted into the portal), they mean "not given".
unplaceholder() {
  if [[ $1 == @@*@@ ]]; then
    printf ''
  else
    printf '%s' "$1"
  fi
}
url=$(unplaceholder "$url")
sha256=$(unplaceholder "$sha256")
client_id=$(unplaceholder "$client_id")

first_of() {
  local f
  for f in "$@"; do
    if [[ -f $f ]]; then
      printf '%s' "$f"
      return 0
    fi
  done
  return 1
}
[[ -n $unit_src ]] || unit_src=$(first_of "$here/batchd.service" "$here/../systemd/batchd.service") ||
  die "batchd.service not found beside this script or in ../systemd; pass --unit"
[[ -n $env_example_src ]] || env_example_src=$(first_of "$here/batchd.env.example" "$here/../systemd/batchd.env.example") ||
  die "batchd.env.example not found beside this script or in ../systemd; pass --env-example"
[[ -f $unit_src ]] || die "--unit $unit_src: no such file"
[[ -f $env_example_src ]] || die "--env-example $env_example_src: no such file"

[[ -z $binary || -z $url ]] || die "give --binary or --url, not both"
[[ -z $url || -n $sha256 ]] || die "--url needs --sha256 (the release's SHA256SUMS line)"
[[ -z $url || $url == https://* ]] || die "--url must be https://"
[[ -z $sha256 || $sha256 =~ ^[0-9a-fA-F]{64}$ ]] || die "--sha256 must be 64 hex digits"
[[ -z $client_id || $client_id =~ ^[0-9a-fA-F-]{36}$ ]] || die "--client-id must be a GUID"
[[ -z $binary || -f $binary ]] || die "--binary $binary: no such file"
[[ $EUID -eq 0 ]] || die "run as root (sudo)"
command -v systemctl >/dev/null || die "systemctl not found: this installs a systemd service"

tmp_files=()
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  if [[ ${#tmp_files[@]} -gt 0 ]]; then
    rm -f -- "${tmp_files[@]}"
  fi
}
trap cleanup EXIT

# --- user and directories -----------------------------------------------------

if ! getent group batchd >/dev/null; then
  groupadd --system batchd
  log "created group batchd"
fi
if ! getent passwd batchd >/dev/null; then
  nologin=$(command -v nologin || echo /bin/false)
  useradd --system --gid batchd --home-dir /var/lib/batchd --no-create-home \
    --shell "$nologin" --comment "batchd daemon" batchd
  log "created user batchd"
fi

mkdir -p "$conf_dir"
chown root:batchd "$conf_dir"
chmod 0750 "$conf_dir"

# set_env KEY VALUE: set KEY=VALUE in batchd.env, replacing an active line
# for KEY or appending one. Commented lines are left alone.
set_env() {
  local key=$1 value=$2 tmp
  tmp=$(mktemp "$conf_dir/.batchd.env.XXXXXX")
  tmp_files+=("$tmp")
  KEY=$key VALUE=$value awk '
    BEGIN { k = ENVIRON["KEY"]; v = ENVIRON["VALUE"]; done = 0 }
    index($0, k "=") == 1 { if (!done) print k "=" v; done = 1; next }
    { print }
    END { if (!done) print k "=" v }
  ' "$env_file" >"$tmp"
  chown root:batchd "$tmp"
  chmod 0640 "$tmp"
  mv -f "$tmp" "$env_file"
}
has_env() { grep -Eq "^$1=" "$env_file"; }

if [[ ! -f $env_file ]]; then
  (
    umask 027
    cat >"$env_file" <<'EOF'
# batchd environment (EnvironmentFile= of batchd.service), written by
# install.sh. batchd.env.example beside it lists every variable with its
# default; add here only what you change, then: sudo systemctl restart batchd
EOF
  )
  log "created $env_file"
fi
chown root:batchd "$env_file"
chmod 0640 "$env_file"
install -m 0640 -o root -g batchd "$env_example_src" "$conf_dir/batchd.env.example"

# secret_file_for MAKE VAR FILE WHAT: unless MAKE is "no" or batchd.env sets
# VAR or VAR_FILE, generate FILE (32 random bytes as 64 hex digits: URL-safe,
# for ?code=) if it is empty, and point VAR_FILE at it. FILE, when present,
# is 0640 root:batchd either way.
secret_file_for() {
  local make=$1 var=$2 file=$3 what=$4
  if [[ $make == yes ]] && ! has_env "$var" && ! has_env "${var}_FILE"; then
    if [[ ! -s $file ]]; then
      (
        umask 077
        od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$file"
      )
      log "generated $what in $file"
    fi
    set_env "${var}_FILE" "$file"
  fi
  if [[ -f $file ]]; then
    chown root:batchd "$file"
    chmod 0640 "$file"
  fi
}
secret_file_for "$make_secret" BATCHD_WEBHOOK_SECRET "$secret_file" "the Event Grid webhook secret"
secret_file_for "$make_token" BATCHD_API_TOKEN "$token_file" "the API token (CLI: export BATCHD_API_TOKEN_FILE=$token_file, as a member of group batchd)"
if [[ -n $client_id ]]; then
  set_env AZURE_CLIENT_ID "$client_id"
  log "AZURE_CLIENT_ID set in $env_file"
fi

# --- new binary (verified, not yet installed) --------------------------------

changed=no
new_bin=""
mkdir -p "$prefix"
if [[ -n $url || -n $binary ]]; then
  new_bin=$(mktemp "$prefix/.batchd.XXXXXX")
  tmp_files+=("$new_bin")
  if [[ -n $url ]]; then
    command -v curl >/dev/null || die "curl not found"
    log "downloading $url"
    curl -fsSL --proto '=https' --tlsv1.2 --retry 3 -o "$new_bin" "$url"
  else
    cp -- "$binary" "$new_bin"
  fi
  if [[ -n $sha256 ]]; then
    printf '%s  %s\n' "${sha256,,}" "$new_bin" | sha256sum -c --status ||
      die "SHA-256 mismatch: the binary is not the one expected"
  fi
  chmod 0755 "$new_bin"
  version=$("$new_bin" version) || die "the new binary does not run (wrong architecture?)"
  if [[ -f $prefix/batchd ]] && cmp -s "$new_bin" "$prefix/batchd"; then
    log "binary unchanged: $version"
    new_bin=""
  fi
elif [[ ! -x $prefix/batchd ]]; then
  log "no batchd binary yet: run again with --binary FILE or --url URL --sha256 HEX"
fi
candidate=${new_bin:-$prefix/batchd}

# --- check -------------------------------------------------------------------

pipelines=$(sed -n 's/^BATCHD_PIPELINES=//p' "$env_file" | tail -n 1)
pipelines=${pipelines:-/etc/batchd/pipelines.yaml}
can_start=no
if [[ $start == yes && -x $candidate && -f $pipelines ]]; then
  # Check as the service will run (its user, its environment file) with the
  # binary about to be installed, before anything is replaced: a failure
  # leaves the installed binary, the unit and the running service as they are.
  if ! systemd-run --quiet --pipe --wait --collect --uid=batchd --gid=batchd \
    -p EnvironmentFile="$env_file" "$candidate" check >/dev/null; then
    die "batchd check failed (problems above); nothing was replaced or restarted"
  fi
  can_start=yes
fi

# --- binary and unit -----------------------------------------------------------

if [[ -n $new_bin ]]; then
  if [[ -f $prefix/batchd ]]; then
    ln -f "$prefix/batchd" "$prefix/batchd.previous"
    log "previous binary kept as $prefix/batchd.previous"
  fi
  mv -f "$new_bin" "$prefix/batchd"
  changed=yes
  log "installed $prefix/batchd: $version"
fi
if [[ -f $unit_path ]] && cmp -s "$unit_src" "$unit_path"; then
  log "unit unchanged"
else
  install -m 0644 -o root -g root "$unit_src" "$unit_path"
  systemctl daemon-reload
  changed=yes
  log "installed $unit_path"
fi
if ! systemctl is-enabled --quiet batchd; then
  systemctl enable --quiet batchd
  log "enabled batchd.service"
fi

# --- (re)start -------------------------------------------------------------------

if [[ $start == no ]]; then
  log "--no-start: not started. Next: sudo systemctl start batchd"
  exit 0
fi
if [[ ! -x $prefix/batchd ]]; then
  exit 0
fi
if [[ $can_start == no ]]; then
  log "no pipelines file at $pipelines yet. Write it (deploy/pipelines.example.yaml),"
  log "  chgrp batchd $pipelines && chmod 0640 $pipelines, then run this again"
  exit 0
fi
if systemctl is-active --quiet batchd; then
  if [[ $changed == yes ]]; then
    log "restarting batchd (it drains for up to BATCHD_SHUTDOWN_GRACE)"
    systemctl restart batchd
  else
    log "batchd is running and nothing changed"
  fi
else
  systemctl reset-failed batchd 2>/dev/null || true
  systemctl start batchd
  log "started batchd"
fi
for _ in 1 2 3 4 5 6 7 8 9 10; do
  if systemctl is-active --quiet batchd; then
    log "batchd is active. Next: systemctl status batchd; journalctl -u batchd -f"
    exit 0
  fi
  sleep 1
done
die "batchd is not active: journalctl -u batchd -n 50"
