package main

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/orchestrator/apiclient"
	"github.com/batchd/batchd/orchestrator/broker/brokertest"
)

// procBuild builds batchd-dev and batchd into dir, as `make build` puts
// them in bin/, and returns batchd-dev's path.
func procBuild(t testing.TB, dir string) string {
	t.Helper()
	cmd := exec.Command("go", "build", "-o", dir+string(filepath.Separator), ".", "github.com/batchd/batchd/cmd/batchd")
	cmd.Env = os.Environ()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return filepath.Join(dir, "batchd-dev")
}

// procFreeAddr is a free loopback address, never handed out twice in this
// test process.
func procFreeAddr(t testing.TB) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(brokertest.FreePort(t)))
}

// procListAll lists every run of the daemon at base, following cursors.
func procListAll(base string) ([]orchestrator.RunSummary, error) {
	cl := apiclient.New(base, "", nil)
	var all []orchestrator.RunSummary
	opts := orchestrator.ListOptions{Limit: 1000}
	for {
		l, err := cl.ListRuns(context.Background(), opts)
		if err != nil {
			return nil, err
		}
		all = append(all, l.Runs...)
		if l.NextCursor == "" {
			return all, nil
		}
		opts.Cursor = l.NextCursor
	}
}

// procGetRun is one run of the daemon at base.
func procGetRun(base, id string) (*orchestrator.Run, error) {
	return apiclient.New(base, "", nil).GetRun(context.Background(), id)
}
