#!/usr/bin/env bash
# assign-roles.sh: give batchd's identity, and the compute cluster's, the
# Azure roles batchd's work needs. Idempotent: every role and assignment is
# looked up first and created only when missing; the custom roles are updated
# to the JSON files' actions on every run.
set -euo pipefail

prog=assign-roles.sh
usage() {
  cat <<'EOF'
Usage: assign-roles.sh --resource-group RG --workspace WS IDENTITY [options]

1. Creates (or updates) the custom role "batchd batch-endpoint invoker" from
   batchd-invoker-role.json (the 35 actions Azure ML lists for invoking batch
   endpoints), assignable in the workspace's resource group, and assigns it to
   batchd's identity on the workspace.
2. With --compute and --storage-account: gives the compute cluster's managed
   identity "Storage Blob Data Reader" on each storage account. Batch jobs
   read inputs given as blob URLs, or from datastores that hold no
   credentials, through that identity.
3. With --batchd-storage-reader: gives batchd's own identity "Storage Blob
   Data Reader" on the same accounts, for its preflight checks and the blob
   poller.
   With --minimal-role, "batchd batch-endpoint invoker (minimal)" from
   batchd-invoker-minimal-role.json instead: invoke, job read and cancel
   only (README.md in this directory: what it leaves out and the risk).
4. With --online-scorer: also creates "batchd online-endpoint scorer" from
   batchd-online-scorer-role.json and assigns it on the workspace.

IDENTITY, batchd's identity (exactly one):
  --vm NAME                the system-assigned identity of VM NAME
                           (in --vm-resource-group, default RG)
  --identity NAME          the user-assigned managed identity NAME
                           (in --identity-resource-group, default RG)
  --principal-id ID        any principal's object id (e.g. a service principal)

Options:
  --resource-group RG      the workspace's resource group (required)
  --workspace WS           the Azure ML workspace (required)
  --subscription ID        default: the az CLI's current subscription
  --compute NAME           the workspace compute cluster the deployments run on
  --compute-principal-id ID  its identity's object id, instead of looking it up
  --storage-account NAME   a storage account with job inputs; repeat the flag
                           for several (any resource group of the subscription)
  --batchd-storage-reader  see 3 above
  --online-scorer          see 4 above
  --minimal-role           see 1 above
  --role-name NAME         name of the invoker role (default "batchd
                           batch-endpoint invoker"); custom role names are unique
                           in a tenant, so a second subscription may need another
  -h, --help               this help

Environment: RESOURCE_GROUP, WORKSPACE, SUBSCRIPTION, VM, VM_RESOURCE_GROUP,
IDENTITY, IDENTITY_RESOURCE_GROUP, PRINCIPAL_ID, COMPUTE,
COMPUTE_PRINCIPAL_ID, STORAGE_ACCOUNTS (space-separated) stand in for the
flags.

Needs: az (logged in) with Owner or User Access Administrator on the
resource group and the storage accounts.
EOF
}

log() { printf '%s: %s\n' "$prog" "$*" >&2; }
die() {
  printf '%s: error: %s\n' "$prog" "$*" >&2
  exit 1
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
rg=${RESOURCE_GROUP:-}
ws=${WORKSPACE:-}
sub=${SUBSCRIPTION:-}
vm=${VM:-}
vm_rg=${VM_RESOURCE_GROUP:-}
identity=${IDENTITY:-}
identity_rg=${IDENTITY_RESOURCE_GROUP:-}
principal=${PRINCIPAL_ID:-}
compute=${COMPUTE:-}
compute_principal=${COMPUTE_PRINCIPAL_ID:-}
read -r -a accounts <<<"${STORAGE_ACCOUNTS:-}"
batchd_reader=no
online=no
role_name=""
minimal=no
scorer_role_name="batchd online-endpoint scorer"

while [[ $# -gt 0 ]]; do
  case $1 in
    --resource-group) rg=${2?--resource-group needs a value}; shift 2 ;;
    --workspace) ws=${2?--workspace needs a value}; shift 2 ;;
    --subscription) sub=${2?--subscription needs a value}; shift 2 ;;
    --vm) vm=${2?--vm needs a value}; shift 2 ;;
    --vm-resource-group) vm_rg=${2?--vm-resource-group needs a value}; shift 2 ;;
    --identity) identity=${2?--identity needs a value}; shift 2 ;;
    --identity-resource-group) identity_rg=${2?--identity-resource-group needs a value}; shift 2 ;;
    --principal-id) principal=${2?--principal-id needs a value}; shift 2 ;;
    --compute) compute=${2?--compute needs a value}; shift 2 ;;
    --compute-principal-id) compute_principal=${2?--compute-principal-id needs a value}; shift 2 ;;
    --storage-account) accounts+=("${2?--storage-account needs a value}"); shift 2 ;;
    --batchd-storage-reader) batchd_reader=yes; shift ;;
    --online-scorer) online=yes; shift ;;
    --minimal-role) minimal=yes; shift ;;
    --role-name) role_name=${2?--role-name needs a value}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

