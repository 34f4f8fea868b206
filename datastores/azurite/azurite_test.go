package azurite_test

import (
	"bytes"
	"io"
	"syscall"
	"testing"

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
