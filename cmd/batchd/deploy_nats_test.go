package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/batchd/batchd/jobs/jobstest"
	"github.com/batchd/batchd/orchestrator/broker/brokertest"
)

// The shipped NATS cluster files (deploy/nats/nats-{1,2,3}.conf), with only
// their placeholders, host names, ports and paths filled in, form a
// three-node JetStream cluster with client and route TLS (certificates from
// deploy/nats/make-tls.sh) and NKey authentication, which batchd serve
// uses with the settings the files name (BATCHD_NATS_URL, _NKEY, _TLS_CA,
// _REPLICAS=3): a run goes through. A client without the NKey, or without
// TLS, is refused.
func TestDeployNATSClusterFilesServeBatchd(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test: skipped with -short")
	}
	t.Parallel()
	dir := t.TempDir()
	tlsDir := filepath.Join(dir, "tls")
	if out, err := exec.Command("bash", "../../deploy/nats/make-tls.sh", "--out", tlsDir, "--names", "n1,n2,n3,127.0.0.1").CombinedOutput(); err != nil {
		t.Fatalf("make-tls.sh: %v\n%s", err, out)
	}
	user, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := user.Seed()
	pub, _ := user.PublicKey()
	seedFile := filepath.Join(dir, "nats.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	pw := make([]byte, 12)
	_, _ = rand.Read(pw)

	c := brokertest.StartClusterWith(t, 3, func(nd *brokertest.Node, c *brokertest.Cluster) string {
		i := nd.Name[1:] // n1 → 1
		b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "nats", "nats-"+i+".conf"))
		if err != nil {
			t.Fatal(err)
		}
		conf := string(b)
		fill := func(old, new string, want int) {
			t.Helper()
			if n := strings.Count(conf, old); n != want {
				t.Fatalf("nats-%s.conf: %q occurs %d times, want %d (the file changed: update this test)", i, old, n, want)
			}
			conf = strings.ReplaceAll(conf, old, new)
		}
		fill("listen: 0.0.0.0:4222", fmt.Sprintf("listen: 127.0.0.1:%d", nd.Port), 1)
		fill("http: 127.0.0.1:8222", fmt.Sprintf("http: 127.0.0.1:%d", nd.HTTPPort), 1)
		fill("listen: 0.0.0.0:6222", fmt.Sprintf("listen: 127.0.0.1:%d", nd.RoutePort), 1)
		fill("store_dir: /var/lib/nats", fmt.Sprintf("store_dir: %q", filepath.Join(nd.Dir, "store")), 1)
		fill("/etc/nats/tls/", tlsDir+"/", 7) // six paths and a comment
		fill("UCGMZ5DM5JF3JE2WZQBHMGVPBJ4JAQVOQL2EF324NKTUK62SADTQCPN5", string(pub), 1)
		fill("CHANGE-ME-route-password", hex.EncodeToString(pw), 6) // four uses, two in the instructions
		for k, o := range c.Nodes {
			fill("@n"+strconv.Itoa(k+1)+":6222", fmt.Sprintf("@127.0.0.1:%d", o.RoutePort), 1)
		}
		return conf
	})

	// Refused: no NKey (over TLS), and no trust in the private CA (the
	// client library upgrades to the TLS the server requires, then cannot
	// verify it: there is no way around TLS).
	if nc, err := nats.Connect(c.Nodes[0].URL(), nats.RootCAs(filepath.Join(tlsDir, "ca.crt"))); err == nil {
		nc.Close()
		t.Error("a client without the NKey connected")
	}
	opt, err := nats.NkeyOptionFromSeed(seedFile)
	if err != nil {
		t.Fatal(err)
	}
	if nc, err := nats.Connect(c.Nodes[0].URL(), opt); err == nil {
		nc.Close()
		t.Error("a client without the CA connected")
	}

	bin := procBuild(t, dir)
	sim := jobstest.New(t, jobstest.Options{Lifecycle: procQuickLifecycle()})
	env := procSimEnv(t, sim, dir)
	env["BATCHD_NATS_URL"] = c.URL()
	env["BATCHD_NATS_REPLICAS"] = "3"
	env["BATCHD_NATS_NKEY"] = seedFile
	env["BATCHD_NATS_TLS_CA"] = filepath.Join(tlsDir, "ca.crt")
	p := newProc(t, bin, env, "tls-replica")
	p.launch()
	if err := p.waitReady(90 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := procEmit(t.Context(), p.url, "over-tls", procInputURI("over-tls")); err != nil {
		t.Fatal(err)
	}
	runs := procWaitFinished(t, p.url, 1, time.Minute)
	procCheckOneJobPerRun(t, sim, runs, procInputURI)
	if log, _ := os.ReadFile(p.log); strings.Contains(string(log), string(seed)) {
		t.Error("the NKey seed reached the log")
	}
}
