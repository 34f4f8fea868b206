package jobs_test

// Wiring tests: real azidentity credentials against the simulator's token
// endpoints. The managed identity tests set IDENTITY_ENDPOINT with t.Setenv,
// so they are not parallel, and each uses a fresh user-assigned client id:
// azidentity's managed identity token cache is process-wide.

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/jobstest"
)

// useAppServiceIdentity points azidentity's managed identity at the
// simulator (App Service protocol) and makes sure no other source, IMDS
// included, can be chosen.
func useAppServiceIdentity(t *testing.T, sim *jobstest.Sim) {
	t.Setenv("IDENTITY_ENDPOINT", sim.IdentityEndpoint())
	t.Setenv("IDENTITY_HEADER", sim.IdentityHeader())
	for _, v := range []string{"IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT", "AZURE_REGIONAL_AUTHORITY_NAME"} {
		t.Setenv(v, "")
	}
}

func TestManagedIdentityCredential(t *testing.T) {
	sim := jobstest.New(t, jobstest.Options{})
	useAppServiceIdentity(t, sim)
	clientID := uniqueID("uami")
	cred, err := jobs.NewCredential(jobs.CredentialOptions{Kind: jobs.CredManagedIdentity, ClientID: clientID, Transport: sim.HTTPClient()})
	if err != nil {
		t.Fatalf("NewCredential: %v", err)
	}
	var counted atomic.Int64
	h := newHarnessFor(t, sim, jobs.CountTokens(cred, func(string) { counted.Add(1) }))
	ep := sim.WorkspaceEndpoint("ep")
	for range 20 {
		j, err := h.submit(ep, oneInput())
		if err != nil {
			t.Fatalf("Submit: %v", err)
		}
		if _, err := h.get(ep, j.Name); err != nil {
			t.Fatalf("Get: %v", err)
		}
	}
	var got []jobstest.TokenRequest
	for _, r := range sim.TokenRequests() {
		got = append(got, jobstest.TokenRequest{Protocol: r.Protocol, ClientID: r.ClientID, Audience: r.Audience})
	}
	want := []jobstest.TokenRequest{
		{Protocol: "managed-identity", ClientID: clientID, Audience: jobstest.AudienceML},
		{Protocol: "managed-identity", ClientID: clientID, Audience: jobstest.AudienceARM},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("token requests for 20 submits and 20 gets (-want +got):\n%s", diff)
	}
	if counted.Load() != 2 {
		t.Errorf("CountTokens saw %d fetches, want 2", counted.Load())
	}
	if jobsSeen := sim.Jobs(); len(jobsSeen) != 20 || jobsSeen[0].CreatedBy != jobstest.ObjectID(clientID) {
		t.Errorf("jobs were not created by the user-assigned identity %s", clientID)
	}
}

func TestManagedIdentityFailures(t *testing.T) {
	tests := []struct {
		name     string
		clientID string
		setup    func(t *testing.T, sim *jobstest.Sim, clientID string)
		wantHint string
	}{
		{name: "user-assigned identity not attached", clientID: uniqueID("gone"),
			setup:    func(t *testing.T, sim *jobstest.Sim, id string) { sim.SetIdentityMissing(id, true) },
			wantHint: "managed identity not found: no user-assigned identity with client id"},
		{name: "no system-assigned identity", clientID: "",
			setup:    func(t *testing.T, sim *jobstest.Sim, _ string) { sim.SetIdentityMissing("", true) },
			wantHint: "no system-assigned identity"},
		{name: "identity endpoint refuses the header", clientID: uniqueID("hdr"),
			setup:    func(t *testing.T, _ *jobstest.Sim, _ string) { t.Setenv("IDENTITY_HEADER", "not-the-secret") },
			wantHint: "managed identity endpoint did not issue a token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sim := jobstest.New(t, jobstest.Options{})
			useAppServiceIdentity(t, sim)
			tt.setup(t, sim, tt.clientID)
			cred, err := jobs.NewCredential(jobs.CredentialOptions{Kind: jobs.CredManagedIdentity, ClientID: tt.clientID, Transport: sim.HTTPClient()})
			if err != nil {
				t.Fatalf("NewCredential: %v", err)
			}
			h := newHarnessFor(t, sim, cred)
			_, err = h.submit(sim.Endpoint("ep"), oneInput())
			var te *jobs.TokenError
			if !errors.As(err, &te) || !jobs.IsAuth(err) {
				t.Fatalf("err = %v, want a *TokenError (auth)", err)
			}
			if !strings.Contains(te.Hint, tt.wantHint) || (tt.clientID != "" && strings.Contains(tt.wantHint, "client id") && !strings.Contains(te.Hint, tt.clientID)) {
				t.Errorf("hint = %q, want it to contain %q", te.Hint, tt.wantHint)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err)
			}
			if n := sim.Count(jobstest.RouteCreate); n != 0 {
				t.Errorf("%d POSTs sent without a token", n)
			}
		})
	}
}

