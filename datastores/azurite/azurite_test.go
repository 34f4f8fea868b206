package azurite_test

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"syscall"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"

	"github.com/batchd/batchd/datastores/azurite"
	"github.com/batchd/batchd/datastores/azurite/azuritetest"
)

// The launcher's contract: a working blob service on loopback, and no
// process left behind after Close.
func TestStartServesBlobsAndCloseKills(t *testing.T) {
	s := azuritetest.Start(t)
	c := azuritetest.Client(t, s)
	ctx := t.Context()
	if _, err := c.CreateContainer(ctx, "probe", nil); err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	if _, err := c.UploadBuffer(ctx, "probe", "a/b.txt", []byte("data"), nil); err != nil {
		t.Fatalf("UploadBuffer: %v", err)
	}
	resp, err := c.DownloadStream(ctx, "probe", "a/b.txt", nil)
	if err != nil {
		t.Fatalf("DownloadStream: %v", err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(got, []byte("data")) {
		t.Errorf("downloaded %q, want %q", got, "data")
	}

	pid := s.Pid()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("azurite pid %d still alive after Close", pid)
	}
}

// HTTPS + OAuth mode: a bearer token with the storage audience is accepted,
// one with another audience is refused.
func TestStartOAuthChecksTokens(t *testing.T) {
	s := azuritetest.StartOAuth(t)
	if !strings.HasPrefix(s.URL, "https://127.0.0.1:") {
		t.Fatalf("URL = %q, want https://127.0.0.1:<port>", s.URL)
	}
	client := func(aud string) *azblob.Client {
		c, err := azblob.NewClient(s.AccountURL(), &azuritetest.TokenCredential{Audience: aud},
			&azblob.ClientOptions{ClientOptions: policy.ClientOptions{Transport: s.HTTPClient, Retry: policy.RetryOptions{MaxRetries: -1}}})
		if err != nil {
			t.Fatalf("NewClient: %v", err)
		}
		return c
	}
	if _, err := client("").CreateContainer(t.Context(), "probe", nil); err != nil {
		t.Fatalf("CreateContainer with a storage token: %v", err)
	}
	_, err := client("https://management.azure.com").CreateContainer(t.Context(), "probe2", nil)
	var re *azcore.ResponseError
	if !errors.As(err, &re) || re.StatusCode != 403 {
		t.Errorf("CreateContainer with a management token: err = %v, want HTTP 403", err)
	}
}

func TestStartRejectsBadTLSOptions(t *testing.T) {
	for _, opts := range []azurite.Options{
		{Bin: "/nonexistent", CertFile: "c.pem"},
		{Bin: "/nonexistent", OAuth: true},
	} {
		if _, err := azurite.Start(t.Context(), opts); err == nil || !strings.Contains(err.Error(), "azurite:") {
			t.Errorf("Start(%+v) = %v, want an option error", opts, err)
		}
	}
}
