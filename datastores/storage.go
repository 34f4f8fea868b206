package datastores

import (
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
)

// Account auth modes.
const (
	AuthCredential = "credential" // the daemon's Entra credential (RBAC); the default
	AuthSharedKey  = "shared_key"
	AuthSAS        = "sas"
	AuthAnonymous  = "anonymous"
)

// StorageOptions configure Storage.
type StorageOptions struct {
	// Accounts configured explicitly (Azurite, keys, SAS). Others are reached
	// at https://<name>.blob.<Suffix>/ with Credential.
	Accounts map[string]Account
	// Credential is the daemon's Entra credential; nil leaves only the
	// explicitly configured accounts reachable.
	Credential azcore.TokenCredential
	// Scope is the storage token scope (default https://storage.azure.com/.default).
	Scope string
	// Suffix is the storage DNS suffix (default core.windows.net).
	Suffix string
	// Transport carries the requests (tests); nil uses the default.
	Transport policy.Transporter
}

// Storage hands out azblob clients, one per account, reused. It is safe for
// concurrent use.
type Storage struct {
	opts StorageOptions

	mu      sync.Mutex
	clients map[string]*azblob.Client
}

// NewStorage returns a Storage; it connects to nothing until asked.
func NewStorage(opts StorageOptions) *Storage {
	if opts.Scope == "" {
		opts.Scope = "https://storage.azure.com/.default"
	}
	if opts.Suffix == "" {
		opts.Suffix = "core.windows.net"
	}
	return &Storage{opts: opts, clients: map[string]*azblob.Client{}}
}

// Endpoint is the blob service URL of account, with a trailing slash.
func (s *Storage) Endpoint(account string) string {
	if a, ok := s.opts.Accounts[account]; ok && a.BlobEndpoint != "" {
		return strings.TrimRight(a.BlobEndpoint, "/") + "/"
	}
	return "https://" + account + ".blob." + s.opts.Suffix + "/"
}

// Client returns the client for account. The error never holds a key or a
// SAS signature.
func (s *Storage) Client(account string) (*azblob.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.clients[account]; ok {
		return c, nil
	}
	c, err := s.newClient(account)
	if err != nil {
		return nil, fmt.Errorf("storage account %s: %w", account, err)
	}
	s.clients[account] = c
	return c, nil
}

func (s *Storage) newClient(account string) (*azblob.Client, error) {
	a, configured := s.opts.Accounts[account]
	auth := a.Auth
	if auth == "" {
		auth = AuthCredential
	}
	endpoint := s.Endpoint(account)
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("bad blob endpoint %q", endpoint)
	}
	opts := &azblob.ClientOptions{
		ClientOptions: policy.ClientOptions{
			Transport: s.opts.Transport,
			// Preflight checks and sweeps should fail fast rather than hang
			// for the SDK's default minute of retries.
			Retry: policy.RetryOptions{MaxRetries: 2, TryTimeout: 15 * time.Second, RetryDelay: 200 * time.Millisecond, MaxRetryDelay: 2 * time.Second},
			// Plain http is only ever Azurite on loopback.
			InsecureAllowCredentialWithHTTP: u.Scheme == "http",
		},
		Audience: strings.TrimSuffix(s.opts.Scope, "/.default"),
	}
	switch auth {
	case AuthCredential:
		if s.opts.Credential == nil {
			return nil, fmt.Errorf("no credential for account (configured: %t)", configured)
		}
		return azblob.NewClient(endpoint, s.opts.Credential, opts)
	case AuthSharedKey:
		cred, err := azblob.NewSharedKeyCredential(account, a.Key)
		if err != nil {
			// The SDK's message may quote the key; say only what is wrong.
			return nil, fmt.Errorf("shared key is not valid base64")
		}
		return azblob.NewClientWithSharedKeyCredential(endpoint, cred, opts)
	case AuthSAS:
		return azblob.NewClientWithNoCredential(endpoint+"?"+strings.TrimPrefix(a.SAS, "?"), opts)
	case AuthAnonymous:
		return azblob.NewClientWithNoCredential(endpoint, opts)
	}
	return nil, fmt.Errorf("unknown auth %q", auth)
}