[[ -n $rg ]] || die "--resource-group is required (--help)"
[[ -n $ws ]] || die "--workspace is required (--help)"
n=0
for v in "$vm" "$identity" "$principal"; do
  if [[ -n $v ]]; then n=$((n + 1)); fi
done
[[ $n -eq 1 ]] || die "give exactly one of --vm, --identity, --principal-id"
[[ ${#accounts[@]} -eq 0 || -n $compute || -n $compute_principal || $batchd_reader == yes ]] ||
  die "--storage-account needs --compute (or --compute-principal-id) and/or --batchd-storage-reader"
[[ $batchd_reader == no || ${#accounts[@]} -gt 0 ]] || die "--batchd-storage-reader needs --storage-account"
[[ -z $compute && -z $compute_principal ]] || [[ ${#accounts[@]} -gt 0 ]] ||
  die "--compute needs at least one --storage-account"
# Names end up inside JSON and az queries: keep them to what Azure allows.
[[ $rg =~ ^[-A-Za-z0-9._()]+$ ]] || die "--resource-group $rg: not a resource group name"
role_template="$here/batchd-invoker-role.json"
if [[ $minimal == yes ]]; then
  role_template="$here/batchd-invoker-minimal-role.json"
  role_name=${role_name:-"batchd batch-endpoint invoker (minimal)"}
fi
role_name=${role_name:-"batchd batch-endpoint invoker"}
[[ $role_name =~ ^[-A-Za-z0-9._\ ()]+$ ]] || die "--role-name: letters, digits, spaces and -._() only"
command -v az >/dev/null || die "the Azure CLI (az) is not installed"

if [[ -z $sub ]]; then
  sub=$(az account show --query id -o tsv) || die "az account show failed: run az login"
fi
[[ $sub =~ ^[0-9a-fA-F-]{36}$ ]] || die "subscription $sub is not a GUID"
rg_scope="/subscriptions/$sub/resourceGroups/$rg"
ws_scope="$rg_scope/providers/Microsoft.MachineLearningServices/workspaces/$ws"

az resource show --ids "$ws_scope" --query id -o none ||
  die "workspace $ws not found in resource group $rg of subscription $sub"

# --- batchd's principal ----------------------------------------------------------

if [[ -n $vm ]]; then
  principal=$(az vm show --subscription "$sub" -g "${vm_rg:-$rg}" -n "$vm" --query identity.principalId -o tsv) ||
    die "VM $vm not found in resource group ${vm_rg:-$rg}"
  [[ -n $principal ]] || die "VM $vm has no system-assigned identity (use --identity for a user-assigned one): az vm identity assign -g ${vm_rg:-$rg} -n $vm"
  who="VM $vm (system-assigned identity)"
elif [[ -n $identity ]]; then
  principal=$(az identity show --subscription "$sub" -g "${identity_rg:-$rg}" -n "$identity" --query principalId -o tsv) ||
    die "managed identity $identity not found in resource group ${identity_rg:-$rg}"
  who="managed identity $identity"
else
  who="principal $principal"
fi
[[ $principal =~ ^[0-9a-fA-F-]{36}$ ]] || die "could not resolve the principal id of $who"
log "batchd's identity: $who, object id $principal"

# --- custom roles ----------------------------------------------------------------

# ensure_role TEMPLATE NAME: create the custom role NAME from TEMPLATE, or
# update an existing one to TEMPLATE's actions, keeping every assignable
# scope it already has and adding the resource group's.
ensure_role() {
  local template=$1 name=$2 existing scopes=() s rendered
  existing=$(az role definition list --subscription "$sub" --scope "$rg_scope" --custom-role-only true \
    --name "$name" --query "[0].assignableScopes[]" -o tsv) || die "listing role definitions failed"
  if [[ -z $existing ]]; then
    # Not assignable here; it may exist with other scopes in the subscription.
    existing=$(az role definition list --subscription "$sub" --custom-role-only true \
      --name "$name" --query "[0].assignableScopes[]" -o tsv) || die "listing role definitions failed"
  fi
  if [[ -n $existing ]]; then
    mapfile -t scopes <<<"$existing"
  fi
  local have=no
  for s in "${scopes[@]}"; do
    if [[ ${s,,} == "${rg_scope,,}" ]]; then have=yes; fi
  done
  if [[ $have == no ]]; then scopes+=("$rg_scope"); fi

  rendered=$(mktemp)
  tmp_files+=("$rendered")
  render_role "$template" "$name" "${scopes[@]}" >"$rendered"
  if [[ -z $existing ]]; then
    log "creating custom role \"$name\""
    az role definition create --subscription "$sub" --role-definition "$rendered" -o none ||
      die "creating role \"$name\" failed. If a role of that name exists in another subscription of the tenant, pass --role-name"
  else
    log "updating custom role \"$name\" (assignable scopes: ${#scopes[@]})"
    az role definition update --subscription "$sub" --role-definition "$rendered" -o none
  fi
}

# render_role TEMPLATE NAME SCOPE...: the template with its Name and its
# placeholder assignable scope replaced.
render_role() {
  local template=$1 name=$2 list="" s
  shift 2
  for s in "$@"; do
    list+="${list:+,$'\n'}    \"$s\""
  done
  ROLE_NAME=$name SCOPES=$list awk '
    index($0, "\"/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}\"") { print ENVIRON["SCOPES"]; next }
    index($0, "  \"Name\": ") == 1 { printf "  \"Name\": \"%s\",\n", ENVIRON["ROLE_NAME"]; next }
    { print }
  ' "$template"
}

# ensure_assignment PRINCIPAL ROLE SCOPE WHAT: assign ROLE at SCOPE unless
# the assignment exists. A role or identity created seconds ago may not have
# replicated yet, so creation is retried for about a minute.
ensure_assignment() {
  local principal=$1 role=$2 scope=$3 what=$4 count try
  count=$(az role assignment list --subscription "$sub" --assignee "$principal" --role "$role" \
    --scope "$scope" --query "length(@)" -o tsv 2>/dev/null || echo 0)
  if [[ $count != 0 ]]; then
    log "ok: $what already has \"$role\" on ${scope##*/}"
    return 0
  fi
  for try in 1 2 3 4 5 6; do
    if az role assignment create --subscription "$sub" --assignee-object-id "$principal" \
      --assignee-principal-type ServicePrincipal --role "$role" --scope "$scope" -o none; then
      log "assigned \"$role\" to $what on ${scope##*/}"
      return 0
    fi
    log "assignment not accepted yet (attempt $try of 6; role or identity still replicating?)"
    sleep 10
  done
  die "could not assign \"$role\" to $what on $scope"
}

tmp_files=()
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  if [[ ${#tmp_files[@]} -gt 0 ]]; then
    rm -f -- "${tmp_files[@]}"
  fi
}
trap cleanup EXIT

ensure_role "$role_template" "$role_name"
ensure_assignment "$principal" "$role_name" "$ws_scope" "$who"
if [[ $online == yes ]]; then
  ensure_role "$here/batchd-online-scorer-role.json" "$scorer_role_name"
  ensure_assignment "$principal" "$scorer_role_name" "$ws_scope" "$who"
fi

# --- data access -------------------------------------------------------------------

if [[ ${#accounts[@]} -eq 0 ]]; then
  log "done (no --storage-account: data access unchanged)"
  exit 0
fi

if [[ -n $compute && -z $compute_principal ]]; then
  compute_id="$ws_scope/computes/$compute"
  compute_principal=$(az resource show --ids "$compute_id" --query identity.principalId -o tsv) ||
    die "compute $compute not found in workspace $ws"
  if [[ -z $compute_principal ]]; then
    # Only user-assigned identities: the cluster uses the (first) one.
    compute_principal=$(az resource show --ids "$compute_id" \
      --query "values(identity.userAssignedIdentities)[0].principalId" -o tsv)
  fi
  [[ -n $compute_principal ]] ||
    die "compute $compute has no managed identity: assign one (Azure ML studio > Compute > $compute > Managed identity, or az ml compute update --identity-type SystemAssigned)"
fi

for account in "${accounts[@]}"; do
  account_id=$(az storage account show --subscription "$sub" -n "$account" --query id -o tsv) ||
    die "storage account $account not found in subscription $sub"
  if [[ -n $compute_principal ]]; then
    ensure_assignment "$compute_principal" "Storage Blob Data Reader" "$account_id" \
      "compute ${compute:-$compute_principal}"
  fi
  if [[ $batchd_reader == yes ]]; then
    ensure_assignment "$principal" "Storage Blob Data Reader" "$account_id" "$who"
  fi
done
log "done"
