#!/usr/bin/env bash
# create-eventgrid-subscription.sh: an Event Grid subscription that delivers
# a storage account's BlobCreated events (or, with --workspace, an Azure ML
# workspace's job events, for pushed completion) to batchd's webhook.
# Idempotent: an existing subscription is left alone unless --update is given.
#
# The webhook secret never appears on a command line, in output or in logs:
# it is read from a file (or the environment), written into a private
# temporary file, and handed to az as --endpoint @FILE. Do not add `set -x`.
set -euo pipefail

prog=create-eventgrid-subscription.sh
usage() {
  cat <<'EOF'
Usage: create-eventgrid-subscription.sh --storage-account ACCOUNT --container C
         --host HOST --secret-file FILE [options]
       create-eventgrid-subscription.sh --workspace WS --resource-group RG
         --host HOST --secret-file FILE [options]

Subscribes https://HOST/eventgrid?code=<secret> to Microsoft.Storage.BlobCreated
events of ACCOUNT, filtered to:
  subject begins with /blobServices/default/containers/C/blobs/PREFIX
  subject ends with   SUFFIX (when given)
  data.api in         PutBlob PutBlockList CopyBlob FlushWithClose
                      (fully written blobs only)
With --workspace, subscribes the same URL to the Azure ML workspace WS's
Microsoft.MachineLearningServices.RunStatusChanged and RunCompleted events
(pushed completion: batchd checks a job's status as soon as it changes, and
polls the jobs of a workspace that sends events only at a slow safety
interval). Only jobs of endpoints whose `workspace:` names WS are affected.
Creating the subscription needs contributor (or owner) rights on WS.

Creating the subscription makes Event Grid send a validation request to the
URL, so batchd must already be running and reachable over HTTPS there with a
publicly trusted certificate (docs/DEPLOY.md).

Required:
  --storage-account NAME  the storage account that emits the events
  --container C           the container batchd's blob trigger watches
  --host HOST             batchd's public HTTPS host name (e.g. the VM's
                          LABEL.<region>.cloudapp.azure.com)
  --secret-file FILE      file holding batchd's webhook secret (the content of
                          /etc/batchd/webhook-secret); or set
                          BATCHD_WEBHOOK_SECRET in the environment

Workspace form:
  --workspace WS          the Azure ML workspace whose job events batchd gets
  --resource-group RG     the workspace's resource group (required)

Options:
  --prefix P              blob name prefix inside the container (default: all)
  --suffix S              blob name suffix, e.g. .csv
  --name NAME             subscription name (default batchd-C, or
                          batchd-jobs-WS with --workspace)
  --path PATH             webhook path (default /eventgrid)
  --api "A B ..."         accepted data.api values
                          (default "PutBlob PutBlockList CopyBlob FlushWithClose")
  --max-delivery-attempts N   1-30 (default 30)
  --event-ttl MINUTES     1-1440 (default 1440)
  --deadletter-container D    dead-letter undeliverable events to container D
                          of the same account (created when missing; with
                          --workspace give --storage-account too). Without
                          it, Event Grid drops events it cannot deliver.
  --deadletter-endpoint ID    or any container's resource id
  --schema S              eventgrid (default) or cloudevents
  --update                re-apply these settings to an existing subscription
  --resource-group RG     the account's resource group (default: looked up)
                          or the workspace's
  --subscription ID       default: the az CLI's current subscription
  -h, --help              this help

Environment: STORAGE_ACCOUNT, CONTAINER, BLOB_PREFIX, BLOB_SUFFIX,
BATCHD_HOST, BATCHD_WEBHOOK_SECRET, SUBSCRIPTION stand in for the flags.
EOF
}

log() { printf '%s: %s\n' "$prog" "$*" >&2; }
die() {
  printf '%s: error: %s\n' "$prog" "$*" >&2
  exit 1
}

account=${STORAGE_ACCOUNT:-}
container=${CONTAINER:-}
prefix=${BLOB_PREFIX:-}
suffix=${BLOB_SUFFIX:-}
host=${BATCHD_HOST:-}
secret=${BATCHD_WEBHOOK_SECRET:-}
secret_file=""
name=""
path=/eventgrid
apis="PutBlob PutBlockList CopyBlob FlushWithClose"
max_attempts=30
ttl=1440
dl_container=""
dl_endpoint=""
schema=eventgrid
update=no
workspace=""
rg=""
sub=${SUBSCRIPTION:-}