func TestClientSecretCredential(t *testing.T) {
	const tenant, app, secret = "11111111-1111-4111-8111-111111111111", "app-1", "s3cr3t-value-never-shown"
	sim := jobstest.New(t, jobstest.Options{Tenants: []string{tenant}, ClientSecrets: map[string]string{app: secret}})
	base := jobs.CredentialOptions{Kind: jobs.CredClientSecret, TenantID: tenant, ClientID: app, ClientSecret: secret,
		AuthorityHost: sim.AuthorityHost(), DisableInstanceDiscovery: true, Transport: sim.HTTPClient()}

	cred, err := jobs.NewCredential(base)
	if err != nil {
		t.Fatalf("NewCredential: %v", err)
	}
	h := newHarnessFor(t, sim, cred)
	for range 10 {
		if _, err := h.submit(sim.Endpoint("ep"), oneInput()); err != nil {
			t.Fatalf("Submit: %v", err)
		}
	}
	reqs := sim.TokenRequests()
	if len(reqs) != 1 || reqs[0].Protocol != "client-credentials" || reqs[0].Tenant != tenant || reqs[0].ClientID != app || reqs[0].Audience != jobstest.AudienceML {
		t.Errorf("token requests = %+v, want one client-credentials request for %s in %s", reqs, app, tenant)
	}

	tests := []struct {
		name     string
		mutate   func(*jobs.CredentialOptions)
		wantHint string
	}{
		{"wrong secret", func(o *jobs.CredentialOptions) { o.ClientSecret = "wrong-" + secret }, "client secret is wrong"},
		{"unknown application", func(o *jobs.CredentialOptions) { o.ClientID = "app-unknown" }, `application "app-unknown" was not found`},
		{"unknown tenant", func(o *jobs.CredentialOptions) { o.TenantID = "22222222-2222-4222-8222-222222222222" }, "was not found: check AZURE_TENANT_ID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := base
			tt.mutate(&opts)
			cred, err := jobs.NewCredential(opts)
			if err != nil {
				t.Fatalf("NewCredential: %v", err)
			}
			h := newHarnessFor(t, sim, cred)
			_, err = h.submit(sim.Endpoint("ep"), oneInput())
			var te *jobs.TokenError
			if !errors.As(err, &te) || !strings.Contains(te.Hint, tt.wantHint) {
				t.Fatalf("err = %v, want a *TokenError whose hint contains %q", err, tt.wantHint)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("the error shows the client secret: %v", err)
			}
		})
	}
}

// A loopback authority needs no DisableInstanceDiscovery: NewCredential
// turns instance discovery off for it (the simulator would see the request
// otherwise fail; the real login.microsoftonline.com is never asked).
func TestLoopbackAuthorityWithoutInstanceDiscovery(t *testing.T) {
	sim := jobstest.New(t, jobstest.Options{})
	cred, err := jobs.NewCredential(jobs.CredentialOptions{Kind: jobs.CredClientSecret, TenantID: "t-loop", ClientID: "app-loop",
		ClientSecret: "s", AuthorityHost: sim.AuthorityHost(), Transport: loopbackOnly{sim.HTTPClient()}})
	if err != nil {
		t.Fatalf("NewCredential: %v", err)
	}
	h := newHarnessFor(t, sim, cred)
	if _, err := h.submit(sim.Endpoint("ep"), oneInput()); err != nil {
		t.Fatalf("Submit: %v", err)
	}
}

func TestWorkloadIdentityCredential(t *testing.T) {
	sim := jobstest.New(t, jobstest.Options{})
	tokenFile := filepath.Join(t.TempDir(), "token")
	// The projected service account token: any JWT-shaped string will do for
	// the simulator, which does not check the federation.
	if err := os.WriteFile(tokenFile, []byte(sim.Token("api://AzureADTokenExchange", "k8s", "system:serviceaccount:batchd:batchd", time.Hour)), 0o600); err != nil {
		t.Fatal(err)
	}
	cred, err := jobs.NewCredential(jobs.CredentialOptions{Kind: jobs.CredWorkloadIdentity, TenantID: "t-wi", ClientID: "app-wi",
		FederatedTokenFile: tokenFile, AuthorityHost: sim.AuthorityHost(), DisableInstanceDiscovery: true, Transport: sim.HTTPClient()})
	if err != nil {
		t.Fatalf("NewCredential: %v", err)
	}
	h := newHarnessFor(t, sim, cred)
	if _, err := h.submit(sim.Endpoint("ep"), oneInput()); err != nil {
		t.Fatalf("Submit: %v", err)
	}
	if reqs := sim.TokenRequests(); len(reqs) != 1 || reqs[0].ClientID != "app-wi" || reqs[0].Tenant != "t-wi" {
		t.Errorf("token requests = %+v, want one for app-wi in t-wi", reqs)
	}
}

