package main

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestVersion(t *testing.T) {
	t.Parallel()
	old := version
	version, commit = "v1.2.3", "abc1234"
	t.Cleanup(func() { version, commit = old, "" })
	code, out, _ := runCLI(t, nil, "version")
	if code != exitOK || !strings.HasPrefix(out, "batchd v1.2.3 (commit abc1234, go") {
		t.Errorf("version: exit %d, out %q", code, out)
	}
	code, out, _ = runCLI(t, nil, "version", "--json")
	var v versionInfo
	if code != exitOK || json.Unmarshal([]byte(out), &v) != nil || v.Version != "v1.2.3" || v.Platform == "" {
		t.Errorf("version --json: exit %d, %+v from %q", code, v, out)
	}
}
