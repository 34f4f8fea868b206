package azuritetest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/batchd/batchd/datastores/azurite"
)

// TLSServer is an Azurite serving HTTPS with a throw-away certificate and
// checking bearer tokens (--oauth basic).
type TLSServer struct {
	*azurite.Server
	// HTTPClient trusts the certificate; it is an azcore policy.Transporter.
	HTTPClient *http.Client
}

// StartOAuth runs Azurite over HTTPS with OAuth on, for tests of the
// Entra-credential path to storage. Azurite checks a token's lifetime,
// issuer and audience but not its signature, so TokenCredential's unsigned
// tokens pass. Like Start, it fails the test when Azurite cannot start.
func StartOAuth(t testing.TB) *TLSServer {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile, pool := selfSigned(t, dir)
	s, err := azurite.Start(context.Background(), azurite.Options{CertFile: certFile, KeyFile: keyFile, OAuth: true})
	if err != nil {
		t.Fatalf("azurite (oauth): %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	t.Cleanup(tr.CloseIdleConnections)
	return &TLSServer{Server: s, HTTPClient: &http.Client{Transport: tr}}
}

// selfSigned writes a certificate for 127.0.0.1, ::1 and localhost.
func selfSigned(t testing.TB, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generate key: %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "azurite test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("create certificate: %v", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("marshal key: %v", err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// TokenCredential is a fake Microsoft Entra credential for Azurite's
// --oauth basic: GetToken returns an unsigned JWT with the given audience.
// It records the scopes it was asked for.
type TokenCredential struct {
	// Audience of the tokens; empty is https://storage.azure.com, which
	// Azurite accepts. Any other value makes Azurite refuse the token (403).
	Audience string

	mu     sync.Mutex
	scopes [][]string
}

// GetToken implements azcore.TokenCredential.
func (c *TokenCredential) GetToken(_ context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
	c.mu.Lock()
	c.scopes = append(c.scopes, opts.Scopes)
	c.mu.Unlock()
	aud := c.Audience
	if aud == "" {
		aud = "https://storage.azure.com"
	}
	now := time.Now()
	exp := now.Add(time.Hour)
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	tok := enc(map[string]string{"alg": "none", "typ": "JWT"}) + "." + enc(map[string]any{
		"aud": aud, "iss": "https://sts.windows.net/00000000-0000-0000-0000-000000000001/",
		"iat": now.Add(-time.Minute).Unix(), "nbf": now.Add(-time.Minute).Unix(), "exp": exp.Unix(),
		"oid": "00000000-0000-0000-0000-000000000002",
	}) + "."
	return azcore.AccessToken{Token: tok, ExpiresOn: exp}, nil
}

// Scopes returns the scopes of every GetToken call so far.
func (c *TokenCredential) Scopes() [][]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([][]string(nil), c.scopes...)
}
