package jobs

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// oneLine cuts long service text; the cut must neither leave the first part
// of a token behind (redaction runs on the whole line first) nor split a
// UTF-8 sequence.
func TestOneLineRedactsBeforeCutting(t *testing.T) {
	const jwt = "eyJhbGciOiJIUzI1NiJ9.eyJhdWQiOiJodHRwczovL21sLmF6dXJlLmNvbSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
	tests := []struct {
		name, in string
		n        int
	}{
		{"token straddles the cut", strings.Repeat("x", 90) + " " + jwt, 100},
		{"signature straddles the cut", strings.Repeat("x", 90) + " https://a/c/x?sv=1&sig=c2VjcmV0LXNpZ25hdHVyZQ%3D%3D", 100},
		{"multi-byte rune at the cut", strings.Repeat("é", 60), 51},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := oneLine(tt.in, tt.n)
			if strings.Contains(got, "eyJ") || strings.Contains(got, "c2VjcmV0") {
				t.Errorf("oneLine = %q: part of a secret survived", got)
			}
			if !utf8.ValidString(got) {
				t.Errorf("oneLine = %q: not valid UTF-8", got)
			}
			if len(got) > tt.n+len("…") {
				t.Errorf("oneLine = %d bytes, want at most %d", len(got), tt.n+len("…"))
			}
		})
	}
}

func TestRedact(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"SAS in a URL", "https://a.blob.core.windows.net/c/x?sv=1&sig=c2VjcmV0%3D&se=2", "https://a.blob.core.windows.net/c/x?sv=1&sig=[redacted]&se=2"},
		{"SAS first in the query", "x?sig=abc&sv=1", "x?sig=[redacted]&sv=1"},
		{"SAS in JSON written by Go", `{"uri":"x?sv=1\u0026sig=c2VjcmV0\u0026se=2"}`, `{"uri":"x?sv=1\u0026sig=[redacted]\u0026se=2"}`},
		{"SAS first in an escaped query", `{"uri":"x\u003fsig=c2VjcmV0"}`, `{"uri":"x\u003fsig=[redacted]"}`},
		{"SAS URL-encoded inside another URL", "next=https%3A%2F%2Fa%2Fc%3Fsv%3D1%26sig%3Dc2VjcmV0", "next=https%3A%2F%2Fa%2Fc%3Fsv%3D1%26sig%3D[redacted]"},
		{"connection string", "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=a2V5a2V5;EndpointSuffix=x", "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=[redacted];EndpointSuffix=x"},
		{"client secret in a form", "grant_type=client_credentials&client_secret=s3cr3t&scope=x", "grant_type=client_credentials&client_secret=[redacted]&scope=x"},
		{"bearer", "Authorization: Bearer abcdefghijklmnopqrstuvwxyz", "Authorization: Bearer [redacted]"},
		{"a word that ends in sig is not a parameter", "config=1&design=2", "config=1&design=2"},
		{"nothing secret", `{"uri":"azureml://datastores/d/paths/a.csv"}`, `{"uri":"azureml://datastores/d/paths/a.csv"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Redact(tt.in); got != tt.want {
				t.Errorf("Redact(%q)\n got %q\nwant %q", tt.in, got, tt.want)
			}
		})
	}
}