while [[ $# -gt 0 ]]; do
  case $1 in
    --storage-account) account=${2?--storage-account needs a value}; shift 2 ;;
    --container) container=${2?--container needs a value}; shift 2 ;;
    --prefix) prefix=${2?--prefix needs a value}; shift 2 ;;
    --suffix) suffix=${2?--suffix needs a value}; shift 2 ;;
    --host) host=${2?--host needs a value}; shift 2 ;;
    --secret-file) secret_file=${2?--secret-file needs a value}; shift 2 ;;
    --name) name=${2?--name needs a value}; shift 2 ;;
    --path) path=${2?--path needs a value}; shift 2 ;;
    --api) apis=${2?--api needs a value}; shift 2 ;;
    --max-delivery-attempts) max_attempts=${2?--max-delivery-attempts needs a value}; shift 2 ;;
    --event-ttl) ttl=${2?--event-ttl needs a value}; shift 2 ;;
    --deadletter-container) dl_container=${2?--deadletter-container needs a value}; shift 2 ;;
    --deadletter-endpoint) dl_endpoint=${2?--deadletter-endpoint needs a value}; shift 2 ;;
    --schema) schema=${2?--schema needs a value}; shift 2 ;;
    --update) update=yes; shift ;;
    --workspace) workspace=${2?--workspace needs a value}; shift 2 ;;
    --resource-group) rg=${2?--resource-group needs a value}; shift 2 ;;
    --subscription) sub=${2?--subscription needs a value}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

if [[ -n $workspace ]]; then
  [[ -n $rg ]] || die "--workspace needs --resource-group (--help)"
  [[ -z $container && -z $prefix && -z $suffix ]] || die "--workspace takes no --container, --prefix or --suffix"
  [[ $workspace =~ ^[A-Za-z0-9][A-Za-z0-9_-]{2,32}$ ]] || die "--workspace $workspace: not a workspace name"
  [[ -z $dl_container || -n $account ]] || die "--deadletter-container with --workspace needs --storage-account for it"
else
  [[ -n $account ]] || die "--storage-account is required (--help)"
  [[ -n $container ]] || die "--container is required (--help)"
  [[ $container =~ ^[a-z0-9]([a-z0-9-]*[a-z0-9])?$ ]] || die "--container $container: not a container name"
