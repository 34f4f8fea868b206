package jobs

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

// Claims are the claims of an access token that say who batchd is and for
// what: enough to debug "which identity, which tenant, which audience"
// without ever showing the token itself.
type Claims struct {
	Scope     string    `json:"scope"` // the scope that was requested
	Audience  string    `json:"aud"`
	ObjectID  string    `json:"oid,omitempty"`
	AppID     string    `json:"appid,omitempty"` // appid (v1 tokens) or azp (v2)
	TenantID  string    `json:"tid,omitempty"`
	ExpiresAt time.Time `json:"exp"`
}

// ErrNotJWT means the token is opaque, so its claims cannot be shown.
var ErrNotJWT = errors.New("the token is not a JWT; its claims cannot be decoded")

// TokenClaims gets a token for scope from cred and returns its decoded
// claims. The token's signature is not checked (it is not ours to check);
// the token itself never leaves this function.
func TokenClaims(ctx context.Context, cred azcore.TokenCredential, scope string) (*Claims, error) {
	tk, err := guardCredential{cred}.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{scope}})
	if err != nil {
		return nil, err
	}
	c, err := decodeClaims(tk.Token)
	if err != nil {
		return nil, err
	}
	c.Scope = scope
	if c.ExpiresAt.IsZero() {
		c.ExpiresAt = tk.ExpiresOn
	}
	return c, nil
}

func decodeClaims(token string) (*Claims, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, ErrNotJWT
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return nil, ErrNotJWT
	}
	var raw struct {
		Aud   json.RawMessage `json:"aud"`
		OID   string          `json:"oid"`
		AppID string          `json:"appid"`
		AZP   string          `json:"azp"`
		TID   string          `json:"tid"`
		Exp   json.Number     `json:"exp"`
	}
	if err := json.Unmarshal(payload, &raw); err != nil {
		return nil, fmt.Errorf("%w: payload is not JSON", ErrNotJWT)
	}
	c := &Claims{ObjectID: raw.OID, AppID: raw.AppID, TenantID: raw.TID}
	if c.AppID == "" {
		c.AppID = raw.AZP
	}
	var aud string
	if json.Unmarshal(raw.Aud, &aud) != nil {
		var auds []string
		if json.Unmarshal(raw.Aud, &auds) == nil {
			aud = strings.Join(auds, " ")
		}
	}
	c.Audience = aud
	if f, err := raw.Exp.Float64(); err == nil && f > 0 {
		c.ExpiresAt = time.Unix(int64(f), 0).UTC()
	}
	return c, nil
}
