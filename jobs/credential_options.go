package jobs

import "github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

// Credential kinds, the values of BATCHD_CREDENTIAL.
const (
	CredManagedIdentity   = "managed-identity"
	CredWorkloadIdentity  = "workload-identity"
	CredClientSecret      = "client-secret"
	CredClientCertificate = "client-certificate"
	CredAzureCLI          = "azure-cli"
	CredDefault           = "default"
)

// CredentialKinds lists the accepted BATCHD_CREDENTIAL values.
var CredentialKinds = []string{
	CredManagedIdentity, CredWorkloadIdentity, CredClientSecret,
	CredClientCertificate, CredAzureCLI, CredDefault,
}

// CredentialOptions choose and configure the process's one azidentity
// credential. The config package fills them from BATCHD_CREDENTIAL and the
// standard AZURE_* variables; this package reads no environment itself
// (azidentity's own fallbacks aside, for the "default" kind).
type CredentialOptions struct {
	Kind string
	// ClientID selects a user-assigned managed identity, or is the app id for
	// the service-principal and workload-identity kinds.
	ClientID            string
	TenantID            string
	ClientSecret        string // secret: never logged
	CertificatePath     string
	CertificatePassword string // secret: never logged
	FederatedTokenFile  string
	// AuthorityHost overrides the Entra authority (sovereign clouds, tests).
	AuthorityHost string
	// DisableInstanceDiscovery must be set for authorities MSAL does not know
	// (tests, some sovereign clouds).
	DisableInstanceDiscovery bool
	// Transport, when set, carries the credential's HTTP requests (tests use
	// the simulator's TLS client).
	Transport policy.Transporter
}