fi
[[ -n $host ]] || die "--host is required (--help)"
[[ $host =~ ^[A-Za-z0-9.-]+(:[0-9]+)?$ ]] || die "--host $host: a host name (and port), no scheme or path"
[[ $path == /* && $path != *[?#[:space:]]* ]] || die "--path must start with / and hold no query"
in_range() { [[ $1 =~ ^[0-9]{1,5}$ ]] && (($1 >= $2 && $1 <= $3)); }
in_range "$max_attempts" 1 30 || die "--max-delivery-attempts must be 1-30"
in_range "$ttl" 1 1440 || die "--event-ttl must be 1-1440 minutes"
[[ -z $dl_container || -z $dl_endpoint ]] || die "give --deadletter-container or --deadletter-endpoint, not both"
[[ -z $dl_container || $dl_container =~ ^[a-z0-9]([a-z0-9-]*[a-z0-9])?$ ]] || die "--deadletter-container: not a container name"
case $schema in
  eventgrid) schema_arg=eventgridschema ;;
  cloudevents) schema_arg=cloudeventschemav1_0 ;;
  *) die "--schema must be eventgrid or cloudevents" ;;
esac
read -r -a api_list <<<"$apis"
[[ ${#api_list[@]} -gt 0 ]] || die "--api needs at least one value"
if [[ -z $name ]]; then
  if [[ -n $workspace ]]; then name="batchd-jobs-$workspace"; else name="batchd-$container"; fi
  name=${name//_/-}
  name=${name:0:64}
fi
[[ $name =~ ^[A-Za-z0-9-]{3,64}$ ]] || die "--name: 3-64 letters, digits and hyphens"

if [[ -n $secret_file ]]; then
  [[ -r $secret_file ]] || die "--secret-file $secret_file: cannot read it"
  secret=$(<"$secret_file")
fi
# Trim surrounding whitespace, as batchd does when it reads the file.
secret=${secret#"${secret%%[![:space:]]*}"}
secret=${secret%"${secret##*[![:space:]]}"}
[[ -n $secret ]] || die "no webhook secret: give --secret-file FILE or set BATCHD_WEBHOOK_SECRET"
# It travels in the query string: only URL-safe characters, so that it
# needs no encoding (install.sh generates 64 hex digits).
[[ $secret =~ ^[A-Za-z0-9._~-]{16,}$ ]] ||
  die "the webhook secret must be at least 16 URL-safe characters [A-Za-z0-9._~-] (e.g. openssl rand -hex 32)"
command -v az >/dev/null || die "the Azure CLI (az) is not installed"

if [[ -z $sub ]]; then
  sub=$(az account show --query id -o tsv) || die "az account show failed: run az login"
fi
azs=(--subscription "$sub")

account_id=""
if [[ -n $account ]]; then
  account_query=(-n "$account")
  if [[ -n $rg && -z $workspace ]]; then account_query+=(-g "$rg"); fi
  account_id=$(az storage account show "${azs[@]}" "${account_query[@]}" --query id -o tsv) ||
    die "storage account $account not found"
fi
# The resource whose events are subscribed: the account, or the workspace.
source_id=$account_id
if [[ -n $workspace ]]; then
  source_id=$(az resource show "${azs[@]}" -g "$rg" -n "$workspace" \
    --resource-type Microsoft.MachineLearningServices/workspaces --query id -o tsv) ||
    die "workspace $workspace not found in resource group $rg"
fi

state=$(az provider show "${azs[@]}" -n Microsoft.EventGrid --query registrationState -o tsv)
if [[ $state != Registered ]]; then
  log "registering the Microsoft.EventGrid resource provider (once per subscription)"
  az provider register "${azs[@]}" -n Microsoft.EventGrid --wait
fi

if [[ -n $dl_container ]]; then
  if az storage container-rm show "${azs[@]}" --storage-account "$account_id" -n "$dl_container" -o none 2>/dev/null; then
    log "dead-letter container $dl_container exists"
  else
    az storage container-rm create "${azs[@]}" --storage-account "$account_id" -n "$dl_container" -o none
    log "created dead-letter container $dl_container"
  fi
  dl_endpoint="$account_id/blobServices/default/containers/$dl_container"
fi

exists=no
if az eventgrid event-subscription show "${azs[@]}" --name "$name" --source-resource-id "$source_id" -o none 2>/dev/null; then
  exists=yes
fi
if [[ $exists == yes && $update == no ]]; then
  log "subscription $name exists; left as it is (--update re-applies these settings)"
else
  endpoint_file=$(mktemp)
  trap 'rm -f -- "$endpoint_file"' EXIT
  chmod 0600 "$endpoint_file"
  printf 'https://%s%s?code=%s\n' "$host" "$path" "$secret" >"$endpoint_file"

  args=(
    "${azs[@]}" --name "$name" --source-resource-id "$source_id"
    --endpoint-type webhook --endpoint "@$endpoint_file"
    --event-delivery-schema "$schema_arg"
    --max-delivery-attempts "$max_attempts" --event-ttl "$ttl"
    -o none
  )
  if [[ -n $workspace ]]; then
    # Job events only; every job of the workspace (batchd ignores the jobs
    # it did not submit, and counts them).
    args+=(--included-event-types Microsoft.MachineLearningServices.RunStatusChanged
      Microsoft.MachineLearningServices.RunCompleted)
  else
    args+=(--included-event-types Microsoft.Storage.BlobCreated
      --subject-begins-with "/blobServices/default/containers/$container/blobs/$prefix"
      --advanced-filter data.api StringIn "${api_list[@]}")
  fi
  if [[ -n $suffix ]]; then args+=(--subject-ends-with "$suffix"); fi
  if [[ -n $dl_endpoint ]]; then args+=(--deadletter-endpoint "$dl_endpoint"); fi
  if [[ $exists == yes ]]; then
    log "updating subscription $name (Event Grid validates the endpoint again)"
  else
    log "creating subscription $name (Event Grid validates the endpoint now)"
  fi
  # `create` is a create-or-replace (PUT), so it also applies --update.
  az eventgrid event-subscription create "${args[@]}" ||
    die "Event Grid refused the subscription. Is batchd reachable at https://$host$path with a trusted certificate? (journalctl -u batchd, and the proxy's log)"
fi

# The base URL Event Grid reports carries no query string, hence no secret.
az eventgrid event-subscription show "${azs[@]}" --name "$name" --source-resource-id "$source_id" \
  --query "{name:name, state:provisioningState, endpoint:destination.endpointBaseUrl, subjectBeginsWith:filter.subjectBeginsWith, subjectEndsWith:filter.subjectEndsWith, maxDeliveryAttempts:retryPolicy.maxDeliveryAttempts, eventTtlMinutes:retryPolicy.eventTimeToLiveInMinutes, deadLetter:deadLetterDestination.resourceId}" \
  -o table
if [[ -z $dl_endpoint ]]; then
  log "warning: no dead-letter destination: events Event Grid cannot deliver are dropped (--deadletter-container)"
fi
