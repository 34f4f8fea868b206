package datastores

import (
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"

	"github.com/batchd/batchd/datastores/azurite"
	"github.com/batchd/batchd/datastores/azurite/azuritetest"
)

// find returns the checks named name about subject.
func find(d Decision, name, subject string) []Check {
	var out []Check
	for _, c := range d.Checks {
		if c.Name == name && c.Subject == subject {
			out = append(out, c)
		}
	}
	return out
}

// wantCheck asserts that d has exactly one check name/subject with result r
// whose reason contains every one of reasonHas.
func wantCheck(t *testing.T, d Decision, name, subject string, r Result, reasonHas ...string) {
	t.Helper()
	cs := find(d, name, subject)
	if len(cs) != 1 {
		t.Errorf("checks %s %s: got %d, want 1; decision:\n%s", name, subject, len(cs), dump(d))
		return
	}
	if cs[0].Result != r {
		t.Errorf("check %s %s = %s (%s), want %s", name, subject, cs[0].Result, cs[0].Reason, r)
	}
	for _, s := range reasonHas {
		if !strings.Contains(cs[0].Reason, s) {
			t.Errorf("check %s %s reason = %q, want it to contain %q", name, subject, cs[0].Reason, s)
		}
	}
}

// noCheck asserts that d has no check name/subject.
func noCheck(t *testing.T, d Decision, name, subject string) {
	t.Helper()
	if cs := find(d, name, subject); len(cs) != 0 {
		t.Errorf("check %s %s present (%s: %s), want none", name, subject, cs[0].Result, cs[0].Reason)
	}
}

func dump(d Decision) string {
	var b strings.Builder
	fmt.Fprintf(&b, "verdict %s (%s)\n", d.Verdict, d.Reason)
	for _, c := range d.Checks {
		fmt.Fprintf(&b, "  %-22s %-14s %-4s %s\n", c.Name, c.Subject, c.Result, c.Reason)
	}
	return b.String()
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// closedPort returns a loopback port nothing listens on.
func closedPort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	return port
}

// azuriteStorage is a Storage reaching the Azurite development account with
// its shared key.
func azuriteStorage(s *azurite.Server) *Storage {
	return NewStorage(StorageOptions{Accounts: map[string]Account{
		azurite.Account: {Name: azurite.Account, BlobEndpoint: s.AccountURL(), Auth: AuthSharedKey, Key: azurite.Key},
	}})
}

// seed creates containers and blobs (name → content) in Azurite.
func seed(t testing.TB, c *azblob.Client, containers []string, blobs map[string]string) {
	t.Helper()
	ctx := t.Context()
	for _, cont := range containers {
		if _, err := c.CreateContainer(ctx, cont, nil); err != nil {
			t.Fatalf("CreateContainer %s: %v", cont, err)
		}
	}
	for path, content := range blobs {
		cont, name, _ := strings.Cut(path, "/")
		if _, err := c.UploadBuffer(ctx, cont, name, []byte(content), nil); err != nil {
			t.Fatalf("UploadBuffer %s: %v", path, err)
		}
	}
}

func startAzurite(t testing.TB) (*azurite.Server, *azblob.Client) {
	t.Helper()
	s := azuritetest.Start(t)
	return s, azuritetest.Client(t, s)
}