func TestClientCertificateCredential(t *testing.T) {
	sim := jobstest.New(t, jobstest.Options{})
	certFile := writeTestCert(t)
	cred, err := jobs.NewCredential(jobs.CredentialOptions{Kind: jobs.CredClientCertificate, TenantID: "t-cert", ClientID: "app-cert",
		CertificatePath: certFile, AuthorityHost: sim.AuthorityHost(), DisableInstanceDiscovery: true, Transport: sim.HTTPClient()})
	if err != nil {
		t.Fatalf("NewCredential: %v", err)
	}
	h := newHarnessFor(t, sim, cred)
	if _, err := h.submit(sim.Endpoint("ep"), oneInput()); err != nil {
		t.Fatalf("Submit: %v", err)
	}
	if reqs := sim.TokenRequests(); len(reqs) != 1 || reqs[0].ClientID != "app-cert" {
		t.Errorf("token requests = %+v, want one for app-cert", reqs)
	}
}

func TestNewCredentialErrors(t *testing.T) {
	const secret = "pa55word-never-shown"
	badCert := filepath.Join(t.TempDir(), "bad.pem")
	if err := os.WriteFile(badCert, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		opts jobs.CredentialOptions
		want string
	}{
		{"unknown kind", jobs.CredentialOptions{Kind: "magic"}, `"magic" is not one of managed-identity, workload-identity`},
		{"client secret without settings", jobs.CredentialOptions{Kind: jobs.CredClientSecret, ClientSecret: secret},
			"AZURE_TENANT_ID, AZURE_CLIENT_ID required"},
		{"certificate without path", jobs.CredentialOptions{Kind: jobs.CredClientCertificate, TenantID: "t", ClientID: "c"},
			"AZURE_CLIENT_CERTIFICATE_PATH required"},
		{"certificate file missing", jobs.CredentialOptions{Kind: jobs.CredClientCertificate, TenantID: "t", ClientID: "c",
			CertificatePath: "/nonexistent/cert.pem", CertificatePassword: secret}, "no such file"},
		{"certificate file unreadable as a certificate", jobs.CredentialOptions{Kind: jobs.CredClientCertificate, TenantID: "t", ClientID: "c",
			CertificatePath: badCert, CertificatePassword: secret}, "not a PEM or PKCS#12 certificate"},
		{"workload identity without token file", jobs.CredentialOptions{Kind: jobs.CredWorkloadIdentity, TenantID: "t", ClientID: "c"},
			"AZURE_FEDERATED_TOKEN_FILE required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := jobs.NewCredential(tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("the error shows a secret: %v", err)
			}
		})
	}
}

// writeTestCert writes a self-signed RSA certificate and its key, PEM, to a
// temporary file, as AZURE_CLIENT_CERTIFICATE_PATH expects.
func writeTestCert(t *testing.T) string {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "batchd-test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pemData := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})...)
	path := filepath.Join(t.TempDir(), "cert.pem")
	if err := os.WriteFile(path, pemData, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// tokenClaims through a real credential: the decoded claims, never the token.
func TestTokenClaims(t *testing.T) {
	sim := jobstest.New(t, jobstest.Options{})
	clientID := uniqueID("claims")
	c, err := jobs.TokenClaims(context.Background(), sim.Credential(clientID), jobs.DefaultMLScope)
	if err != nil {
		t.Fatalf("TokenClaims: %v", err)
	}
	want := jobs.Claims{Scope: jobs.DefaultMLScope, Audience: jobstest.AudienceML, ObjectID: jobstest.ObjectID(clientID), AppID: clientID, TenantID: sim.Tenant()}
	got := *c
	got.ExpiresAt = time.Time{}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("claims (-want +got):\n%s", diff)
	}
	if until := time.Until(c.ExpiresAt); until < 50*time.Minute || until > 61*time.Minute {
		t.Errorf("exp in %v, want about an hour", until)
	}
	opaque := credFunc(func() string { return "opaque-token" })
	if _, err := jobs.TokenClaims(context.Background(), opaque, jobs.DefaultMLScope); !errors.Is(err, jobs.ErrNotJWT) || strings.Contains(err.Error(), "opaque-token") {
		t.Errorf("opaque token: err = %v, want ErrNotJWT without the token", err)
	}
}
