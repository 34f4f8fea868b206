// Package azuritetest starts Azurite for a test. A test that needs Azurite
// and cannot start it fails; it never skips, so a missing install step shows
// up in CI instead of hiding.
package azuritetest

import (
	"context"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"

	"github.com/batchd/batchd/datastores/azurite"
)

// Start runs Azurite (in-memory) for the test and stops it at cleanup.
func Start(t testing.TB) *azurite.Server {
	t.Helper()
	s, err := azurite.Start(context.Background(), azurite.Options{})
	if err != nil {
		t.Fatalf("azurite: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// Client is a shared-key azblob client for the development account.
func Client(t testing.TB, s *azurite.Server) *azblob.Client {
	t.Helper()
	c, err := azblob.NewClientFromConnectionString(s.ConnectionString(), nil)
	if err != nil {
		t.Fatalf("azblob client: %v", err)
	}
	return c
}
