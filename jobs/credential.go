package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
)

// NewCredential builds the process's one credential of the kind opts.Kind.
// Every kind except "default" is an explicit azidentity constructor fed only
// from opts, so the settings that matter are the ones batchd's config shows.
// Errors name the missing or bad setting and never contain a secret.
//
// The returned credential wraps every GetToken failure in a *TokenError that
// says what probably went wrong (identity not found, wrong tenant, ...).
func NewCredential(opts CredentialOptions) (azcore.TokenCredential, error) {
	co := azcore.ClientOptions{Transport: opts.Transport}
	if opts.AuthorityHost != "" {
		host := opts.AuthorityHost
		if !strings.HasSuffix(host, "/") {
			host += "/"
		}
		co.Cloud = cloud.Configuration{ActiveDirectoryAuthorityHost: host}
		// MSAL validates an authority it does not know by asking
		// login.microsoftonline.com. For a loopback authority (batchd-dev, the
		// simulator) that question leaves the machine for nothing; the
		// operator named the host explicitly.
		if u, err := url.Parse(host); err == nil && isLoopback(u.Hostname()) {
			opts.DisableInstanceDiscovery = true
		}
	}
	var missing []string
	need := func(v, name string) {
		if v == "" {
			missing = append(missing, name)
		}
	}
	switch opts.Kind {
	case CredClientSecret:
		need(opts.TenantID, "AZURE_TENANT_ID")
		need(opts.ClientID, "AZURE_CLIENT_ID")
		need(opts.ClientSecret, "AZURE_CLIENT_SECRET")
	case CredClientCertificate:
		need(opts.TenantID, "AZURE_TENANT_ID")
		need(opts.ClientID, "AZURE_CLIENT_ID")
		need(opts.CertificatePath, "AZURE_CLIENT_CERTIFICATE_PATH")
	case CredWorkloadIdentity:
		need(opts.TenantID, "AZURE_TENANT_ID")
		need(opts.ClientID, "AZURE_CLIENT_ID")
		need(opts.FederatedTokenFile, "AZURE_FEDERATED_TOKEN_FILE")
	case CredManagedIdentity, CredAzureCLI, CredDefault:
	default:
		return nil, fmt.Errorf("credential kind %q is not one of %s", opts.Kind, strings.Join(CredentialKinds, ", "))
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("credential %s: %s required", opts.Kind, strings.Join(missing, ", "))
	}

	var (
		cred azcore.TokenCredential
		err  error
	)
	switch opts.Kind {
	case CredManagedIdentity:
		mo := &azidentity.ManagedIdentityCredentialOptions{ClientOptions: co}
		if opts.ClientID != "" {
			mo.ID = azidentity.ClientID(opts.ClientID)
		}
		cred, err = azidentity.NewManagedIdentityCredential(mo)
	case CredWorkloadIdentity:
		cred, err = azidentity.NewWorkloadIdentityCredential(&azidentity.WorkloadIdentityCredentialOptions{
			ClientOptions:            co,
			ClientID:                 opts.ClientID,
			TenantID:                 opts.TenantID,
			TokenFilePath:            opts.FederatedTokenFile,
			DisableInstanceDiscovery: opts.DisableInstanceDiscovery,
		})
	case CredClientSecret:
		cred, err = azidentity.NewClientSecretCredential(opts.TenantID, opts.ClientID, opts.ClientSecret,
			&azidentity.ClientSecretCredentialOptions{ClientOptions: co, DisableInstanceDiscovery: opts.DisableInstanceDiscovery})
	case CredClientCertificate:
		data, rerr := os.ReadFile(opts.CertificatePath)
		if rerr != nil {
			return nil, fmt.Errorf("credential %s: AZURE_CLIENT_CERTIFICATE_PATH: %w", opts.Kind, rerr)
		}
		certs, key, perr := azidentity.ParseCertificates(data, []byte(opts.CertificatePassword))
		if perr != nil {
			// The parse error says nothing secret, but keep the password out
			// of the picture entirely: name the file and the likely causes.
			return nil, fmt.Errorf("credential %s: AZURE_CLIENT_CERTIFICATE_PATH %s: not a PEM or PKCS#12 certificate with its private key, or AZURE_CLIENT_CERTIFICATE_PASSWORD is wrong", opts.Kind, opts.CertificatePath)
		}
		cred, err = azidentity.NewClientCertificateCredential(opts.TenantID, opts.ClientID, certs, key,
			&azidentity.ClientCertificateCredentialOptions{ClientOptions: co, DisableInstanceDiscovery: opts.DisableInstanceDiscovery})
	case CredAzureCLI:
		cred, err = azidentity.NewAzureCLICredential(&azidentity.AzureCLICredentialOptions{TenantID: opts.TenantID})
	case CredDefault:
		cred, err = azidentity.NewDefaultAzureCredential(&azidentity.DefaultAzureCredentialOptions{
			ClientOptions:            co,
			TenantID:                 opts.TenantID,
			DisableInstanceDiscovery: opts.DisableInstanceDiscovery,
		})
	}
	if err != nil {
		return nil, fmt.Errorf("credential %s: %s", opts.Kind, oneLine(err.Error(), 300))
	}
	return &kindCredential{kind: opts.Kind, clientID: opts.ClientID, tenantID: opts.TenantID, cred: cred}, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// kindCredential remembers the kind and ids a credential was built from, so
// that a failure can be explained in batchd's terms.
type kindCredential struct {
	kind, clientID, tenantID string
	cred                     azcore.TokenCredential
}

func (k *kindCredential) GetToken(ctx context.Context, tro policy.TokenRequestOptions) (azcore.AccessToken, error) {
	tk, err := k.cred.GetToken(ctx, tro)
	if err != nil {
		return tk, newTokenError(k.kind, k.clientID, k.tenantID, tro.Scopes, err)
	}
	return tk, nil
}

// TokenError is a failure to get a token. The request that needed the token
// was not sent. Its message says what likely went wrong; it never holds a
// token or a secret (service text is redacted and cut to one line).
type TokenError struct {
	Kind   string // credential kind, when known
	Scope  string
	Hint   string // likely cause, in batchd's terms
	Detail string // one line from the identity service, redacted
	Err    error
}

func (e *TokenError) Error() string {
	var b strings.Builder
	b.WriteString("get token for " + e.Scope)
	if e.Kind != "" {
		b.WriteString(" (" + e.Kind + ")")
	}
	if e.Hint != "" {
		b.WriteString(": " + e.Hint)
	}
	if e.Detail != "" {
		b.WriteString(": " + e.Detail)
	}
	return b.String()
}

func (e *TokenError) Unwrap() error { return e.Err }

func newTokenError(kind, clientID, tenantID string, scopes []string, err error) error {
	var te *TokenError
	if errors.As(err, &te) {
		return err
	}
	status, detail := identityDetail(err)
	return &TokenError{
		Kind:   kind,
		Scope:  strings.Join(scopes, " "),
		Hint:   tokenHint(kind, clientID, tenantID, status, detail, err),
		Detail: detail,
		Err:    err,
	}
}

// identityDetail extracts the identity service's status and message from an
// azidentity error, as one redacted line. azidentity's own message embeds
// the whole response body over many lines; batchd shows only what helps.
func identityDetail(err error) (int, string) {
	var afe *azidentity.AuthenticationFailedError
	if errors.As(err, &afe) && afe.RawResponse != nil {
		status := afe.RawResponse.StatusCode
		body, _ := runtime.Payload(afe.RawResponse)
		var m struct {
			Error       json.RawMessage `json:"error"`
			Description string          `json:"error_description"`
			Message     string          `json:"message"`
		}
		msg := ""
		if json.Unmarshal(body, &m) == nil {
			var code string
			if json.Unmarshal(m.Error, &code) != nil {
				var obj struct{ Code, Message string }
				if json.Unmarshal(m.Error, &obj) == nil {
					code, msg = obj.Code, obj.Message
				}
			}
			switch {
			case m.Description != "":
				msg = m.Description
			case m.Message != "":
				msg = m.Message
			}
			if code != "" {
				msg = code + ": " + msg
			}
		} else {
			msg = string(body)
		}
		return status, fmt.Sprintf("%d %s", status, oneLine(msg, 240))
	}
	return 0, oneLine(err.Error(), 300)
}

// tokenHint maps an identity failure to its likely cause. The AADSTS codes
// are Microsoft Entra's documented error codes.
func tokenHint(kind, clientID, tenantID string, status int, detail string, err error) string {
	d := strings.ToLower(detail + " " + err.Error())
	has := func(subs ...string) bool {
		return slices.ContainsFunc(subs, func(s string) bool { return strings.Contains(d, strings.ToLower(s)) })
	}
	switch {
	case isContextErr(err) && !has("aadsts"):
		return "the token request did not finish in time"
	case has("AADSTS90002", "AADSTS900023", "AADSTS90072"):
		return fmt.Sprintf("tenant %q was not found: check AZURE_TENANT_ID", tenantID)
	case has("AADSTS700016"):
		return fmt.Sprintf("application %q was not found in tenant %q: wrong AZURE_CLIENT_ID or wrong AZURE_TENANT_ID", clientID, tenantID)
	case has("AADSTS7000215", "AADSTS7000222", "AADSTS7000216"):
		return "the client secret is wrong or expired: check AZURE_CLIENT_SECRET"
	case has("AADSTS700027", "AADSTS700023", "AADSTS700024"):
		return "the client certificate is not registered for the application or is invalid: check AZURE_CLIENT_CERTIFICATE_PATH"
	case has("AADSTS70021", "AADSTS700211", "AADSTS700212", "AADSTS700213"):
		return "no federated identity credential of the application matches the service account token (issuer/subject): check the workload identity federation"
	case has("unable to resolve an endpoint", "authority"):
		return "the Microsoft Entra authority could not be reached or did not answer as expected: check AZURE_AUTHORITY_HOST and the network path to it"
	case has("AADSTS500011"):
		return "the scope's resource is unknown in this tenant: check BATCHD_ML_SCOPE / BATCHD_ARM_SCOPE (sovereign clouds use other audiences)"
	}
	switch kind {
	case CredManagedIdentity:
		switch {
		case has("identity not found", "no managed identity found", "isn't assigned", "not assigned"):
			if clientID != "" {
				return fmt.Sprintf("managed identity not found: no user-assigned identity with client id %q (AZURE_CLIENT_ID) is attached to this machine", clientID)
			}
			return "managed identity not found: this machine has no system-assigned identity; attach one or set AZURE_CLIENT_ID to a user-assigned identity"
		case status == http.StatusBadRequest:
			if clientID != "" {
				return fmt.Sprintf("the managed identity endpoint refused the request: check that the identity with client id %q (AZURE_CLIENT_ID) is attached to this machine", clientID)
			}
			return "the managed identity endpoint refused the request: check that this machine has a managed identity"
		case status == 0 && has("connect", "no response", "timeout", "unreachable", "refused", "no such host"):
			return "no managed identity endpoint answered: not an Azure VM/App Service with a managed identity? Choose another BATCHD_CREDENTIAL"
		}
		return "the managed identity endpoint did not issue a token"
	case CredAzureCLI:
		if has("az login", "not logged in", "please run") {
			return "the Azure CLI is not logged in: run az login"
		}
		if has("not found", "executable") {
			return "the Azure CLI (az) is not installed or not on PATH"
		}
		return "the Azure CLI did not return a token"
	case CredWorkloadIdentity:
		if has("no such file", "token file") {
			return "the service account token file (AZURE_FEDERATED_TOKEN_FILE) cannot be read"
		}
	case CredDefault:
		return "no credential of DefaultAzureCredential's chain produced a token: set BATCHD_CREDENTIAL to the kind you mean"
	}
	if status == http.StatusUnauthorized || status == http.StatusBadRequest {
		return "Microsoft Entra refused the credentials: check AZURE_TENANT_ID, AZURE_CLIENT_ID and the secret or certificate"
	}
	return "the identity service did not issue a token"
}

// CountTokens wraps cred so that onFetch(scope) runs after every successful
// GetToken. The client's bearer policies cache tokens and call GetToken only
// to fetch or refresh one, so the count is the number of real fetches (the
// daemon exports it as a metric). onFetch must be safe for concurrent use.
func CountTokens(cred azcore.TokenCredential, onFetch func(scope string)) azcore.TokenCredential {
	return &countingCredential{cred: cred, onFetch: onFetch}
}

type countingCredential struct {
	cred    azcore.TokenCredential
	onFetch func(string)
}

func (c *countingCredential) GetToken(ctx context.Context, tro policy.TokenRequestOptions) (azcore.AccessToken, error) {
	tk, err := c.cred.GetToken(ctx, tro)
	if err == nil && c.onFetch != nil {
		c.onFetch(strings.Join(tro.Scopes, " "))
	}
	return tk, err
}

// guardCredential makes sure any credential's failure reaches the caller as
// a *TokenError, whatever built the credential.
type guardCredential struct{ cred azcore.TokenCredential }

func (g guardCredential) GetToken(ctx context.Context, tro policy.TokenRequestOptions) (azcore.AccessToken, error) {
	tk, err := g.cred.GetToken(ctx, tro)
	if err != nil {
		return tk, newTokenError("", "", "", tro.Scopes, err)
	}
	return tk, nil
}
