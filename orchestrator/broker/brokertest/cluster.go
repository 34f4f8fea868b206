// Package brokertest runs real NATS clusters for tests: nats-server
// processes built from this module's own nats-server dependency, clustered
// on loopback with JetStream, each in its own directory, so that a test
// can SIGKILL, stop and restart any of them the way a VM or a rolling
// upgrade does.
package brokertest

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const serverModule = "github.com/nats-io/nats-server/v2"

var (
	buildOnce sync.Once
	buildBin  string
	buildErr  error
)

// ServerBinary builds nats-server from the module's own dependency once
// per test process (kept between runs, under the user cache directory, by
// version) and returns its path. A test that cannot build it fails.
func ServerBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		version := "unknown"
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, d := range bi.Deps {
				if d.Path == serverModule {
					version = d.Version
					if d.Replace != nil {
						version += "-" + d.Replace.Version
					}
				}
			}
		}
		dir, err := os.UserCacheDir()
		if err != nil {
			dir = os.TempDir()
		}
		dir = filepath.Join(dir, "batchd-test")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			buildErr = err
			return
		}
		bin := filepath.Join(dir, "nats-server-"+version)
		if version != "unknown" {
			if _, err := os.Stat(bin); err == nil {
				buildBin = bin
				return
			}
		}
		tmp := fmt.Sprintf("%s.%d.tmp", bin, os.Getpid())
		if out, err := exec.Command("go", "build", "-o", tmp, serverModule).CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build nats-server: %w\n%s", err, out)
			return
		}
		buildErr = os.Rename(tmp, bin)
		buildBin = bin
	})
	if buildErr != nil {
		t.Fatalf("nats-server: %v", buildErr)
	}
	return buildBin
}

// Node is one nats-server process of a Cluster.
type Node struct {
	Name                      string
	Port, RoutePort, HTTPPort int
	Dir                       string

	bin, conf, log string
	mu             sync.Mutex
	cmd            *exec.Cmd
	done           chan error
}

// Cluster is a JetStream cluster of nats-server processes on loopback.
type Cluster struct {
	Name  string
	Nodes []*Node
}

// StartCluster starts n clustered nats-server processes (n ≥ 1) and waits
// until JetStream has a meta leader. They are SIGKILLed at cleanup.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	return StartClusterWith(t, n, func(nd *Node, c *Cluster) string {
		cluster := ""
		if n > 1 {
			var routes []string
			for _, o := range c.Nodes {
				routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", o.RoutePort))
			}
			cluster = fmt.Sprintf("cluster {\n  name: %s\n  listen: 127.0.0.1:%d\n  routes: [\n    %s\n  ]\n}\n",
				c.Name, nd.RoutePort, strings.Join(routes, "\n    "))
		}
		return fmt.Sprintf("server_name: %s\nlisten: 127.0.0.1:%d\nhttp: 127.0.0.1:%d\n"+
			"jetstream {\n  store_dir: %q\n}\n%s",
			nd.Name, nd.Port, nd.HTTPPort, filepath.Join(nd.Dir, "store"), cluster)
	})
}

