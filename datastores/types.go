// Package datastores knows where a batch job's data lives and who can read
// it. It classifies input and output URIs, applies the data-access rule table
// of Azure ML batch endpoints (which credentials read the data, and what grants
// that access), and runs preflight checks against storage through azblob,
// producing a Decision that explains each verdict.
//
// The pieces, in the order a preflight uses them: Classify turns a URI into
// a Location (or a *URIError naming the offending part); ResolveDatastore
// maps an azureml:// datastore to its declared account and container; Rules
// and LookupRule are the data-access table; Checker.Check runs the checks
// (named by the Check* constants) and returns the Decision. Storage is the
// only way the package reaches a storage account.
//
// The package is a leaf: it imports no other batchd package. Configuration
// reaches it as plain values (Datastore, Account): it reads no files and no
// environment.
package datastores

import "time"

// Kind is the kind of storage a URI points at, in the terms of the rule table.
type Kind string

// The kinds of storage the rule table knows.
const (
	KindDatastore Kind = "datastore"  // azureml://datastores/... (short or long form)
	KindDataAsset Kind = "data_asset" // azureml://locations/.../data/... or its ARM id
	KindBlob      Kind = "azure_blob" // https://<acct>.blob.core.windows.net/..., wasbs://, Azurite
	KindADLSGen2  Kind = "adls_gen2"  // abfss://..., https://<acct>.dfs.core.windows.net/...
	KindADLSGen1  Kind = "adls_gen1"  // adl://<acct>.azuredatalakestore.net/...
	KindLiteral   Kind = "literal"    // a Literal input: no storage at all
)

// Datastore credential modes, as declared in the pipelines file.
const (
	CredentialsAccountKey = "account_key"
	CredentialsSAS        = "sas"
	CredentialsNone       = "none"
)

// Datastore kinds, as declared in the pipelines file.
const (
	DatastoreBlob     = "blob"
	DatastoreADLSGen2 = "adls_gen2"
	DatastoreADLSGen1 = "adls_gen1"
)

// Datastore is one Azure ML datastore as declared under `datastores:` in the
// pipelines file. Azure ML holds the real registration; batchd needs to know
// which storage it maps to and whether the workspace holds credentials for it.
type Datastore struct {
	Name        string `yaml:"-" json:"name"`
	Kind        string `yaml:"kind" json:"kind"`                                 // blob | adls_gen2 | adls_gen1
	Account     string `yaml:"account" json:"account"`                           // storage account name
	Container   string `yaml:"container,omitempty" json:"container,omitempty"`   // blob
	Filesystem  string `yaml:"filesystem,omitempty" json:"filesystem,omitempty"` // adls_gen2
	Credentials string `yaml:"credentials" json:"credentials"`                   // account_key | sas | none
}

// Account says how batchd itself reaches one storage account, for preflight
// checks and the storage poller. Accounts not configured are reached at their
// public endpoint with the daemon's Entra credential.
type Account struct {
	Name string
	// BlobEndpoint is the blob service URL, e.g.
	// https://acct.blob.core.windows.net/ or, for Azurite,
	// http://127.0.0.1:10000/devstoreaccount1/. Empty means the public cloud
	// endpoint of Name.
	BlobEndpoint string
	// Auth is "credential" (the daemon's Entra credential; the default),
	// "shared_key", "sas" or "anonymous".
	Auth string
	// Key is the account key for Auth "shared_key"; SAS the query string for
	// Auth "sas". Both are secrets: never logged, never put in a Decision.
	Key string
	SAS string
}

// IO is one job input or output to check.
type IO struct {
	Name  string `json:"name"`
	Type  string `json:"type"` // UriFile | UriFolder | MLTable | Literal
	URI   string `json:"uri,omitempty"`
	Value string `json:"value,omitempty"` // Literal inputs
}

// Deployment kinds: model deployments take exactly one UriFile/UriFolder
// input; pipeline-component deployments also take Literal inputs.
const (
	DeploymentModel    = "model"
	DeploymentPipeline = "pipeline"
)

// AllowList restricts where a pipeline's data may live. Empty lists allow
// everything of that kind. An event must not be able to point a job at
// arbitrary data, so pipelines whose URIs come from events should set it.
type AllowList struct {
	Accounts   []string `yaml:"accounts,omitempty" json:"accounts,omitempty"`
	Containers []string `yaml:"containers,omitempty" json:"containers,omitempty"`
	Datastores []string `yaml:"datastores,omitempty" json:"datastores,omitempty"`
	Prefixes   []string `yaml:"prefixes,omitempty" json:"prefixes,omitempty"`
}

// Request is one preflight check: the rendered inputs and outputs of a job.
type Request struct {
	Inputs     []IO      `json:"inputs"`
	Outputs    []IO      `json:"outputs,omitempty"`
	Deployment string    `json:"deployment_kind"` // DeploymentModel (default) | DeploymentPipeline
	Allow      AllowList `json:"allow,omitzero"`
}

// Result of one check.
type Result string

// The results of one check.
const (
	Pass Result = "pass"
	Fail Result = "fail"
	Warn Result = "warn" // could not be checked, or holds only if something outside batchd's view holds
)

// Verdict of a whole Decision.
type Verdict string

// The verdicts of a Decision.
const (
	Allow  Verdict = "allow"
	Reject Verdict = "reject"
)

// Access is one row of the data-access rule table applied to one input or
// output: which credentials the job will use to read (or write) it and what
// grants that access.
type Access struct {
	Name              string `json:"name"`
	Role              string `json:"role"` // input | output
	URI               string `json:"uri,omitempty"`
	Type              string `json:"type"`
	Kind              Kind   `json:"kind"`
	Datastore         string `json:"datastore,omitempty"`
	Account           string `json:"account,omitempty"`
	CredentialInStore string `json:"credential_in_store"` // yes | no | n/a | unknown (data assets: only Azure ML knows)
	CredentialsUsed   string `json:"credentials_used"`
	AccessGrantedBy   string `json:"access_granted_by"`
}

// Check is one preflight check and its outcome.
type Check struct {
	Name    string `json:"name"`              // a Check* constant, e.g. "input-exists", "output-absent", "allow-list"
	Subject string `json:"subject,omitempty"` // "inputs.<name>" or "outputs.<name>"; empty for checks of the whole request
	Result  Result `json:"result"`
	Reason  string `json:"reason"`
}

// Decision is the recorded, explainable outcome of a preflight.
type Decision struct {
	Access  []Access  `json:"access"`
	Checks  []Check   `json:"checks"`
	Verdict Verdict   `json:"verdict"`
	Reason  string    `json:"reason,omitempty"` // why it was rejected: the first failing check, "<name> <subject>: <reason>"
	At      time.Time `json:"at"`
}
