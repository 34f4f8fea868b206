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
