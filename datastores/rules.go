package datastores

// The data-access rule table of Azure ML batch endpoints ("Authorization on
// batch endpoints", section "Configure compute clusters for data access"):
// depending on where a job's data is, and whether the workspace holds
// credentials for it, the job reads it either with the datastore's
// credentials or with the job's identity plus the compute cluster's managed
// identity.

// Values of Rule.CredentialInStore and Access.CredentialInStore.
const (
	InStoreYes      = "yes"
	InStoreNo       = "no"
	InStoreNotApply = "n/a"
	// InStoreUnknown is used only in Access rows of data assets: which
	// datastore holds the asset, and whether it has credentials, is known
	// only to Azure ML.
	InStoreUnknown = "unknown"
)

// Values of Rule.CredentialsUsed, as the table words them.
const (
	CredentialsDatastore     = "Data store's credentials in the workspace"
	CredentialsJobAndCompute = "Identity of the job + Managed identity of the compute cluster"
)

// Values of Rule.AccessGrantedBy, as the table words them.
const (
	GrantedByKeyOrSAS     = "Access key or SAS"
	GrantedByRBAC         = "RBAC"
	GrantedByPOSIX        = "POSIX"
	GrantedByPOSIXAndRBAC = "POSIX and RBAC"
)

// Rule is one row of the data-access table.
type Rule struct {
	InputType         string `json:"input_type"` // the table's "Data input type" column
	Kind              Kind   `json:"kind"`
	CredentialInStore string `json:"credential_in_store"` // InStoreYes | InStoreNo | InStoreNotApply
	CredentialsUsed   string `json:"credentials_used"`
	AccessGrantedBy   string `json:"access_granted_by"`
}

// Rules is the table, row for row (the test compares it with the source
// text). Treat it as read-only.
var Rules = []Rule{
	{"Data store", KindDatastore, InStoreYes, CredentialsDatastore, GrantedByKeyOrSAS},
	{"Data asset", KindDataAsset, InStoreYes, CredentialsDatastore, GrantedByKeyOrSAS},
	{"Data store", KindDatastore, InStoreNo, CredentialsJobAndCompute, GrantedByRBAC},
	{"Data asset", KindDataAsset, InStoreNo, CredentialsJobAndCompute, GrantedByRBAC},
	{"Azure Blob Storage", KindBlob, InStoreNotApply, CredentialsJobAndCompute, GrantedByRBAC},
	{"Azure Data Lake Storage Gen1", KindADLSGen1, InStoreNotApply, CredentialsJobAndCompute, GrantedByPOSIX},
	{"Azure Data Lake Storage Gen2", KindADLSGen2, InStoreNotApply, CredentialsJobAndCompute, GrantedByPOSIXAndRBAC},
}

// LookupRule finds the row for kind and credentialInStore (InStoreYes or
// InStoreNo for datastores and data assets, InStoreNotApply for storage
// URLs). Literal inputs, unknown kinds and other combinations have no row.
func LookupRule(kind Kind, credentialInStore string) (Rule, bool) {
	for _, r := range Rules {
		if r.Kind == kind && r.CredentialInStore == credentialInStore {
			return r, true
		}
	}
	return Rule{}, false
}

// usesCompute says whether the job reads through its own identity and the
// compute cluster's managed identity (RBAC and/or POSIX ACLs), as opposed to
// credentials held by the workspace.
func (r Rule) usesCompute() bool { return r.CredentialsUsed == CredentialsJobAndCompute }

func (r Rule) needsRBAC() bool {
	return r.AccessGrantedBy == GrantedByRBAC || r.AccessGrantedBy == GrantedByPOSIXAndRBAC
}

func (r Rule) needsPOSIX() bool {
	return r.AccessGrantedBy == GrantedByPOSIX || r.AccessGrantedBy == GrantedByPOSIXAndRBAC
}
