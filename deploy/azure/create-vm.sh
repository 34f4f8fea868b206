#!/usr/bin/env bash
# create-vm.sh: a Linux VM for batchd with a managed identity, installed by
# cloud-init (cloud-init.yaml). Idempotent: the resource group, identity, VM
# and firewall rule are each looked up first and created only when missing.
set -euo pipefail

prog=create-vm.sh
usage() {
  cat <<'EOF'
Usage: create-vm.sh --resource-group RG --name VM [options]

Creates (when missing) the resource group, optionally a user-assigned
managed identity, and an Ubuntu VM with that identity (or a system-assigned
one) whose first boot runs cloud-init.yaml: the batchd user, /etc/batchd, the
systemd unit and, given --binary-url, the binary. Prints the identity's
object id for assign-roles.sh.

Options:
  --resource-group RG     resource group (created when missing; needs --location)
  --name VM               VM name
  --location LOC          Azure region, e.g. westeurope (default: the group's)
  --identity KIND         system (default) or user
  --identity-name NAME    user-assigned identity name (default: VM-identity)
  --size SIZE             default Standard_B2s
  --image URN             default Canonical:ubuntu-24_04-lts:server:latest
  --admin-user NAME       default azureuser
  --ssh-key FILE          public key (default: az --generate-ssh-keys, which
                          uses ~/.ssh/id_rsa.pub, creating it when missing)
  --dns-label LABEL       public DNS name LABEL.<region>.cloudapp.azure.com,
                          for the Event Grid webhook's TLS certificate
  --https                 open TCP 443 in the VM's network security group
                          (Event Grid delivers to https://<host>/eventgrid)
  --no-public-ip          no public IP (reach it through Bastion or a VPN; use
                          the blob poller, or a gateway, for Event Grid)
  --binary-url URL        https URL of a batchd linux binary for cloud-init
  --binary-sha256 HEX     its SHA-256 (required with --binary-url)
  --cloud-init FILE       default: cloud-init.yaml beside this script
  --subscription ID       default: the az CLI's current subscription
  -h, --help              this help

Environment: RESOURCE_GROUP, VM, LOCATION, IDENTITY_KIND, IDENTITY_NAME,
VM_SIZE, VM_IMAGE, ADMIN_USER, SSH_KEY, DNS_LABEL, BATCHD_BINARY_URL,
BATCHD_BINARY_SHA256, SUBSCRIPTION stand in for the flags.

Without --binary-url, copy a binary over later and run
/usr/local/lib/batchd-install/install.sh --binary FILE on the VM.
EOF
}

log() { printf '%s: %s\n' "$prog" "$*" >&2; }
die() {
  printf '%s: error: %s\n' "$prog" "$*" >&2
  exit 1
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
rg=${RESOURCE_GROUP:-}
vm=${VM:-}
location=${LOCATION:-}
identity_kind=${IDENTITY_KIND:-system}
identity_name=${IDENTITY_NAME:-}
size=${VM_SIZE:-Standard_B2s}
image=${VM_IMAGE:-Canonical:ubuntu-24_04-lts:server:latest}
admin_user=${ADMIN_USER:-azureuser}
ssh_key=${SSH_KEY:-}
dns_label=${DNS_LABEL:-}
binary_url=${BATCHD_BINARY_URL:-}
binary_sha256=${BATCHD_BINARY_SHA256:-}
sub=${SUBSCRIPTION:-}
cloud_init="$here/cloud-init.yaml"
https=no
public_ip=yes

while [[ $# -gt 0 ]]; do
  case $1 in
    --resource-group) rg=${2?--resource-group needs a value}; shift 2 ;;
    --name) vm=${2?--name needs a value}; shift 2 ;;
    --location) location=${2?--location needs a value}; shift 2 ;;
    --identity) identity_kind=${2?--identity needs a value}; shift 2 ;;
    --identity-name) identity_name=${2?--identity-name needs a value}; shift 2 ;;
    --size) size=${2?--size needs a value}; shift 2 ;;
    --image) image=${2?--image needs a value}; shift 2 ;;
    --admin-user) admin_user=${2?--admin-user needs a value}; shift 2 ;;
    --ssh-key) ssh_key=${2?--ssh-key needs a value}; shift 2 ;;
    --dns-label) dns_label=${2?--dns-label needs a value}; shift 2 ;;
    --https) https=yes; shift ;;
    --no-public-ip) public_ip=no; shift ;;
    --binary-url) binary_url=${2?--binary-url needs a value}; shift 2 ;;
    --binary-sha256) binary_sha256=${2?--binary-sha256 needs a value}; shift 2 ;;
    --cloud-init) cloud_init=${2?--cloud-init needs a value}; shift 2 ;;
    --subscription) sub=${2?--subscription needs a value}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

