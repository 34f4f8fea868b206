package config

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/batchd/batchd/jobs/online"
	"github.com/batchd/batchd/orchestrator"
)

// The online keys compile into the runtime types with their defaults.
func TestOnlineCompiles(t *testing.T) {
	f, err := LoadFile("testdata/online.good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	type epView struct {
		Kind, AuthMode, ARMName, Deployment string
		Timeout                             time.Duration
		MaxConcurrent                       int
		Workspace, KeyFile                  bool
	}
	view := func(name string) epView {
		e := f.Endpoints[name]
		v := epView{Kind: e.Kind, MaxConcurrent: e.MaxConcurrentRequests}
		if o := e.Online; o != nil {
			v.AuthMode, v.ARMName, v.Deployment, v.Timeout = o.AuthMode, o.ARMName, o.Deployment, o.Timeout
			v.Workspace, v.KeyFile = o.Workspace != nil, o.Keys != nil
		}
		return v
	}
	want := map[string]epView{
		"classifier": {Kind: "online", AuthMode: "aad_token", ARMName: "classifier", Timeout: time.Minute},
		"tokens":     {Kind: "online", AuthMode: "aml_token", ARMName: "tok", Deployment: "blue", Timeout: 30 * time.Second, MaxConcurrent: 16, Workspace: true},
		"keyed":      {Kind: "online", AuthMode: "key", ARMName: "keyed", Timeout: time.Minute, KeyFile: true},
		"listed":     {Kind: "online", AuthMode: "key", ARMName: "listed-endpoint", Timeout: time.Minute, Workspace: true},
		"batch":      {Kind: "batch"},
	}
	for name, w := range want {
		if diff := cmp.Diff(w, view(name)); diff != "" {
			t.Errorf("endpoint %s (-want +got):\n%s", name, diff)
		}
	}
	keys, err := f.Endpoints["keyed"].Online.Keys(context.Background())
	if err != nil || keys.Primary != "primary-key-for-tests-0000000000000000" || keys.Secondary != "secondary-key-for-tests-000000000000000" {
		t.Errorf("key file read %v (%v)", keys, err)
	}

	p := f.Pipelines["score-text"]
	if !p.IsOnline() || p.Endpoint.Online.Deployment != "green" || !p.SafeToRepeat || p.Timeout != 10*time.Second ||
		p.Retention != 24*time.Hour || p.Response.Store || p.Request.Source() != `{"text": {{ json .Fields.text }}}` {
		t.Errorf("score-text compiled to %+v (online %+v)", p, p.Endpoint.Online)
	}
	if f.Endpoints["tokens"].Online.Deployment != "blue" {
		t.Errorf("the pipeline's deployment override changed the endpoint itself")
	}
	if got := f.Pipelines["hourly"].Response; got != (orchestrator.ResponsePolicy{Store: true, MaxBytes: 1024}) {
		t.Errorf("hourly response policy %+v", got)
	}
	if got := f.Pipelines["classify"].Response; got != (orchestrator.ResponsePolicy{Store: true, MaxBytes: orchestrator.DefaultResponseMaxBytes}) {
		t.Errorf("default response policy %+v, want store with 64 KiB", got)
	}
	if f.Pipelines["batch"].IsOnline() || f.Pipelines["batch"].Retention != time.Hour {
		t.Errorf("batch pipeline compiled to %+v", f.Pipelines["batch"])
	}
	if _, ok := f.Triggers.NATS["classify"]; !ok {
		t.Errorf("the online pipeline's nats trigger is not filed: %+v", f.Triggers)
	}
}

// A key file is read again on each call (keys rotate), its problems name
// the file but never its contents.
func TestKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keys")
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("  key-one  \n\n")
	if k, err := readKeyFile(path); err != nil || k != (online.Keys{Primary: "key-one"}) {
		t.Errorf("one key: %v, %v", k, err)
	}
	write("key-one\nkey-two\n")
	if k, err := readKeyFile(path); err != nil || k != (online.Keys{Primary: "key-one", Secondary: "key-two"}) {
		t.Errorf("two keys: %v, %v", k, err)
	}
	write("secret-a\nsecret-b\nsecret-c\n")
	if _, err := readKeyFile(path); err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("three lines: %v, want an error without the keys", err)
	}
	write("\n \n")
	if _, err := readKeyFile(path); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("empty file: %v", err)
	}
}