// StartClusterWith is StartCluster with each node's configuration file
// written by conf, which is given the node (its name, ports and directory
// chosen) and the cluster (every node's). The file must listen for clients
// on 127.0.0.1:Port, serve monitoring on 127.0.0.1:HTTPPort and route on
// 127.0.0.1:RoutePort.
func StartClusterWith(t testing.TB, n int, conf func(nd *Node, c *Cluster) string) *Cluster {
	t.Helper()
	bin := ServerBinary(t)
	c := &Cluster{Name: "batchdtest"}
	for i := range n {
		dir := t.TempDir()
		c.Nodes = append(c.Nodes, &Node{
			Name: fmt.Sprintf("n%d", i+1), Port: freePort(t), RoutePort: freePort(t), HTTPPort: freePort(t),
			Dir: dir, bin: bin, conf: filepath.Join(dir, "nats.conf"), log: filepath.Join(dir, "nats.log"),
		})
	}
	for _, nd := range c.Nodes {
		if err := os.WriteFile(nd.conf, []byte(conf(nd, c)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, nd := range c.Nodes {
		nd.Start(t)
		t.Cleanup(func() { nd.Stop(syscall.SIGKILL) })
	}
	c.WaitReady(t, 60*time.Second)
	return c
}

// URL is the client URL list of every node, as BATCHD_NATS_URL takes it.
func (c *Cluster) URL() string {
	var us []string
	for _, nd := range c.Nodes {
		us = append(us, nd.URL())
	}
	return strings.Join(us, ",")
}

// Node returns the node named name (nil if none).
func (c *Cluster) Node(name string) *Node {
	for _, nd := range c.Nodes {
		if nd.Name == name {
			return nd
		}
	}
	return nil
}

// URL is the node's own client URL.
func (nd *Node) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", nd.Port) }

// Start starts the node's process (again) on its ports and store.
func (nd *Node) Start(t testing.TB) {
	t.Helper()
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if nd.cmd != nil {
		return
	}
	f, err := os.OpenFile(nd.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(nd.bin, "-c", nd.conf)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		t.Fatalf("start nats-server %s: %v", nd.Name, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); _ = f.Close() }()
	nd.cmd, nd.done = cmd, done
}

// Running reports whether the node's process is started and not stopped.
func (nd *Node) Running() bool {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.cmd != nil
}

// Stop signals the process (SIGKILL: a crash; SIGTERM: a clean stop;
// SIGUSR2 is lame duck mode, which ends in a stop) and waits for it to end.
func (nd *Node) Stop(sig syscall.Signal) {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if nd.cmd == nil {
		return
	}
	_ = nd.cmd.Process.Signal(sig)
	// The exit status of a process we signaled says nothing we need.
	select {
	case err := <-nd.done:
		_ = err
	case <-time.After(60 * time.Second):
		_ = nd.cmd.Process.Kill()
		<-nd.done //nolint:errcheck // the exit status of a process we killed
	}
	nd.cmd = nil
}

// exited reports whether the process ended without being stopped.
func (nd *Node) exited() bool {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if nd.cmd == nil {
		return false
	}
	select {
	case err := <-nd.done:
		nd.done <- err
		return true
	default:
		return false
	}
}

// Log is what the node's processes wrote so far.
func (nd *Node) Log() string {
	b, _ := os.ReadFile(nd.log)
	return string(b)
}

// Connect opens a client connection to this node only (no other URL to
// fail over to), which reconnects for ever.
func (nd *Node) Connect(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	return connect(t, nd.URL())
}

// Connect opens a client connection to the cluster, which reconnects for
// ever.
func (c *Cluster) Connect(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	return connect(t, c.URL())
}

func connect(t testing.TB, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond),
		nats.RetryOnFailedConnect(true))
	if err != nil {
		t.Fatalf("connect to %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// jsz is the part of the monitoring endpoint's /jsz answer the harness
// reads.
type jsz struct {
	Meta *struct {
		Leader  string `json:"leader"`
		Size    int    `json:"cluster_size"`
		Pending int    `json:"pending"`
	} `json:"meta_cluster"`
}

// MetaLeader is the name of the JetStream meta leader as the running nodes
// report it ("" while there is none).
func (c *Cluster) MetaLeader() string {
	for _, nd := range c.Nodes {
		if !nd.Running() {
			continue
		}
		var z jsz
		if nd.monitor("/jsz", &z) == nil && z.Meta != nil && z.Meta.Leader != "" {
			return z.Meta.Leader
		}
	}
	return ""
}

// WaitReady waits until every running node answers /healthz (JetStream
// current) and, on more than one node, there is a meta leader (a single
// server is not clustered and reports none).
func (c *Cluster) WaitReady(t testing.TB, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ok := len(c.Nodes) == 1 || c.MetaLeader() != ""
		for _, nd := range c.Nodes {
			if nd.exited() {
				t.Fatalf("nats-server %s exited:\n%s", nd.Name, tail(nd.Log(), 3000))
			}
			if ok && nd.Running() && !nd.Healthy() {
				ok = false
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			var logs strings.Builder
			for _, nd := range c.Nodes {
				fmt.Fprintf(&logs, "--- %s ---\n%s\n", nd.Name, tail(nd.Log(), 3000))
			}
			t.Fatalf("nats cluster not ready within %s\n%s", within, logs.String())
		}
		time.Sleep(100 * time.Millisecond) // polling an external process to a deadline
	}
}

// Healthy reports whether the node's /healthz says JetStream is current.
func (nd *Node) Healthy() bool {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", nd.HTTPPort))
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (nd *Node) monitor(path string, v any) error {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", nd.HTTPPort, path))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// StreamLeader is the node leading stream (a KV bucket's stream is
// KV_<bucket>), asked through js; "" when it cannot be told.
func StreamLeader(ctx context.Context, js jetstream.JetStream, stream string) string {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return ""
	}
	info, err := s.Info(ctx)
	if err != nil || info.Cluster == nil {
		return ""
	}
	return info.Cluster.Leader
}

func freePort(t testing.TB) int { return FreePort(t) }

// handedOut are the ports FreePort gave this test process.
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// FreePort is a loopback port that was free a moment ago and that no
// other FreePort call of this test process has handed out. A port is
// released before a child process binds it, so two harnesses that each
// asked the kernel could get the same one (a nats-server node and a batchd
// process did); within the process FreePort never repeats.
func FreePort(t testing.TB) int {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	for range 1000 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if !handedOut.ports[port] {
			handedOut.ports[port] = true
			return port
		}
	}
	t.Fatal("no loopback port that was not handed out before")
	return 0
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}
