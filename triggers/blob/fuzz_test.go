package blob

import (
	"net/http"
	"os"
	"path/filepath"
	"testing"
)

func addFixtures(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.json")
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

// checkEvents holds for every decoded delivery: an event without a problem
// has an id and a type, and nothing panics on the way to a key.
func checkEvents(t *testing.T, events []Event) {
	for _, ev := range events {
		if ev.Problem == "" && (ev.ID == "" || ev.Type == "") {
			t.Fatalf("event without problem lacks id or type: %+v", ev)
		}
		if ev.Type == TypeBlobCreated {
			if d, err := ev.BlobData(); err == nil {
				if ref, err := ParseURL(d.URL); err == nil {
					if again, err := ParseURL(ref.URL); err != nil || again != ref {
						t.Fatalf("canonical URL %q does not round-trip: %+v %v", ref.URL, again, err)
					}
					_ = Key(ref, d.ETag)
				}
			}
		}
	}
}

func FuzzDecodeEventGrid(f *testing.F) {
	addFixtures(f)
	f.Add([]byte(`[{"id":"1","eventType":"x","data":null}]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		events, err := DecodeEventGrid(body)
		if err != nil {
			return
		}
		checkEvents(t, events)
		if _, err := Decode(body, http.Header{}); err != nil && body[0] == '[' {
			_ = err // Decode may route an array to CloudEvents; both must not panic
		}
	})
}

func FuzzDecodeCloudEvents(f *testing.F) {
	addFixtures(f)
	f.Add([]byte(`{"specversion":"1.0","id":"1","type":"t","source":"s","data":{}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		events, err := DecodeCloudEvents(body)
		if err != nil {
			return
		}
		checkEvents(t, events)
	})
}
