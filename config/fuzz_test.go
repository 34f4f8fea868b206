package config

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse feeds arbitrary bytes to the pipelines file loader. Whatever
// the input, Parse returns either a File whose parts agree with each other
// or an *Error that lists at least one problem, each with a message and a
// line inside the file; it never panics, and the same input
// always gives the same answer. Seeds: every fixture in testdata (good and
// bad) and testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	fixtures, _ := filepath.Glob("testdata/*.yaml")
	if len(fixtures) == 0 {
		f.Fatal("no fixtures in testdata")
	}
	for _, p := range fixtures {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		// Key, SAS and online key files are read from the paths the file
		// names: keep the fuzzer away from device and kernel files, whose
		// reads may never end (see the report on readSecret).
		if len(data) > MaxFileSize || bytes.Contains(data, []byte("/dev")) || bytes.Contains(data, []byte("/proc")) ||
			bytes.Contains(data, []byte("/sys")) {
			return
		}
		file, err := Parse(data)
		again, err2 := Parse(data)
		if (err == nil) != (err2 == nil) || (err != nil && err.Error() != err2.Error()) {
			t.Fatalf("Parse is not deterministic: %v, then %v", err, err2)
		}
		if err != nil {
			if file != nil {
				t.Fatalf("Parse returned a File with error %v", err)
			}
			checkProblems(t, data, err)
			return
		}
		if file == nil || again == nil {
			t.Fatal("Parse returned neither a File nor an error")
		}
		checkFile(t, file)
	})
}

// checkProblems: an *Error with at least one problem, each a *FieldError
// with a message and a line within the file (0: not known).
func checkProblems(t *testing.T, data []byte, err error) {
	t.Helper()
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("error %T is not *config.Error: %v", err, err)
	}
	if len(ce.Problems) == 0 {
		t.Fatalf("*Error without problems: %v", err)
	}
	lines := bytes.Count(data, []byte("\n")) + 1
	for _, p := range ce.Problems {
		var fe *FieldError
		if !errors.As(p, &fe) {
			t.Fatalf("problem %T is not a *FieldError: %v", p, p)
		}
		// A problem of the whole file may have an empty path (a top-level
		// value that is not a mapping prints as ": must be a mapping ...").
		if fe.Msg == "" {
			t.Fatalf("problem without a message: %+v", fe)
		}
		if fe.Line < 0 || fe.Line > lines {
			t.Fatalf("problem %q points at line %d of a %d-line file", p, fe.Line, lines)
		}
	}
}

// checkFile: every pipeline is filed under its own name and uses a declared
// endpoint, and every trigger belongs to a declared pipeline of its kind.
func checkFile(t *testing.T, f *File) {
	t.Helper()
	for name, p := range f.Pipelines {
		if p == nil || p.Name != name {
			t.Fatalf("pipeline %q is filed under another name: %+v", name, p)
		}
		if _, ok := f.Endpoints[p.Endpoint.Name]; !ok {
			t.Fatalf("pipeline %q uses endpoint %q, which is not declared", name, p.Endpoint.Name)
		}
	}
	triggers := map[string][]string{}
	for name := range f.Triggers.Blob {
		triggers["blob"] = append(triggers["blob"], name)
	}
	for name := range f.Triggers.Cron {
		triggers["cron"] = append(triggers["cron"], name)
	}
	for name := range f.Triggers.NATS {
		triggers["nats"] = append(triggers["nats"], name)
	}
	for kind, names := range triggers {
		for _, name := range names {
			p, ok := f.Pipelines[name]
			if !ok {
				t.Fatalf("%s trigger for undeclared pipeline %q", kind, name)
			}
			if p.Trigger != kind {
				t.Fatalf("pipeline %q has a %s trigger but says %q", name, kind, p.Trigger)
			}
		}
	}
}
