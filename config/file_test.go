package config

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestFixtures loads every testdata/*.good.yaml (must load) and
// testdata/*.bad.yaml (must fail with exactly the problems listed in its
// "# error: " comment lines, in order).
func TestFixtures(t *testing.T) {
	good, _ := filepath.Glob("testdata/*.good.yaml")
	bad, _ := filepath.Glob("testdata/*.bad.yaml")
	if len(good) == 0 || len(bad) == 0 {
		t.Fatalf("no fixtures found (good %d, bad %d)", len(good), len(bad))
	}
	for _, path := range good {
		t.Run(filepath.Base(path), func(t *testing.T) {
			if _, err := LoadFile(path); err != nil {
				t.Fatalf("LoadFile(%s): %v", path, err)
			}
		})
	}
	for _, path := range bad {
		t.Run(filepath.Base(path), func(t *testing.T) {
			want := wantErrors(t, path)
			_, err := LoadFile(path)
			if err == nil {
				t.Fatalf("LoadFile(%s) = nil error, want %d problems", path, len(want))
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("LoadFile(%s) error %T is not *config.Error: %v", path, err, err)
			}
			if ce.File != path {
				t.Errorf("Error.File = %q, want %q", ce.File, path)
			}
			var got []string
			for _, p := range ce.Problems {
				got = append(got, p.Error())
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("problems (-want +got):\n%s", diff)
			}
		})
	}
}

func wantErrors(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	var want []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "# error: "); ok {
			want = append(want, rest)
		}
	}
	if len(want) == 0 {
		t.Fatalf("%s has no '# error: ' lines", path)
	}
	return want
}

// The annotated example under deploy/ documents every key; it must stay valid.
func TestDeployExampleIsValid(t *testing.T) {
	f, err := LoadFile("../deploy/pipelines.example.yaml")
	if err != nil {
		t.Fatalf("deploy/pipelines.example.yaml: %v", err)
	}
	if got := len(f.Pipelines); got != 4 {
		t.Errorf("example has %d pipelines, want 4", got)
	}
	p := f.Pipelines["score-uploads"]
	if p.Endpoint.Deployment != "green" || p.Retry.MaxAttempts != 2 || p.Timeout.Hours() != 6 || p.Trigger != "blob" {
		t.Errorf("score-uploads compiled to %+v", p)
	}
	if f.Triggers.Cron["nightly"].TimeZone != "Europe/Amsterdam" || f.Triggers.NATS["on-request"].Queue != "batchd" {
		t.Errorf("triggers = %+v", f.Triggers)
	}
}
