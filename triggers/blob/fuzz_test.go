package blob

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/batchd/batchd/orchestrator"
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
	for _, b := range hostileDeliveries() {
		f.Add(b)
	}
}

const amlTopicFuzz = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/ml-rg/providers/Microsoft.MachineLearningServices/workspaces/ml-ws"

// hostileDeliveries are bodies an attacker (or a broken sender) may post:
// nesting deeper than the JSON decoder's limit, in the delivery and inside
// an event's data; Event Grid's maximum of events and one more; a 512 KiB
// string; Azure ML job events with hostile run ids. The webhook refuses
// bodies over 1 MiB before decoding; these are just under it.
func hostileDeliveries() [][]byte {
	deep := strings.Repeat("[", 20000) + strings.Repeat("]", 20000)
	deepData := `[{"id":"1","eventType":"Microsoft.Storage.BlobCreated","subject":"s","eventTime":"2026-12-05T10:00:00Z","data":` +
		strings.Repeat(`{"a":`, 20000) + "1" + strings.Repeat("}", 20000) + `}]`
	many := func(n int) string {
		ev := make([]string, n)
		for i := range ev {
			ev[i] = `{"id":"` + strings.Repeat("x", 8) + `","eventType":"t"}`
		}
		return "[" + strings.Join(ev, ",") + "]"
	}
	long := `[{"id":"` + strings.Repeat("é", 256<<10) + `","eventType":"Microsoft.Storage.BlobCreated"}]`
	job := func(typ, subject, run, status string) string {
		return `[{"id":"j","topic":"` + amlTopicFuzz + `","subject":"` + subject + `","eventType":"` + typ +
			`","eventTime":"2026-12-05T10:00:00Z","data":{"runId":"` + run + `","runStatus":"` + status + `"}}]`
	}
	return [][]byte{
		[]byte(deep), []byte(deepData), []byte(many(5000)), []byte(many(5001)), []byte(long),
		[]byte(job(orchestrator.TypeRunStatusChanged, "experiments/e/runs/r1", "r1", "Completed")),
		[]byte(job(orchestrator.TypeRunCompleted, "experiments/e/runs/r1", "r2", "")),
		[]byte(job(orchestrator.TypeRunStatusChanged, "experiments/e/runs/a/b", "a\\u0000b", "Failed")),
		[]byte(job(orchestrator.TypeRunStatusChanged, "", strings.Repeat("r", 300), "Running")),
	}
}

// checkEvents holds for every decoded delivery: an event without a problem
// has an id and a type, and nothing panics on the way to a key.
func checkEvents(t *testing.T, events []Event) {
	for _, ev := range events {
		if ev.Problem == "" && (ev.ID == "" || ev.Type == "") {
			t.Fatalf("event without problem lacks id or type: %+v", ev)
		}
		if ev.Type == orchestrator.TypeRunStatusChanged || ev.Type == orchestrator.TypeRunCompleted {
			// A job event that decodes names a job batchd could have
			// submitted, in the workspace it came from.
			if je, err := ev.JobEvent(); err == nil {
				if je.Job == "" || len(je.Job) > maxJobName || je.Status == "" || je.Workspace != ev.Topic ||
					strings.ContainsFunc(je.Job, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
					t.Fatalf("job event decoded to %+v", je)
				}
			}
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

// Each hostile delivery through the webhook: answered (never a crash or a
// hang), and one that is refused records nothing. Nesting beyond the JSON
// decoder's depth limit is a 400; more events than Event Grid sends is a
// 413; a delivery the webhook takes is recorded event by event.
func TestWebhookHostileDeliveries(t *testing.T) {
	t.Parallel()
	sink := &jobSink{}
	e := newHookEnv(t, func(o *WebhookOptions) { o.Jobs = sink })
	want := []int{400, 400, 200, 413, 200, 200, 200, 200, 200}
	for i, body := range hostileDeliveries() {
		before := len(e.intake.Snapshot().Records)
		code, answer := e.post(body, nil)
		if code != want[i] {
			t.Errorf("delivery %d (%d bytes): status %d, want %d: %.200s", i, len(body), code, want[i], answer)
		}
		if code >= 400 {
			if after := len(e.intake.Snapshot().Records); after != before {
				t.Errorf("delivery %d was refused (%d) but recorded %d events", i, code, after-before)
			}
		}
	}
}
