package daemon

import (
	"context"
	"log/slog"
	"sync"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/batchd/batchd/config"
	"github.com/batchd/batchd/datastores"
	"github.com/batchd/batchd/jobs"
)

// NewStorageChecker builds the storage clients and the preflight checker the
// daemon and `batchd explain` share. cred may be nil: then only accounts
// configured under storage.accounts are reachable.
func NewStorageChecker(env *config.Env, f *config.File, cred azcore.TokenCredential, log *slog.Logger) (*datastores.Storage, *datastores.Checker) {
	st := datastores.NewStorage(datastores.StorageOptions{
		Accounts:   f.Accounts,
		Credential: cred,
		Scope:      env.StorageScope,
		Suffix:     env.StorageSuffix,
	})
	ck := datastores.NewChecker(datastores.CheckerOptions{
		Datastores: f.Datastores,
		Storage:    st,
		Logger:     log.With("component", "preflight"),
		Identity:   identityText(env.Credential),
	})
	return st, ck
}

// identityText names the process identity for messages; never a secret.
func identityText(o jobs.CredentialOptions) string {
	switch o.Kind {
	case jobs.CredManagedIdentity:
		if o.ClientID != "" {
			return "user-assigned managed identity (client id " + o.ClientID + ")"
		}
		return "the VM's system-assigned managed identity"
	case jobs.CredWorkloadIdentity:
		return "workload identity (client id " + o.ClientID + ")"
	case jobs.CredClientSecret, jobs.CredClientCertificate:
		return "service principal (client id " + o.ClientID + ")"
	case jobs.CredAzureCLI:
		return "the Azure CLI's signed-in account"
	}
	return "the daemon's Microsoft Entra credential"
}

// LazyCredential builds the real credential on first use. Commands that may
// never need a token (explain against configured accounts, check) then do
// not construct, or probe, a managed identity on a machine that has none.
type LazyCredential struct {
	opts jobs.CredentialOptions

	once sync.Once
	cred azcore.TokenCredential
	err  error
}

// NewLazyCredential returns a credential that builds the one opts describe
// on its first GetToken.
func NewLazyCredential(opts jobs.CredentialOptions) *LazyCredential {
	return &LazyCredential{opts: opts}
}

// GetToken builds the credential once, then asks it.
func (l *LazyCredential) GetToken(ctx context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	l.once.Do(func() { l.cred, l.err = jobs.NewCredential(l.opts) })
	if l.err != nil {
		return azcore.AccessToken{}, l.err
	}
	return l.cred.GetToken(ctx, o)
}
