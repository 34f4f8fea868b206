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
	// Retry overrides the retry policy; nil means 2 retries, 200 ms to 2 s
	// apart, 15 s per try: preflight checks and sweeps should fail fast
	// rather than hang for the SDK's default minute of retries.
	Retry *policy.RetryOptions
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
		return nil, fmt.Errorf("bad blob endpoint %q", redactURI(endpoint))
	}
	retry := policy.RetryOptions{MaxRetries: 2, TryTimeout: 15 * time.Second, RetryDelay: 200 * time.Millisecond, MaxRetryDelay: 2 * time.Second}
	if s.opts.Retry != nil {
		retry = *s.opts.Retry
	}
	opts := &azblob.ClientOptions{
		ClientOptions: policy.ClientOptions{
			Transport: s.opts.Transport,
			Retry:     retry,
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
		c, err := azblob.NewClientWithNoCredential(endpoint+"?"+strings.TrimPrefix(a.SAS, "?"), opts)
		if err != nil {
			// The SDK's message would quote the URL, SAS included.
			return nil, fmt.Errorf("blob endpoint %s with the configured SAS is not a valid URL", redactURI(endpoint))
		}
		return c, nil
	case AuthAnonymous:
		return azblob.NewClientWithNoCredential(endpoint, opts)
	}
	return nil, fmt.Errorf("unknown auth %q", auth)
}

// Configured reports whether account has an explicit blob endpoint in the
// storage configuration. The Checker reaches storage only through Storage:
// an explicit endpoint wins over whatever host a URL names (so that a
// production URL can be checked against Azurite), and an account without one
// is reached only at its public endpoint under Suffix.
func (s *Storage) Configured(account string) bool {
	a, ok := s.opts.Accounts[account]
	return ok && a.BlobEndpoint != ""
}

// AuthMode is how batchd authenticates to account: AuthCredential (the
// default), AuthSharedKey, AuthSAS or AuthAnonymous.
func (s *Storage) AuthMode(account string) string {
	if a, ok := s.opts.Accounts[account]; ok && a.Auth != "" {
		return a.Auth
	}
	return AuthCredential
}

// secrets lists every secret value in the configuration, in the forms it
// may take in text: account keys, SAS query strings, and each SAS signature
// raw, query-escaped and unescaped. Callers scrub text with them before it
// leaves the package.
func (s *Storage) secrets() []string {
	var out []string
	add := func(v string) {
		if len(v) >= 6 { // shorter strings are not secrets and would mangle text
			out = append(out, v)
		}
	}
	for _, a := range s.opts.Accounts {
		add(a.Key)
		sasq := strings.TrimPrefix(a.SAS, "?")
		add(sasq)
		q, err := url.ParseQuery(sasq)
		if err != nil {
			continue
		}
		for _, sig := range q["sig"] {
			add(sig)
			add(url.QueryEscape(sig))
		}
		for _, part := range strings.Split(sasq, "&") {
			if v, ok := strings.CutPrefix(part, "sig="); ok {
				add(v)
			}
		}
	}
	return out
}
