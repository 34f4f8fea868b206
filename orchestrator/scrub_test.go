package orchestrator

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// Events are scrubbed before they are stored: a SAS signature in a message
// body or a manual run's field never reaches the ledger, and the caller's
// event is left as it was.
func TestScrub(t *testing.T) {
	t.Parallel()
	const sas = "https://a.blob.core.windows.net/c/x.csv?sv=2025-01-05&sig=c2VjcmV0%3D"
	msg := &MessageEvent{Subject: "in", Data: json.RawMessage(`{"uri":"` + sas + `","n":1}`)}
	fields := map[string]string{"uri": sas, "name": "plain"}
	ev := Event{Pipeline: "p", Key: "k", Message: msg, Fields: fields}
	scrub(&ev)

	if got, want := string(ev.Message.Data), `{"uri":"https://a.blob.core.windows.net/c/x.csv?sv=2025-01-05&sig=[redacted]","n":1}`; got != want {
		t.Errorf("message data = %s, want %s", got, want)
	}
	if !json.Valid(ev.Message.Data) {
		t.Errorf("scrubbed message data is not JSON: %s", ev.Message.Data)
	}
	if diff := cmp.Diff(map[string]string{"uri": "https://a.blob.core.windows.net/c/x.csv?sv=2025-01-05&sig=[redacted]", "name": "plain"}, ev.Fields); diff != "" {
		t.Errorf("fields (-want +got):\n%s", diff)
	}
	if !strings.Contains(string(msg.Data), "c2VjcmV0") || fields["uri"] != sas {
		t.Errorf("the caller's message or fields were modified")
	}

	// Headers: a secret-named header is replaced whole, a SAS in another
	// one is redacted, the rest stays.
	hdr := map[string]string{"Authorization": "Bearer eyJhbGciOi.x.y", "X-Source": sas, "Nats-Msg-Id": "m-1"}
	hev := Event{Pipeline: "p", Key: "k", Message: &MessageEvent{Subject: "in", Headers: hdr}}
	scrub(&hev)
	if diff := cmp.Diff(map[string]string{"Authorization": "[redacted]", "X-Source": "https://a.blob.core.windows.net/c/x.csv?sv=2025-01-05&sig=[redacted]",
		"Nats-Msg-Id": "m-1"}, hev.Message.Headers); diff != "" {
		t.Errorf("headers (-want +got):\n%s", diff)
	}
	if hdr["Authorization"] != "Bearer eyJhbGciOi.x.y" {
		t.Errorf("the caller's headers were modified")
	}

	clean := Event{Pipeline: "p", Key: "k", Message: &MessageEvent{Data: json.RawMessage(`{"uri":"azureml://datastores/d/paths/a"}`)}}
	before := clean.Message
	scrub(&clean)
	if clean.Message != before {
		t.Errorf("an event without secrets was copied")
	}
}