[[ -n $rg ]] || die "--resource-group is required (--help)"
[[ -n $vm ]] || die "--name is required (--help)"
[[ $identity_kind == system || $identity_kind == user ]] || die "--identity must be system or user"
if [[ $identity_kind == user ]]; then identity_name=${identity_name:-$vm-identity}; fi
[[ -f $cloud_init ]] || die "cloud-init file $cloud_init not found"
[[ -z $ssh_key || -f $ssh_key ]] || die "--ssh-key $ssh_key: no such file"
[[ -z $binary_url || -n $binary_sha256 ]] || die "--binary-url needs --binary-sha256"
# These go into cloud-init's YAML (inside double quotes): no quotes, spaces
# or backslashes.
[[ -z $binary_url || ($binary_url == https://* && $binary_url != *[[:space:]\"\\]*) ]] ||
  die "--binary-url must be an https:// URL without spaces or quotes"
[[ -z $binary_sha256 || $binary_sha256 =~ ^[0-9a-fA-F]{64}$ ]] || die "--binary-sha256 must be 64 hex digits"
[[ $public_ip == yes || -z $dns_label ]] || die "--dns-label needs a public IP"
[[ $public_ip == yes || $https == no ]] || die "--https needs a public IP"
command -v az >/dev/null || die "the Azure CLI (az) is not installed"

if [[ -z $sub ]]; then
  sub=$(az account show --query id -o tsv) || die "az account show failed: run az login"
fi
azs=(--subscription "$sub")

# --- resource group ----------------------------------------------------------------

if existing=$(az group show "${azs[@]}" -n "$rg" --query location -o tsv 2>/dev/null); then
  log "resource group $rg exists ($existing)"
  location=${location:-$existing}
else
  [[ -n $location ]] || die "resource group $rg does not exist: give --location to create it"
  az group create "${azs[@]}" -n "$rg" -l "$location" -o none
  log "created resource group $rg in $location"
fi

# --- identity ---------------------------------------------------------------------

client_id=""
identity_id=""
if [[ $identity_kind == user ]]; then
  if ! az identity show "${azs[@]}" -g "$rg" -n "$identity_name" -o none 2>/dev/null; then
    az identity create "${azs[@]}" -g "$rg" -n "$identity_name" -l "$location" -o none
    log "created user-assigned identity $identity_name"
  else
    log "user-assigned identity $identity_name exists"
  fi
  identity_id=$(az identity show "${azs[@]}" -g "$rg" -n "$identity_name" --query id -o tsv)
  client_id=$(az identity show "${azs[@]}" -g "$rg" -n "$identity_name" --query clientId -o tsv)
fi

# --- VM ------------------------------------------------------------------------------

if az vm show "${azs[@]}" -g "$rg" -n "$vm" -o none 2>/dev/null; then
  log "VM $vm exists; cloud-init is not re-run (use install.sh on the VM to upgrade)"
  # Make sure the identity is there.
  if [[ $identity_kind == system ]]; then
    type=$(az vm show "${azs[@]}" -g "$rg" -n "$vm" --query identity.type -o tsv)
    if [[ $type != *SystemAssigned* ]]; then
      az vm identity assign "${azs[@]}" -g "$rg" -n "$vm" -o none
      log "assigned a system-assigned identity to $vm"
    fi
  else
    assigned=$(az vm show "${azs[@]}" -g "$rg" -n "$vm" --query "identity.userAssignedIdentities" -o json)
    if ! grep -qiF -- "$identity_id" <<<"$assigned"; then
      az vm identity assign "${azs[@]}" -g "$rg" -n "$vm" --identities "$identity_id" -o none
      log "assigned identity $identity_name to $vm; set AZURE_CLIENT_ID=$client_id in /etc/batchd/batchd.env"
    fi
  fi
else
  # Fill cloud-init's placeholders. The file stays private: it is only
  # custom data, but there is no reason to leave it readable.
  rendered=$(mktemp)
  trap 'rm -f -- "$rendered"' EXIT
  content=$(<"$cloud_init")
  content=${content//@@BATCHD_BINARY_URL@@/"$binary_url"}
  content=${content//@@BATCHD_BINARY_SHA256@@/"$binary_sha256"}
  content=${content//@@AZURE_CLIENT_ID@@/"$client_id"}
  printf '%s\n' "$content" >"$rendered"

  args=(
    "${azs[@]}" -g "$rg" -n "$vm" -l "$location"
    --image "$image" --size "$size" --admin-username "$admin_user"
    --custom-data "$rendered" --tags app=batchd -o none
  )
  if [[ -n $ssh_key ]]; then
    args+=(--ssh-key-values "$ssh_key")
  else
    args+=(--generate-ssh-keys)
  fi
  if [[ $identity_kind == system ]]; then
    args+=(--assign-identity "[system]")
  else
    args+=(--assign-identity "$identity_id")
  fi
  if [[ $public_ip == yes ]]; then
    args+=(--public-ip-sku Standard)
    if [[ -n $dns_label ]]; then args+=(--public-ip-address-dns-name "$dns_label"); fi
  else
    args+=(--public-ip-address "" --nsg-rule NONE)
  fi
  log "creating VM $vm ($size, $image); this takes a few minutes"
  az vm create "${args[@]}"
  log "created VM $vm"
fi

# --- firewall ------------------------------------------------------------------------

if [[ $https == yes ]]; then
  if az network nsg rule show "${azs[@]}" -g "$rg" --nsg-name "${vm}NSG" -n open-port-443 -o none 2>/dev/null; then
    log "TCP 443 already open"
  else
    az vm open-port "${azs[@]}" -g "$rg" -n "$vm" --port 443 --priority 1010 -o none
    log "opened TCP 443"
  fi
fi

# --- summary -------------------------------------------------------------------------

if [[ $identity_kind == system ]]; then
  principal=$(az vm show "${azs[@]}" -g "$rg" -n "$vm" --query identity.principalId -o tsv)
  who=(--vm "$vm" --vm-resource-group "$rg")
else
  principal=$(az identity show "${azs[@]}" -g "$rg" -n "$identity_name" --query principalId -o tsv)
  who=(--identity "$identity_name" --identity-resource-group "$rg")
fi
fqdn=""
ip=""
if [[ $public_ip == yes ]]; then
  fqdn=$(az vm show "${azs[@]}" -d -g "$rg" -n "$vm" --query fqdns -o tsv)
  ip=$(az vm show "${azs[@]}" -d -g "$rg" -n "$vm" --query publicIps -o tsv)
fi
cat <<EOF

VM:                $vm (resource group $rg)
Identity:          $identity_kind-assigned, object id $principal${client_id:+, client id $client_id}
Public address:    ${fqdn:-${ip:-none}}

Next (docs/DEPLOY.md):
  $here/assign-roles.sh --resource-group <workspace RG> --workspace <WS> ${who[*]} \\
      --compute <cluster> --storage-account <account> --batchd-storage-reader
  ssh $admin_user@${fqdn:-${ip:-<vm>}} sudo cloud-init status --wait
EOF
